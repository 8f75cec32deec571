"""Quality numbers for generated images, measured instead of eyeballed.

`high_frequency_energy` answers the chapter-2 question "is this sample grainy?": leftover sampling noise is
white, so it puts power at the highest spatial frequencies, where clean renders (flat colours, smooth edges)
have little. Comparing a batch's high-frequency power with that of real renders gives a ratio that is ~1 for
clean samples, >1 for grainy ones and <1 for blurry ones.
"""
from __future__ import annotations

import torch


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
    """High-frequency energy of `samples` relative to `reference` renders: ~1 clean, >1 grainy, <1 blurry."""
    _check_batch(reference, "reference")
    return float(high_frequency_energy(samples, cutoff).mean() / high_frequency_energy(reference, cutoff).mean())
