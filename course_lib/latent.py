"""Latent diffusion's two ends (Rombach et al. 2022): images <-> the scaled latents a denoiser works on.

    z = scaling_factor * E(x),   x_hat = D(z / scaling_factor)

Diffusion then runs on z (8x8x4 for a 64x64x3 image) with the same schedules, U-Net and samplers as on pixels;
only the two ends change. The VAE itself is `course_lib.models.VAE` (loaded with `pretrained.load_vae`), its
objective `losses.VAELoss`, its recipe `shapes64-vae` (`python -m course_lib.train shapes64-vae`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import course_lib
from course_lib import pretrained
from course_lib.models import VAE


def _batches(images: torch.Tensor, batch_size: int, device):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size].to(device)


def _scaling_factor(vae: VAE) -> float:
    if not isinstance(vae, VAE):
        raise ValueError(f"expected a course_lib VAE, got {type(vae).__name__}; load one with pretrained.load_vae()")
    if vae.config.scaling_factor is None:
        raise ValueError("this VAE has no scaling_factor yet; set it with measure_scaling_factor(vae, images)")
    return vae.config.scaling_factor


@torch.no_grad()
def encode_latents(vae: VAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled latents z = scaling_factor * mean of q(z | x), on the CPU: what the latent denoiser trains on.

    SD samples z ~ q(z | x) here; we take the mean (with kl_weight = 1e-6 the posterior's std is tiny anyway,
    and the mean makes the training data deterministic).
    """
    scale = _scaling_factor(vae)
    device = course_lib.device_of(vae)
    parts = [vae.encode(x).mode().float().cpu() for x in _batches(images, batch_size, device)]
    return torch.cat(parts) * scale  # (N, 4, H/8, W/8)


@torch.no_grad()
def decode_latents(vae: VAE, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, 8h, 8w) on the CPU from scaled latents (N, 4, h, w): D(z / scaling_factor)."""
    scale = _scaling_factor(vae)
    device = course_lib.device_of(vae)
    return torch.cat([vae.decode(z.float() / scale).float().cpu() for z in _batches(latents, batch_size, device)])


@torch.no_grad()
def reconstruct(vae: VAE, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """decode(encode(x).mode()) in eval mode, on the CPU: the deterministic round trip, for looking at."""
    device = course_lib.device_of(vae)
    return torch.cat([vae.decode(vae.encode(x).mode()).float().cpu() for x in _batches(images, batch_size, device)])


@torch.no_grad()
def measure_scaling_factor(vae: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 64) -> float:
    """1 / std of latent *samples* z ~ q(z | x) over every element; stored in vae.config.scaling_factor.

    This is how LDM's `scale_by_std` found SD's 0.18215: 1 / z.flatten().std() of `posterior.sample()` on a
    batch of training images. Latents times this factor have unit variance, like the noise diffusion adds.
    """
    device = course_lib.device_of(vae)
    generator = torch.Generator(device=device).manual_seed(seed)
    z = torch.cat([vae.encode(x).sample(generator).float().cpu() for x in _batches(images, batch_size, device)])
    vae.config.scaling_factor = 1.0 / z.flatten().std().item()
    return vae.config.scaling_factor


def _bound(function: Callable, vae, device, directory) -> Callable | None:
    """function(vae, ...) with the VAE loaded once; None when `vae` names none (a pixel-space model)."""
    if not isinstance(vae, VAE):
        vae = pretrained.load_vae(vae, device=device, directory=directory)
        if vae is None:
            return None
    return functools.partial(function, vae)


def latent_encoder(vae="shapes64-vae", device=None, directory=None) -> Callable | None:
    """encode(images) -> scaled latents, the other end of `latent_decoder` (img2img starts from it); None for a
    pixel-space model. vae: a VAE, a VAE checkpoint name, or a loaded latent-diffusion Pretrained."""
    return _bound(encode_latents, vae, device, directory)


def latent_decoder(vae="shapes64-vae", device=None, directory=None) -> Callable | None:
    """decode(latents) -> images, for DenoisingPlayer(decode=...) and generate(); the VAE is loaded once.

    vae: a VAE, a VAE checkpoint name, or a loaded latent-diffusion Pretrained (its JSON names its VAE;
    None for a pixel-space model, which needs no decoder).
    """
    return _bound(decode_latents, vae, device, directory)
