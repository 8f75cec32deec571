"""A small, readable U-Net noise predictor eps_theta(x_t, t) (Ho et al. 2020, appendix B; Ronneberger et al. 2015).

Layout follows the DDPM / "improved DDPM" U-Net: a down path of ResBlocks (+ self-attention at low resolutions),
a middle block, and an up path that concatenates the skip activations of the down path. Optional
cross-attention to conditioning tokens (e.g. CLIP token embeddings) is the Stable Diffusion way of adding text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import CrossAttention, Downsample, SelfAttention, TimestepEmbedder, Upsample, broadcast_timesteps, \
    timestep_embedding


@dataclass
class UNetConfig:
    """Shape of a UNet; `asdict(config)` is what checkpoints store."""

    in_channels: int = 3  # image channels of x_t (and of the predicted eps)
    base_channels: int = 64  # channels at full resolution; level i has base_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level; each level after the first halves H, W
    num_res_blocks: int = 2  # ResBlocks per level on the down path (the up path has one more, for the extra skip)
    attn_resolutions: tuple[int, ...] = (8,)  # feature-map sizes (for image_size inputs) that get self-attention
    image_size: int = 32  # training resolution; only used to place attention, other sizes still run
    num_heads: int = 4  # attention heads (self- and cross-attention)
    cond_dim: int | None = None  # when set: cross-attention to cond tokens (B, L, cond_dim) at attn_resolutions
    dropout: float = 0.0  # dropout inside ResBlocks (DDPM used 0.1 on CIFAR-10)
    groups: int = 8  # GroupNorm groups; must divide every level's channel count
    # a guidance-distilled student (LCM): the guidance weight w is an input, embedded like t and added to the time
    # embedding, so one forward pass does what classifier-free guidance does with two
    guidance_embed: bool = False

    def __post_init__(self):
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.channel_mult:
            raise ValueError("channel_mult needs at least one level, e.g. (1, 2, 2)")
        for mult in self.channel_mult:
            ch = self.base_channels * mult
            if ch % self.groups or ch % self.num_heads:
                raise ValueError(f"channels {ch} (base_channels * {mult}) must be divisible by groups={self.groups} "
                                 f"and num_heads={self.num_heads}")


#################################################################################
#                    Residual blocks (attention: models/layers.py)              #
#################################################################################

class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the time embedding, GroupNorm -> SiLU -> dropout -> conv, plus the skip."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)  # zero-init: the block starts as the identity
        # a 1x1 conv only where the channel count changes, so the residual sum is well-defined
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # (B, out_ch, 1, 1) broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class ResAttnBlock(nn.Module):
    """One U-Net layer: a ResBlock, then (optionally) self-attention and cross-attention."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, temb_dim, cfg.dropout, cfg.groups)
        self.attn = SelfAttention(out_ch, cfg.num_heads, cfg.groups) if attention else None
        use_cross = attention and cfg.cond_dim is not None
        self.cross = CrossAttention(out_ch, cfg.cond_dim, cfg.num_heads, cfg.groups) if use_cross else None

    def forward(self, h, temb, cond=None, cond_mask=None):
        h = self.res(h, temb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None and cond is not None:
            h = self.cross(h, cond, cond_mask)
        return h


#################################################################################
#                                 The U-Net                                     #
#################################################################################

class UNet(nn.Module):
    """The eps-prediction U-Net of DDPM (Ho et al. 2020), optionally text-conditioned by cross-attention."""

    kind = "unet"  # key in course_lib.models.MODELS, stored in checkpoints
    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        temb_dim = 4 * cfg.base_channels
        self.time_embed = TimestepEmbedder(cfg.base_channels, temb_dim)
        # LCM's w-embedding (diffusers' `time_cond_proj_dim`): sinusoidal features of 1000 w, projected; zero-init,
        # so a student initialised from its teacher starts as the teacher, whatever w
        self.guidance_proj = nn.Linear(cfg.base_channels, temb_dim) if cfg.guidance_embed else None
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)

        # Down path: every layer's output is saved as a skip for the up path.
        self.down = nn.ModuleList()
        skip_channels, ch, res = [cfg.base_channels], cfg.base_channels, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                attention = res in cfg.attn_resolutions
                self.down.append(ResAttnBlock(ch, cfg.base_channels * mult, temb_dim, cfg, attention))
                ch = cfg.base_channels * mult
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
                res //= 2

        # Middle: attention always runs at the lowest resolution, where it is cheapest.
        self.mid = nn.ModuleList([ResAttnBlock(ch, ch, temb_dim, cfg, attention=True),
                                  ResAttnBlock(ch, ch, temb_dim, cfg, attention=False)])

        # Up path: mirror image, each ResAttnBlock consumes one skip (concatenated on channels).
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                in_ch, attention = ch + skip_channels.pop(), res in cfg.attn_resolutions
                self.up.append(ResAttnBlock(in_ch, cfg.base_channels * mult, temb_dim, cfg, attention))
                ch = cfg.base_channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self):
        """PyTorch default init, except zeros for every layer that writes into a residual stream and the output.

        Every residual block then starts as the identity and the network starts by predicting eps = 0,
        which keeps early training stable (as in DDPM's `zero_module` / Improved DDPM / DiT's adaLN-Zero).
        """
        zero = [self.conv_out] + ([self.guidance_proj] if self.guidance_proj is not None else [])
        for module in self.modules():
            if isinstance(module, ResBlock):
                zero.append(module.conv2)
            elif isinstance(module, (SelfAttention, CrossAttention)):
                zero.append(module.proj_out)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, x_t, t, cond, cond_mask, w) -> torch.Tensor:
        cfg = self.config
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels or x_t.shape[2] % factor or x_t.shape[3] % factor:
            raise ValueError(f"x_t must have shape (B, {cfg.in_channels}, H, W) with H and W divisible by {factor}, "
                             f"e.g. (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}); got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        t = broadcast_timesteps(t, B, x_t.device)
        if cfg.guidance_embed and w is None:
            raise ValueError("this U-Net is guidance-distilled (config.guidance_embed): pass the guidance weight "
                             "w = guidance_scale - 1, e.g. through course_lib.guidance.GuidedModel")
        if w is not None and not cfg.guidance_embed:
            raise ValueError("this U-Net takes no guidance weight w (config.guidance_embed is False): use "
                             "classifier-free guidance (course_lib.guidance.GuidedModel) instead")
        if cond is None:
            if cond_mask is not None:
                raise ValueError("cond_mask was given without cond")
            return t
        if cfg.cond_dim is None:
            raise ValueError("this UNet has no cross-attention (config.cond_dim is None), so it takes no cond; "
                             "build it with cond_dim set, e.g. unet_small_cond(cond_dim=512)")
        if cond.ndim != 3 or cond.shape[0] != B or cond.shape[2] != cfg.cond_dim:
            raise ValueError(f"cond must have shape ({B}, L, {cfg.cond_dim}); got {tuple(cond.shape)}")
        if cond_mask is not None and (cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool):
            raise ValueError(f"cond_mask must be a bool tensor of shape {tuple(cond.shape[:2])} (True = real token); "
                             f"got {cond_mask.dtype} {tuple(cond_mask.shape)}")
        return t

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, w=None) -> torch.Tensor:
        """Predict the noise eps in x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4).

        w: guidance-distilled models only, the guidance weight (a number or (B,)) the prediction should carry."""
        t = self._check_inputs(x_t, t, cond, cond_mask, w)
        temb = self.time_embed(t)  # (B, 4 * base_channels)
        if self.guidance_proj is not None:
            w = broadcast_timesteps(w, x_t.shape[0], x_t.device)  # (B,)
            temb = temb + self.guidance_proj(timestep_embedding(w * 1000, self.config.base_channels))  # as diffusers
        if cond is not None:
            cond = cond.to(x_t.dtype)

        h = self.conv_in(x_t)  # (B, base_channels, H, W)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb, cond, cond_mask)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb, cond, cond_mask)
        for layer in self.up:
            if isinstance(layer, ResAttnBlock):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = layer(h, temb, cond, cond_mask)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, in_channels, H, W)


#################################################################################
#                                  Presets                                      #
#################################################################################

def unet_tiny(**overrides) -> UNet:
    """~0.3M parameters: trains a little in about a minute on a laptop CPU."""
    return UNet(UNetConfig(**{**dict(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                                     attn_resolutions=(8,), num_heads=4), **overrides}))


def unet_small(**overrides) -> UNet:
    """The shipped `shapes32-unet` (~2.7M parameters): a 4-image 32x32 forward pass takes ~45 ms on 2 CPU cores,
    so 20-step sampling runs interactively in a notebook."""
    return UNet(UNetConfig(**{**dict(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                                     attn_resolutions=(8,), num_heads=4, dropout=0.1), **overrides}))


def unet_small_cond(cond_dim: int = 512, **overrides) -> UNet:
    """`unet_small` plus cross-attention to (B, L, cond_dim) tokens, e.g. CLIP text token embeddings."""
    return unet_small(cond_dim=cond_dim, **overrides)


def unet_latent_cond(cond_dim: int = 64, **overrides) -> UNet:
    """A text-conditional U-Net for 8x8x4 VAE latents (64x64 images): two levels (8x8, 4x4), both attending.

    The latent is 48x smaller than the image, so the network can be wider per position and still cost a
    fraction of a pixel-space U-Net's FLOPs per step (chapter 4 measures both).
    """
    return UNet(UNetConfig(**{**dict(in_channels=4, base_channels=48, channel_mult=(1, 2), num_res_blocks=2,
                                     attn_resolutions=(8, 4), image_size=8, num_heads=4, dropout=0.1,
                                     cond_dim=cond_dim), **overrides}))
