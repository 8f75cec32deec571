"""Layers shared by the course's networks: timestep embeddings, attention over feature maps, resampling.

The U-Net, the 2-D MLP, the VAE (and any new network) import these instead of keeping copies, so a fix or a
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

def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / Transformer positional encodings.

    Equals diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=0)`:
    [sin(t * f_i), cos(t * f_i)] with frequencies f_i = max_period^(-i / half), i = 0..half-1.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
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
    """Sinusoidal features followed by a 2-layer MLP (DDPM's `temb` dense layers)."""

    def __init__(self, freq_dim: int, embed_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))  # (B, embed_dim)

#################################################################################
#                    Attention over the pixels of a feature map                  #
#################################################################################

def _split_heads(z: torch.Tensor, heads: int) -> torch.Tensor:
    return z.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, N, C) -> (B, heads, N, C // heads)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W pixels of a feature map (residual, pre-GroupNorm)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)  # zero-init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        q, k, v = (_split_heads(z, self.num_heads) for z in self.qkv(tokens).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C // heads)
        out = self.proj_out(out.transpose(1, 2).flatten(2))  # (B, H*W, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class CrossAttention(nn.Module):
    """Pixels (queries) attend to conditioning tokens (keys/values), as in Stable Diffusion's U-Net.

    `cond_mask` (B, L) is True for real tokens; padding tokens are ignored. A sample whose mask is all False
    (or `cond=None`) gets no contribution at all, the same as an unconditional model.
    """

    def __init__(self, channels: int, cond_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(cond_dim, 2 * channels)
        self.proj_out = nn.Linear(channels, channels)  # zero-init

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None) -> torch.Tensor:
        B, C, H, W = x.shape
        q = _split_heads(self.to_q(self.norm(x).flatten(2).transpose(1, 2)), self.num_heads)  # (B, heads, HW, d)
        k, v = (_split_heads(z, self.num_heads) for z in self.to_kv(cond).chunk(2, dim=-1))  # (B, heads, L, d)
        attn_mask = None
        if cond_mask is not None:
            # A row with no valid token would softmax over nothing (NaN); let it attend everywhere here
            # and zero its output below, which keeps forward and backward finite.
            has_tokens = cond_mask.any(dim=1)  # (B,)
            attn_mask = (cond_mask | ~has_tokens[:, None])[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, HW, d)
        out = self.proj_out(out.transpose(1, 2).flatten(2))  # (B, HW, C)
        if cond_mask is not None:
            out = out * has_tokens[:, None, None].to(out.dtype)  # no tokens: add nothing (not even proj's bias)
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
