"""Samplers: turn pure noise into an image by repeatedly asking an eps-model "which part is noise?".

Each sampler is one stateless function with the whole loop in plain sight (in the spirit of
k-diffusion's sampling.py). All share one signature:

    fn(eps_model, x, schedule, timesteps, *, callback=None, generator=None, **options) -> x0

    eps_model(x_t, t) -> eps   t is a LongTensor (B,) on x's device; eps has x's shape
    x                          the starting noise x_T, e.g. torch.randn(B, C, H, W)
    timesteps                  descending training timesteps to visit, e.g. make_timesteps(schedule, 50)
    callback(StepRecord)       called after every step, e.g. to record frames for a widget

Going from timesteps[i] to timesteps[i + 1] is one "strided" step; after the last entry the
sampler jumps to alpha_bar = 1 (clean data), like diffusers' set_alpha_to_one=True.
Predicted x0 is never clipped (diffusers' clip_sample=False), so the math is exactly the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from course_lib.schedules import NoiseSchedule

SPACINGS = ("trailing", "leading", "linspace")


@dataclass
class StepRecord:
    """What a sampler reports after each step (detached clones on the sampling device)."""

    step: int  # index into timesteps
    t: int  # the timestep the model was evaluated at
    x_t: torch.Tensor  # the sample AFTER this step (the next, lower noise level; the final image after the last)
    x0: torch.Tensor  # the clean image the model predicted at this step


def make_timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """`steps` descending training timesteps, spaced like diffusers' timestep_spacing (Lin et al. 2023, table 2)."""
    T = schedule.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an int in [1, {T}], got {type(steps).__name__} {steps!r}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}] (num_train_timesteps={T}), got {steps}")
    if spacing == "trailing":  # always starts at t = T-1, the step the model was trained to start from
        # [:steps]: float round-off in arange sometimes adds an extra last entry, which would become t = -1
        timesteps = np.round(np.arange(T, 0, -T / steps)[:steps]).astype(np.int64) - 1
    elif spacing == "leading":  # multiples of T // steps, starting at 0 (diffusers' default, steps_offset=0)
        timesteps = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64)
    elif spacing == "linspace":  # evenly spaced from T-1 down to 0, rounded
        timesteps = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid values: {', '.join(SPACINGS)}")
    return torch.from_numpy(timesteps.copy())  # (steps,)


def ddim(eps_model, x, schedule, timesteps, *, callback=None, generator=None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12; sigma_t from eq. 16): eta=0 is deterministic, eta=1 is DDPM-like."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta}")
    timesteps = _check_inputs(x, schedule, timesteps)
    with torch.no_grad():  # sampling only reads the network: no autograd graph to build
        for i, t in enumerate(timesteps):
            # alpha_bar at this step and at the next (lower) one; 1.0 = clean data after the last step
            a_t, a_prev = _alpha_bars(schedule, timesteps, i)
            eps = _predict_eps(eps_model, x, t)
            # invert DDPM eq. 4 for x0: "predicted x0" (eq. 12, first term)
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            # eq. 16: how much fresh noise to inject; eta=0 makes the step deterministic
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            # eq. 12: jump to x_prev = sqrt(a_prev) x0 + "direction pointing to x_t" + random noise
            # (clamp: with eta=1 the bracket is ~a_t, which rounds below 0 at the cosine schedule's t = T-1)
            x_next = a_prev**0.5 * x0 + (1 - a_prev - sigma**2).clamp(min=0) ** 0.5 * eps
            if eta > 0:
                x_next = x_next + sigma * _randn_like(x, generator)
            x = x_next
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone()))
    return x


def ddpm(eps_model, x, schedule, timesteps, *, callback=None, generator=None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2 via the posterior of eq. 6-7, "fixed_small" variance)."""
    timesteps = _check_inputs(x, schedule, timesteps)
    with torch.no_grad():  # sampling only reads the network: no autograd graph to build
        for i, t in enumerate(timesteps):
            # alpha_bar at this step and at the next (lower) one; 1.0 = clean data after the last step
            a_t, a_prev = _alpha_bars(schedule, timesteps, i)
            # the strided step's own alpha and beta (equal to alphas[t], betas[t] when no step is skipped)
            alpha_t = a_t / a_prev
            beta_t = 1 - alpha_t
            eps = _predict_eps(eps_model, x, t)
            # invert DDPM eq. 4 for x0 (eq. 15); unclipped
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            # eq. 7: posterior mean mu~(x_t, x0), a blend of predicted x0 and the current x_t
            mean = (a_prev**0.5 * beta_t / (1 - a_t)) * x0 + (alpha_t**0.5 * (1 - a_prev) / (1 - a_t)) * x
            # eq. 7: posterior variance beta~_t; sample x_prev ~ N(mean, beta~_t I), no noise at t = 0
            variance = (1 - a_prev) / (1 - a_t) * beta_t
            x_next = mean
            if t > 0:  # (the last step has variance 0; noise is still drawn if t > 0, as diffusers does)
                x_next = mean + variance**0.5 * _randn_like(x, generator)
            x = x_next
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone()))
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called `name` (one of SAMPLERS)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# ----- shared helpers (no math here; the math lives in the loops above) ---------------------
def _check_inputs(x, schedule: NoiseSchedule, timesteps) -> list[int]:
    """timesteps as a list of ints, after checking they are non-empty, descending and in [0, T-1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError("x must be a floating-point tensor with a batch dimension, e.g. torch.randn(B, C, H, W)")
    T = schedule.num_train_timesteps
    try:
        ts = torch.as_tensor(timesteps)
    except (TypeError, ValueError, RuntimeError):
        ts = None
    if ts is None or ts.ndim != 1 or ts.numel() == 0 or ts.is_floating_point() or ts.dtype == torch.bool:
        raise ValueError("timesteps must be a non-empty 1-D sequence of ints, e.g. make_timesteps(schedule, 50)")
    ts = ts.tolist()
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending (noisy -> clean), got {ts[:5]}...")
    if ts[0] > T - 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {T - 1}] (num_train_timesteps={T}), got {ts[0]}..{ts[-1]}")
    return ts


def _alpha_bars(schedule: NoiseSchedule, timesteps: list[int], i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar at timesteps[i], alpha_bar at timesteps[i + 1] or 1.0 after the last) as float32 CPU scalars.

    Kept as float32 0-dim tensors, as diffusers does, so results match it closely even where
    alpha_bar_t is ~1e-9 (cosine, t = T-1); 0-dim CPU tensors combine with x on any device.
    """
    a_t = schedule.alphas_cumprod[timesteps[i]]
    a_prev = schedule.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
    return a_t, a_prev


def _predict_eps(eps_model, x: torch.Tensor, t: int) -> torch.Tensor:
    """eps_model(x_t, t) with t broadcast to a (B,) LongTensor on x's device; checks the output shape."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
    eps = eps_model(x, t_batch)
    if eps.shape != x.shape:
        raise ValueError(f"eps_model returned shape {tuple(eps.shape)}, expected x's shape {tuple(x.shape)}")
    return eps


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x; drawn on the generator's device, then moved (as diffusers' randn_tensor)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
