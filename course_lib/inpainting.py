"""Inpainting with any sampler: keep a known region, let the model fill in the rest (the replacement idea of
RePaint, Lugmayr et al. 2022, without its resampling jumps).

`KnownRegion` wraps an eps_model(x_t, t) (a GuidedModel too). Wherever the image is known, it returns the noise
that turns the known pixels into the current x_t,

    eps_known = (x_t - sqrt(alpha_bar_t) x0_known) / sqrt(1 - alpha_bar_t),

so the sampler's clean-image estimate there IS the known image at every step, and x_t keeps being the known image
noised to level t; the model sees that at every call and fills in the unknown region to match. It is a wrapper,
not a sampler: DDIM, DDPM, DPM-Solver, Euler and Heun all inpaint with it unchanged.
"""
from __future__ import annotations

import torch

from course_lib.schedules import NoiseSchedule


class KnownRegion:
    """eps_model(x_t, t) that pins `mask` (True = known; (B or 1, 1 or C, H, W)) to `known` (B or 1, C, H, W)."""

    def __init__(self, eps_model, schedule: NoiseSchedule, known: torch.Tensor, mask: torch.Tensor):
        if known.dim() != 4 or mask.dim() != 4 or mask.dtype != torch.bool:
            raise ValueError(f"known must be images (B, C, H, W) and mask a bool tensor (B, 1, H, W) (True = known), "
                             f"got {tuple(known.shape)} and {tuple(mask.shape)} {mask.dtype}")
        if known.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"mask {tuple(mask.shape)} and known {tuple(known.shape)} must cover the same H x W")
        self.eps_model, self.schedule, self.known, self.mask = eps_model, schedule, known, mask

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x_t, t)
        if self.known.shape[1:] != x_t.shape[1:]:
            raise ValueError(f"known {tuple(self.known.shape)} must have x_t's shape per image {tuple(x_t.shape[1:])}")
        sigma = self.schedule.sigma_at(t.float().cpu()).to(x_t.device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        alpha_bar = 1 / (1 + sigma**2)  # sigma^2 = (1 - alpha_bar) / alpha_bar
        known = self.known.to(x_t.device, x_t.dtype)
        eps_known = (x_t - alpha_bar.sqrt() * known) / (1 - alpha_bar).sqrt()
        return torch.where(self.mask.to(x_t.device), eps_known.to(eps.dtype), eps)
