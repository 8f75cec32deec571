"""Images as token sequences, for the autoregressive models: pixels through a palette, or a VQ tokenizer's codes.

`ImageTokenizer` turns images (B, 3, H, W) in [-1, 1] into (B, N) integer tokens in raster order and back;
`tokenizer_of(p)` gives the one an autoregressive checkpoint was trained with (its config's palette, or the VQ
checkpoint its JSON names as "tokenizer"), the way latent.latent_decoder gives a latent model's VAE.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import course_lib
from course_lib import pretrained
from course_lib.models import VQModel
from course_lib.models.ar import pixels_to_tokens


@dataclass
class FillFrame:
    """What an autoregressive run looks like part-way: what is written so far (a record of `generate`)."""

    step: int  # model calls made (positions written) so far
    calls: int  # model calls the whole image takes: one per token
    images: torch.Tensor  # (B, 3, H, W) the written tokens decoded; the rest mid-grey


@dataclass
class ImageTokenizer:
    """images <-> tokens for one model: `grid` tokens per side, each covering `cell` x `cell` pixels."""

    encode: Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) -> tokens (B, grid * grid), on the CPU
    decode: Callable[[torch.Tensor], torch.Tensor]  # tokens (B, grid * grid) -> images (B, 3, H, W), on the CPU
    grid: int  # tokens per row (and rows)
    cell: int  # pixels per token side: 1 for pixel tokens, the tokenizer's f for codes
    kind: str  # "pixels" or "codes"
    vocab_size: int  # token values: palette colours, or the codebook's codes

    def canvas(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N) with -1 where nothing is written yet -> images (B, 3, H, W): the written tokens decoded,
        the rest mid-grey (0)."""
        written = tokens >= 0  # (B, N)
        images = self.decode(tokens.clamp(min=0).cpu())
        mask = written.cpu().float().unflatten(1, (self.grid, self.grid))[:, None]  # (B, 1, grid, grid)
        mask = mask.repeat_interleave(self.cell, dim=2).repeat_interleave(self.cell, dim=3)  # (B, 1, H, W)
        return images * mask

    @classmethod
    def from_palette(cls, palette, size: int) -> "ImageTokenizer":
        colours = torch.tensor(palette, dtype=torch.float32) / 127.5 - 1  # (V, 3) in [-1, 1]

        def decode(tokens: torch.Tensor) -> torch.Tensor:
            return colours[tokens.cpu()].unflatten(1, (size, size)).permute(0, 3, 1, 2)  # (B, N, 3) -> (B, 3, H, W)

        return cls(lambda images: pixels_to_tokens(images.cpu(), palette), decode, size, 1, "pixels", len(palette))

    @classmethod
    def from_vq(cls, vq: VQModel) -> "ImageTokenizer":
        device, grid = course_lib.device_of(vq), vq.config.grid

        @torch.no_grad()
        def encode(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([vq.encode(chunk.to(device)).flatten(1).cpu() for chunk in images.split(256)])

        @torch.no_grad()
        def decode(tokens: torch.Tensor) -> torch.Tensor:
            return vq.decode(tokens.to(device).unflatten(1, (grid, grid))).float().cpu()  # (B, h*w) -> (B, h, w)

        return cls(encode, decode, grid, vq.config.image_size // grid, "codes", vq.config.codebook_size)


def tokenizer_of(p: pretrained.Pretrained, device=None, directory=None) -> ImageTokenizer:
    """The tokenizer an autoregressive checkpoint reads and writes: its palette, or the VQ model its JSON names."""
    config = p.meta.get("config") or {}
    if config.get("palette") is not None:
        return ImageTokenizer.from_palette(config["palette"], int(config["height"]))
    vq = pretrained.load_model(p, VQModel, device, directory, key="tokenizer")
    if vq is None:
        raise pretrained.CheckpointError(f"checkpoint {p.meta.get('name')!r} has neither a palette in its config nor "
                                         f"a 'tokenizer' in its JSON: retrain it with python -m course_lib.train "
                                         f"{p.meta.get('name')}")
    return ImageTokenizer.from_vq(vq)
