"""A small KL autoencoder, the "first stage" of latent diffusion (Rombach et al. 2022, sec. 3 and appendix G).

A scaled-down cousin of Stable Diffusion's `AutoencoderKL` (diffusers), written from scratch with the same
layout and names: encoder -> `quant_conv` -> a diagonal Gaussian posterior q(z | x) over a latent image 8x
smaller in H and W with 4 channels -> `post_quant_conv` -> decoder. Diffusion then runs on z, which is 48x
smaller than the image (3 * 8 * 8 / 4). As in diffusers, `encode` / `decode` work on *unscaled* latents; a
latent diffusion model trains on z * `config.scaling_factor` and decodes `vae.decode(z / scaling_factor)`
(`course_lib.latent` holds both ends and measures the factor; `course_lib.losses.VAELoss` is the objective).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Downsample, SelfAttention, Upsample


@dataclass
class VAEConfig:
    """Shape of a VAE; `asdict(config)` is what checkpoints store. diffusers' AutoencoderKL names in brackets."""

    in_channels: int = 3  # image channels (in_channels = out_channels)
    latent_channels: int = 4  # channels of z [latent_channels]; SD uses 4
    base_channels: int = 16  # channels at full resolution; level i has base_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # one per level [block_out_channels / base]; 4 levels = 3 halvings
    num_res_blocks: int = 1  # ResnetBlocks per encoder level; the decoder has one more [layers_per_block]
    image_size: int = 64  # training resolution [sample_size]; any multiple of the down factor runs
    groups: int = 8  # GroupNorm groups; must divide every level's channel count [norm_num_groups]
    mid_block_add_attention: bool = True  # self-attention in the middle blocks, at the lowest resolution
    scaling_factor: float | None = None  # 1 / std of the latents (SD: 0.18215); set by measure_scaling_factor

    def __post_init__(self):
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if not self.channel_mult:
            raise ValueError("channel_mult needs at least one level, e.g. (1, 2, 4, 4) for a down factor of 8")
        for mult in self.channel_mult:
            if (self.base_channels * mult) % self.groups:
                raise ValueError(f"channels {self.base_channels * mult} (base_channels * {mult}) must be divisible "
                                 f"by groups={self.groups}; change base_channels or groups")
        if self.scaling_factor is not None:
            self.scaling_factor = float(self.scaling_factor)
            if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
                raise ValueError(f"scaling_factor must be a positive number or None (got {self.scaling_factor}); "
                                 f"measure it with measure_scaling_factor(vae, images)")

    @property
    def downsample_factor(self) -> int:
        """How much smaller z is than x in H and W (diffusers pipelines call it `vae_scale_factor`)."""
        return 2 ** (len(self.channel_mult) - 1)


#################################################################################
#                      The posterior q(z | x)                                   #
#################################################################################

class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), built like diffusers' `DiagonalGaussianDistribution(parameters)`.

    parameters: (B, 2 * C, h, w), the encoder's "moments": mean and logvar stacked on the channel axis.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, self.logvar = parameters.chunk(2, dim=1)  # (B, C, h, w) each
        # Clamped as in diffusers / LDM: exp(-30) ~ 1e-13, exp(20) ~ 5e8; keeps exp() and KL finite early on.
        self.logvar = self.logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, sec. 2.4)."""
        gen_device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gen_device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        """The most likely z, i.e. the mean (what you encode with when no noise is wanted)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over the latent dims, per sample: (B,)."""
        mean, logvar = self.mean.float(), self.logvar.float()  # float32: bf16 sums of many terms are too coarse
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=[1, 2, 3])


#################################################################################
#                              Blocks                                           #
#################################################################################

class ResnetBlock(nn.Module):
    """unet.ResBlock without a time embedding (diffusers' ResnetBlock2D with temb_channels=None)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)  # zero-init: the block starts as the identity
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _mid_block(ch: int, cfg: VAEConfig) -> nn.Sequential:
    """ResnetBlock, single-head self-attention (as in SD's VAE), ResnetBlock, at the lowest resolution."""
    attn = SelfAttention(ch, num_heads=1, groups=cfg.groups) if cfg.mid_block_add_attention else nn.Identity()
    return nn.Sequential(ResnetBlock(ch, ch, cfg.groups), attn, ResnetBlock(ch, ch, cfg.groups))


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> moments (B, 2 * latent_channels, H/f, W/f), f = 2^(levels - 1)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        layers, ch = [], cfg.base_channels
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, cfg.base_channels * mult, cfg.groups))
                ch = cfg.base_channels * mult
            if level < len(cfg.channel_mult) - 1:
                layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        self.mid = _mid_block(ch, cfg)
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))  # (B, C_top, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent_channels, H/f, W/f)


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> x (B, in_channels, h*f, w*f); the encoder's mirror image, no skips."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.mid = _mid_block(ch, cfg)
        layers = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(ch, cfg.base_channels * mult, cfg.groups))
                ch = cfg.base_channels * mult
            if level > 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))  # (B, base_channels * channel_mult[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, in_channels, H, W); no tanh, as in SD


#################################################################################
#                                 The VAE                                       #
#################################################################################

class VAE(nn.Module):
    """KL-regularised autoencoder (Rombach et al. 2022): encode(x) -> DiagonalGaussian, decode(z) -> x."""

    kind = "vae"  # key in course_lib.models.MODELS, stored in checkpoints
    config_class = VAEConfig

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else VAEConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # 1x1 convs around the latent, kept from VQGAN / SD so the state dict reads like diffusers' AutoencoderKL.
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.initialize_weights()

    def initialize_weights(self):
        """PyTorch default init, except zeros for the last layer of every residual branch (identity at init).

        Unlike the U-Net the output layers keep their random init: a decoder that outputs 0 for every z
        would pass no gradient back to the encoder through conv_out's input.
        """
        zero = [m.conv2 for m in self.modules() if isinstance(m, ResnetBlock)]
        zero += [m.proj_out for m in self.modules() if isinstance(m, SelfAttention)]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check(self, x: torch.Tensor, channels: int, what: str, fix: str, factor: int) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must have shape (B, {channels}, H, W); got {shape}; {fix}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"{what} height and width must be multiples of {factor} (the VAE halves them "
                             f"{len(self.config.channel_mult) - 1} times); got {tuple(x.shape)}; {fix}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """The posterior q(z | x) of images x (B, in_channels, H, W) in [-1, 1]; H, W multiples of 8."""
        cfg = self.config
        f = cfg.downsample_factor
        self._check(x, cfg.in_channels, "images", f"pass images (B, {cfg.in_channels}, H, W), e.g. "
                    f"(B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), resized or cropped to a "
                    f"multiple of {f} (use x[None] for one image)", f)
        moments = self.quant_conv(self.encoder(x))  # (B, 2 * latent_channels, H/f, W/f)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, in_channels, h*f, w*f) from *unscaled* latents z (B, latent_channels, h, w)."""
        cfg = self.config
        self._check(z, cfg.latent_channels, "latents z", f"pass unscaled latents (B, {cfg.latent_channels}, h, w) "
                    f"such as vae.encode(x).sample() or diffusion latents / config.scaling_factor", 1)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction, posterior): decode a sample z ~ q(z | x), as during training."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


#################################################################################
#                                  Presets                                      #
#################################################################################

def vae_f8(**overrides) -> VAE:
    """SD's shape (down factor 8, 4 latent channels) at 1/8 of its width: 64x64x3 images <-> 8x8x4 latents.

    ~1.0M parameters (SD's VAE: 84M). One training step at batch 32, 64x64, takes ~1-2 s on one CPU thread
    (base_channels=32 would be ~4x slower: the full-resolution convolutions dominate).
    """
    return VAE(VAEConfig(**{**dict(base_channels=16, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                                   image_size=64, groups=8), **overrides}))
