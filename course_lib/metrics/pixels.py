"""Numbers computed from pixels alone: graininess (chapter 2), saturation (chapter 3), PSNR (chapter 4).

`high_frequency_energy` answers the chapter-2 question "is this sample grainy?": leftover sampling noise is
white, so it puts power at the highest spatial frequencies, where clean renders (flat colours, smooth edges)
have little. Comparing a batch's high-frequency power with that of real renders gives a ratio that is ~1 for
clean samples, >1 for grainy ones and <1 for blurry ones. `saturation` measures what too-high guidance scales
do to colours; `psnr` how well an autoencoder rebuilds an image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLIP_LEVEL = 0.98  # |pixel| at or beyond this counts as clipped to an end of [-1, 1]


def _check_batch(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a batch of images (B, C, H, W), got {shape}")


def high_frequency_energy(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Mean power per pixel at spatial frequencies above `cutoff` cycles/pixel (Nyquist is 0.5); shape (B,)."""
    _check_batch(images, "images")
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    x = images.detach().float().cpu().clamp(-1, 1)
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # the mean colour is not "detail"
    power = torch.fft.fft2(x).abs().pow(2) / (x.shape[-2] * x.shape[-1])  # (B, C, H, W), Parseval-normalised
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]  # (H, 1) cycles per pixel
    fx = torch.fft.fftfreq(x.shape[-1])[None, :]  # (1, W)
    high = (fy.pow(2) + fx.pow(2)).sqrt() > cutoff  # (H, W) mask of the high band
    return (power * high).sum(dim=(-3, -2, -1)) / (x.shape[-3] * x.shape[-2] * x.shape[-1])


def graininess(samples: torch.Tensor, reference: torch.Tensor, cutoff: float = 0.25) -> float:
    """High-frequency energy of `samples` relative to `reference` renders: ~1 clean, >1 grainy, <1 blurry.

    Medians, not means: one badly failed sample can hold more high-frequency power than ten good ones, and
    the question is what a typical sample looks like.
    """
    _check_batch(reference, "reference")
    return float(high_frequency_energy(samples, cutoff).median() / high_frequency_energy(reference, cutoff).median())


def _check_rgb_batch(images, name: str = "images") -> None:
    _check_batch(images, name)
    if images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of RGB images (B>=1, 3, H, W), got {tuple(images.shape)}")


def saturation(images: torch.Tensor) -> dict[str, float]:
    """How washed-out or oversaturated images are (high guidance scales push colours to the ends of [-1, 1]).

    clipped_fraction: share of pixel values with |x| >= CLIP_LEVEL (0.98). mean_chroma: mean over pixels of
    max(R, G, B) - min(R, G, B) in [0, 1] units (0 = gray, 1 = a pure primary/secondary colour).
    """
    _check_rgb_batch(images)
    x = images.detach().float().cpu()
    clipped = (x.abs() >= CLIP_LEVEL).float().mean()
    rgb = (x.clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1]
    chroma = rgb.amax(dim=1) - rgb.amin(dim=1)  # (B, H, W)
    return {"clipped_fraction": float(clipped), "mean_chroma": float(chroma.mean())}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1]: 10 log10(2^2 / MSE), MSE over all elements."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs two tensors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = F.mse_loss(a.float(), b.float()).item()
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)  # peak-to-peak of [-1, 1] is 2
