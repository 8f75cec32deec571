"""A VQ tokenizer: images -> a small grid of integer codes -> images (VQ-VAE, van den Oord et al. 2017).

The encoder shrinks a 32 x 32 image by f = 4 to an 8 x 8 grid of vectors; each vector is replaced by the nearest
of `codebook_size` learned codes, so the image becomes 64 integers: tokens an autoregressive transformer can
write one after another, as DALL-E 1 and Chameleon write images. The decoder turns the codes back into pixels.
Vectors and codes are compared on the unit sphere (l2-normalised, as ViT-VQGAN does), and in training a code
that has stopped being chosen is moved onto a random encoder output of the batch (a "dead-code restart", as
Jukebox does): without it a few codes win early and the rest are never used (our first run used 46 of 256,
and lost the colours). The gradient skips the rounding (straight-through). The loss is course_lib.losses.VQLoss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQConfig:
    """Shape of a VQ tokenizer; `asdict(config)` is what checkpoints store."""

    image_size: int = 32  # H = W of the images
    channels: int = 64  # width of the first and last convolutions
    downsample: int = 2  # halvings: f = 2 ** downsample (2 -> 32 x 32 becomes 8 x 8)
    code_dim: int = 16  # width of a code vector
    codebook_size: int = 256  # number of codes (the token transformer's vocabulary)
    restart_below: float = 0.1  # training: a code chosen less than this often per batch (running mean) restarts

    def __post_init__(self):
        if self.image_size % (2 ** self.downsample):
            raise ValueError(f"image_size {self.image_size} must be a multiple of f = {2 ** self.downsample}")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** self.downsample


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class VQModel(nn.Module):
    """images (B, 3, H, W) <-> codes (B, H/f, W/f) in [0, codebook_size)."""

    kind = "vq"
    config_class = VQConfig

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = cfg = config
        c = cfg.channels
        down = [nn.Conv2d(3, c, 3, padding=1), _Res(c)]
        for _ in range(cfg.downsample):
            down += [nn.Conv2d(c, c, 4, stride=2, padding=1), _Res(c)]
        self.encoder = nn.Sequential(*down, nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, cfg.code_dim, 1))
        up = [nn.Conv2d(cfg.code_dim, c, 3, padding=1), _Res(c)]
        for _ in range(cfg.downsample):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1), _Res(c)]
        self.decoder = nn.Sequential(*up, nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.normal_(self.codebook.weight)
        self.register_buffer("usage", torch.zeros(cfg.codebook_size), persistent=False)  # choices per batch, EMA

    def _vectors(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(images), dim=1)  # (B, code_dim, h, w) on the unit sphere

    def _codes(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=1)  # (K, code_dim)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, D, h, w) -> the index of each one's nearest code (B, h, w)."""
        flat = z.permute(0, 2, 3, 1).flatten(0, 2)  # (B, D, h, w) -> (B * h * w, D)
        return (flat @ self._codes().T).argmax(dim=1).view(z.shape[0], *z.shape[2:])  # largest cosine

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> their vectors (B, D, h, w)."""
        return self._codes()[codes].permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes (B, H/f, W/f)."""
        return self.quantize(self._vectors(images))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> images (B, 3, H, W), about in [-1, 1]."""
        return self.decoder(self.lookup(codes))

    def forward(self, images: torch.Tensor):
        """(reconstruction, encoder vectors z, their codes z_q) for the loss; the decoder reads z_q with z's
        gradient (straight-through)."""
        z = self._vectors(images)
        codes = self.quantize(z)
        if self.training and torch.is_grad_enabled():
            self._restart_dead_codes(z, codes)
        z_q = self.lookup(codes)
        return self.decoder(z + (z_q - z).detach()), z, z_q

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """Move codes that are (nearly) never chosen onto random encoder outputs of this batch; at the first step
        every code is unused, so this is also the codebook's initialisation from the data."""
        counts = torch.bincount(codes.flatten(), minlength=self.config.codebook_size).float()
        self.usage.mul_(0.99).add_(0.01 * counts)
        dead = self.usage < self.config.restart_below
        if dead.any():
            flat = z.permute(0, 2, 3, 1).flatten(0, 2)  # (B * h * w, D)
            pick = torch.randint(0, len(flat), (int(dead.sum()),), device=flat.device)
            self.codebook.weight[dead] = flat[pick].to(self.codebook.weight.dtype)
            self.usage[dead] = 1.0  # a grace period before it can be restarted again


def vq_f4(**overrides) -> VQModel:
    """A VQ tokenizer of 32 x 32 images into 8 x 8 codes (256 of them unless codebook_size says; shapes-vq: 1024)."""
    return VQModel(VQConfig(**overrides))
