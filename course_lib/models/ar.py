"""An autoregressive image transformer: p(image) = prod_i p(token_i | tokens before i, caption), one token at a time.

A decoder-only, causal transformer (GPT-2's blocks, as Image GPT uses them; Chen et al. 2020) over an image read
in raster order, left to right, top to bottom. The tokens are either
  pixels: every pixel's colour is an index into a small palette (the shapes renders use a couple of hundred
          distinct colours, so a palette built from the data is lossless), H * W tokens: 1024 for 32 x 32;
  codes:  the codes of a VQ tokenizer (`models.vq`, DALL-E 1's recipe at toy size), 8 x 8 = 64 tokens for 32 x 32.
The caption enters through a cross-attention to its CLIP token embeddings in every block (as the diffusion
U-Net listens to them); row and column embeddings tell each position where in the grid its token goes.

Training reads every position at once (teacher forcing, a causal mask); sampling runs one position per call,
keeping each layer's keys and values (the KV cache) so every call costs one token's work: see
course_lib.autoregressive.sample_tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import TokenCrossAttention, _merge_heads, _split_heads


@dataclass
class ARConfig:
    """Shape of an autoregressive image transformer; `asdict(config)` is what checkpoints store."""

    vocab_size: int = 256  # token values: palette colours, or the tokenizer's codebook size
    height: int = 32  # the token grid: H rows of W tokens, read in raster order
    width: int = 32
    d_model: int = 128  # width of every token
    depth: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads; must divide d_model
    mlp_ratio: float = 4.0  # the MLP's hidden width is mlp_ratio * d_model
    cond_dim: int | None = 64  # width of the caption's token embeddings (cross-attention); None = unconditional
    dropout: float = 0.0
    palette: tuple | None = None  # pixel tokens: ((r, g, b), ...) in 0..255, one per token value; None = codes

    def __post_init__(self):
        if self.palette is not None:
            self.palette = tuple(tuple(int(c) for c in rgb) for rgb in self.palette)  # JSON lists -> tuples
            if len(self.palette) != self.vocab_size:
                raise ValueError(f"a palette of {len(self.palette)} colours needs vocab_size={len(self.palette)}, "
                                 f"got {self.vocab_size}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if min(self.vocab_size, self.height, self.width, self.depth) < 1:
            raise ValueError("vocab_size, height, width and depth must be >= 1")

    @property
    def seq_len(self) -> int:
        return self.height * self.width


class CausalSelfAttention(nn.Module):
    """Self-attention in which position i sees positions <= i; with a cache, it sees what earlier calls left."""

    def __init__(self, d: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        q, k, v = (_split_heads(z, self.num_heads) for z in self.qkv(x).chunk(3, dim=-1))  # (B, heads, n, d_h)
        if cache is None:  # training: all positions at once, each masked from the ones after it
            return self.proj_out(_merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        if "k" in cache:  # sampling: the new positions attend to every earlier one, kept from earlier calls
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)  # (B, heads, n_seen, d_h)
        cache["k"], cache["v"] = k, v
        # n new positions at the end of n_seen: position j of them sees everything up to itself
        n, seen = q.shape[2], k.shape[2]
        mask = torch.ones(n, seen, dtype=torch.bool, device=x.device).tril(seen - n)  # (n, n_seen)
        return self.proj_out(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class ARBlock(nn.Module):
    """Pre-norm transformer block: causal self-attention, cross-attention to the caption, MLP."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, cfg.num_heads)
        self.cross = None
        if cfg.cond_dim is not None:
            self.norm2, self.cross = nn.LayerNorm(d), TokenCrossAttention(d, cfg.cond_dim, cfg.num_heads)
        hidden = int(d * cfg.mlp_ratio)
        self.norm3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cond=None, cond_mask=None, cache=None):
        x = x + self.dropout(self.attn(self.norm1(x), cache))
        if self.cross is not None:
            x = x + self.dropout(self.cross(self.norm2(x), cond, cond_mask))
        return x + self.dropout(self.mlp(self.norm3(x)))


class ARTransformer(nn.Module):
    """logits = net(tokens, cond, cond_mask): for every position i of the raster, the distribution of token i
    given the tokens before it (the input is shifted right by one: a start token, then tokens 0 .. N-2)."""

    kind = "ar"
    config_class = ARConfig

    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)  # the last row is the start token
        self.row_emb = nn.Embedding(cfg.height, cfg.d_model)
        self.col_emb = nn.Embedding(cfg.width, cfg.d_model)
        self.blocks = nn.ModuleList(ARBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)  # GPT-2's initialisation
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def start_token(self) -> int:
        return self.config.vocab_size

    def embed(self, inputs: torch.Tensor, first: int) -> torch.Tensor:
        """Embeddings of input positions first, first + 1, ...: the token there plus the row and column of the
        token it predicts (input i holds token i - 1 and predicts token i)."""
        W = self.config.width
        pos = torch.arange(first, first + inputs.shape[1], device=inputs.device)  # (n,) predicted positions
        return self.tok_emb(inputs) + self.row_emb(pos // W) + self.col_emb(pos % W)  # (B, n, d)

    def forward(self, tokens: torch.Tensor, cond=None, cond_mask=None) -> torch.Tensor:
        """tokens (B, N) in [0, vocab_size), N = H * W -> logits (B, N, vocab_size), teacher-forced."""
        cfg = self.config
        if tokens.dim() != 2 or tokens.shape[1] != cfg.seq_len or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (B, {cfg.seq_len}) LongTensor (a {cfg.height}x{cfg.width} grid in "
                             f"raster order), got {tuple(tokens.shape)} {tokens.dtype}")
        if cond is None and cfg.cond_dim is not None:
            raise ValueError("this transformer is caption-conditioned: pass cond (B, L, cond_dim) token embeddings "
                             "(the empty prompt's for unconditional samples)")
        start = torch.full_like(tokens[:, :1], self.start_token)  # (B, 1)
        return self.step(torch.cat([start, tokens[:, :-1]], dim=1), 0, None, cond, cond_mask)  # shifted right by one

    def step(self, inputs: torch.Tensor, first: int, caches: list[dict] | None, cond=None,
             cond_mask=None) -> torch.Tensor:
        """Logits (B, n, V) of positions first .. first + n - 1, given their inputs (B, n) (the start token at
        position 0, else the token before) and `caches` (one dict per block) holding every earlier position;
        caches=None: positions 0 .. n - 1 all at once, each masked from the ones after it (training)."""
        x = self.embed(inputs, first)
        for block, cache in zip(self.blocks, caches or [None] * len(self.blocks)):
            x = block(x, cond, cond_mask, cache)
        return self.head(self.norm_out(x))  # (B, n, V)

    def new_caches(self) -> list[dict]:
        return [{} for _ in self.blocks]


def palette_of(images: torch.Tensor) -> tuple[tuple[int, int, int], ...]:
    """The distinct colours of images (N, 3, H, W) in [-1, 1], each channel rounded to 0..255, most used first."""
    q = ((images.clamp(-1, 1) + 1) * 127.5).round().long()  # (N, 3, H, W) in 0..255
    codes = (q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).flatten()  # one int per pixel
    values, counts = codes.unique(return_counts=True)
    values = values[counts.argsort(descending=True, stable=True)]
    return tuple((int(v) // 65536, int(v) // 256 % 256, int(v) % 256) for v in values)


def pixels_to_tokens(images: torch.Tensor, palette, batch: int = 256) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> (N, H * W) indices of each pixel's nearest palette colour."""
    colours = torch.tensor(palette, dtype=torch.float32) / 127.5 - 1  # (V, 3)
    out = []
    for chunk in images.split(batch):
        pixels = chunk.flatten(2).transpose(1, 2)  # (n, 3, H, W) -> (n, H * W, 3)
        out.append(torch.cdist(pixels.float(), colours[None].expand(len(chunk), -1, -1)).argmin(-1))  # (n, H*W)
    return torch.cat(out)


def pixel_ar(palette_from=None, **overrides) -> ARTransformer:
    """The shapes32-ar transformer: 1024 pixel tokens over the palette of `palette_from` (a DataSpec's images)."""
    if palette_from is not None:
        palette = palette_of(palette_from.load())
        overrides = {"palette": palette, "vocab_size": len(palette), **overrides}
    return ARTransformer(ARConfig(**{"height": 32, "width": 32, "d_model": 64, "depth": 4, "num_heads": 4,
                                     **overrides}))


def token_ar(**overrides) -> ARTransformer:
    """The shapes32-ar-tokens transformer: 8 x 8 codes of a VQ tokenizer (vocab_size = its codebook)."""
    return ARTransformer(ARConfig(**{"height": 8, "width": 8, "d_model": 128, "depth": 4, "num_heads": 4,
                                     "vocab_size": 256, **overrides}))
