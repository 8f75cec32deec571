"""Layers shared by the course's networks: timestep embeddings, attention over tokens and feature maps, resampling.

The U-Net, DiT, the 2-D MLP, the VAE (and any new network) import these instead of keeping copies, so a fix or a
comment here reaches every model. Each is the textbook version, with the source named in its docstring. (The
residual blocks stay with their networks: the U-Net's adds a time embedding, the VAE's has none.)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


#################################################################################
#                     Embedding layers for the timestep t                       #
#################################################################################

def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / Transformer positional encodings.

    Equals diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)`: [sin(t f_i),
    cos(t f_i)] with frequencies f_i = max_period^(-i / (half - downscale_freq_shift)), i = 0..half-1; the U-Net
    uses the defaults, DiT puts cos first (flip_sin_to_cos) and diffusers' DiT also shifts by 1.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))  # (half,): diffusers' order of operations
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # (B, 2 * half): cos first
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


def broadcast_timesteps(t, batch: int, device) -> torch.Tensor:
    """t as a (batch,) tensor on device: an int or a 0-d / 1-element tensor is shared by the whole batch."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(batch)  # (B,)
    if t.shape != (batch,):
        raise ValueError(f"t must be an int, a scalar tensor or a tensor of shape ({batch},); got {tuple(t.shape)}")
    return t


class TimestepEmbedder(nn.Module):
    """Sinusoidal features followed by a 2-layer MLP (DDPM's `temb` dense layers; DiT's TimestepEmbedder).

    flip_sin_to_cos and downscale_freq_shift are passed to `timestep_embedding` (diffusers' names)."""

    def __init__(self, freq_dim: int, embed_dim: int, *, flip_sin_to_cos: bool = False,
                 downscale_freq_shift: float = 0.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.flip_sin_to_cos, self.downscale_freq_shift = flip_sin_to_cos, downscale_freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.freq_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                      downscale_freq_shift=self.downscale_freq_shift)  # (B, freq_dim)
        return self.mlp(features)  # (B, embed_dim)

#################################################################################
#          Attention over tokens (DiT), and over the pixels of a feature map     #
#################################################################################

def _split_heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    return z.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, N, C) -> (B, heads, N, C // heads)


def _merge_heads(z: torch.Tensor) -> torch.Tensor:
    return z.transpose(1, 2).flatten(2)  # (B, heads, N, d) -> (B, N, heads * d)


class TokenSelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C): softmax(Q K^T / sqrt(d)) V, then an output projection."""

    def __init__(self, channels: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=bias)
        self.proj_out = nn.Linear(channels, channels)  # zero-init in the U-Net and the VAE

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(z, self.num_heads) for z in self.qkv(tokens).chunk(3, dim=-1))  # (B, heads, N, d)
        return self.proj_out(_merge_heads(F.scaled_dot_product_attention(q, k, v)))  # (B, N, C)


class TokenCrossAttention(nn.Module):
    """Tokens (queries, B x N x C) attend to conditioning tokens (keys/values, B x L x cond_dim), as in Stable
    Diffusion's U-Net and PixArt-alpha's DiT.

    `cond_mask` (B, L) is True for real tokens; padding tokens are ignored. A sample whose mask is all False
    gets no contribution at all (not even the projection's bias), the same as an unconditional model.
    """

    def __init__(self, channels: int, cond_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(cond_dim, 2 * channels)
        self.proj_out = nn.Linear(channels, channels)  # zero-init: a new cross-attention starts by adding nothing

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None) -> torch.Tensor:
        q = _split_heads(self.to_q(tokens), self.num_heads)  # (B, heads, N, d)
        k, v = (_split_heads(z, self.num_heads) for z in self.to_kv(cond).chunk(2, dim=-1))  # (B, heads, L, d)
        attn_mask = None
        if cond_mask is not None:
            # A row with no valid token would softmax over nothing (NaN); let it attend everywhere here
            # and zero its output below, which keeps forward and backward finite.
            has_tokens = cond_mask.any(dim=1)  # (B,)
            attn_mask = (cond_mask | ~has_tokens[:, None])[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, d)
        out = self.proj_out(_merge_heads(out))  # (B, N, C)
        if cond_mask is not None:
            out = out * has_tokens[:, None, None].to(out.dtype)  # no tokens: add nothing
        return out


class SelfAttention(TokenSelfAttention):
    """Self-attention over the H*W pixels of a feature map (residual, pre-GroupNorm)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__(channels, num_heads)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        out = super().forward(self.norm(x).flatten(2).transpose(1, 2))  # (B, H*W, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class CrossAttention(TokenCrossAttention):
    """Pixels of a feature map attend to conditioning tokens (residual, pre-GroupNorm), as in Stable Diffusion."""

    def __init__(self, channels: int, cond_dim: int, num_heads: int, groups: int):
        super().__init__(channels, cond_dim, num_heads)
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None) -> torch.Tensor:
        B, C, H, W = x.shape
        out = super().forward(self.norm(x).flatten(2).transpose(1, 2), cond, cond_mask)  # (B, H*W, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)

#################################################################################
#                               Resampling                                      #
#################################################################################

class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv (DDPM's `resamp_with_conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h, *unused):
        return self.conv(h)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 conv (avoids checkerboard artifacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h, *unused):
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
