"""Classifier-free guidance (Ho & Salimans 2022): one network, two predictions, extrapolate towards the prompt.

Convention (diffusers'): guidance_scale s = 1 means no guidance (the plain conditional prediction), s = 0 ignores
the prompt (the unconditional prediction), s > 1 pushes past the conditional prediction. Ho & Salimans write the
same thing with w = s - 1: eps = (1 + w) eps_cond - w eps_uncond.
"""
from __future__ import annotations

import torch


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The guided noise prediction (Ho & Salimans 2022, eq. 6 with w = guidance_scale - 1)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


class GuidedModel:
    """An eps_model(x_t, t) for any sampler: runs a conditional network with and without the prompt, then `cfg`.

    cond / uncond: token embeddings (B or 1, L, D) with boolean masks (B or 1, L) (True = real token).
    Both predictions come from one batched forward pass of 2B images, which is cheaper than two passes.
    A guidance-distilled model (an LCM student, `model.config.guidance_embed`) learned the guided prediction
    itself: it gets one pass with w = guidance_scale - 1 as an input, and the unconditional prompt is not used.
    """

    def __init__(self, model, cond, cond_mask, uncond, uncond_mask, guidance_scale: float):
        if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0 (1 = no guidance, 7 = strong), got {guidance_scale!r}")
        self.model, self.guidance_scale = model, float(guidance_scale)
        self.cond, self.cond_mask, self.uncond, self.uncond_mask = cond, cond_mask, uncond, uncond_mask

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        cond, cond_mask = _expand(self.cond, B), _expand(self.cond_mask, B)
        if getattr(getattr(self.model, "config", None), "guidance_embed", False):
            return self.model(x_t, t, cond=cond, cond_mask=cond_mask, w=self.guidance_scale - 1)
        if self.guidance_scale == 1.0:  # no guidance: the unconditional pass would be multiplied by 0
            return self.model(x_t, t, cond=cond, cond_mask=cond_mask)
        uncond, uncond_mask = _expand(self.uncond, B), _expand(self.uncond_mask, B)
        if self.guidance_scale == 0.0:  # the prompt is ignored: skip the conditional pass
            return self.model(x_t, t, cond=uncond, cond_mask=uncond_mask)
        eps = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]),  # (2B, C, H, W): uncond half, cond half
                         cond=torch.cat([uncond, cond]), cond_mask=torch.cat([uncond_mask, cond_mask]))
        eps_uncond, eps_cond = eps.chunk(2)
        return cfg(eps_uncond, eps_cond, self.guidance_scale)


def _expand(z: torch.Tensor, batch: int) -> torch.Tensor:
    """(1, ...) -> (batch, ...) without copying; (batch, ...) passes through."""
    if z.shape[0] == batch:
        return z
    if z.shape[0] != 1:
        raise ValueError(f"conditioning has batch size {z.shape[0]}, expected 1 or {batch} (one per image)")
    return z.expand(batch, *z.shape[1:])
