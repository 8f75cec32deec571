"""Samplers: turn pure noise into an image by repeatedly asking an eps-model "which part is noise?".

Each sampler is one stateless function with the whole loop in plain sight (in the spirit of
k-diffusion's sampling.py). All share one signature:

    fn(eps_model, x, schedule, timesteps, *, callback=None, generator=None, **options) -> x0

    eps_model(x_t, t) -> eps   t is a (B,) tensor on x's device (long, or float32 for fractional timesteps)
    x                          the starting noise x_T, e.g. torch.randn(B, C, H, W), on the scale the model was
                               trained on (variance preserving); the sigma-space samplers convert it themselves
    timesteps                  descending training timesteps to visit, e.g. make_timesteps(schedule, 50)
    callback(StepRecord)       called after every step, e.g. to record frames for a widget
    generator                  where stochastic samplers (ddpm, lcm, ddim with eta > 0) draw their noise: a
                               torch.Generator, or a list of one per image (then an image's noise is its own)

Going from timesteps[i] to timesteps[i + 1] is one "strided" step; after the last entry the
sampler jumps to alpha_bar = 1 (sigma = 0, clean data), like diffusers' set_alpha_to_one=True.
Predicted x0 is never clipped (diffusers' clip_sample=False), so the math is exactly the paper's.

Two views of the same process (conversions in course_lib.schedules):
    ddpm, ddim, lcm     work on x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps
    euler, heun         work on x = x_t / sqrt(alpha_bar) = x0 + sigma eps, an ODE in sigma
                        (Karras et al. 2022): dx/dsigma = (x - x0) / sigma = eps
    dpmpp_2m            the same ODE, solved in lambda = -log sigma (on x_t's scale; same math, fewer round-offs)
NFE ("number of function evaluations") counts eps_model calls; it, not the step count, is what a sampler costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from course_lib.schedules import NoiseSchedule, consistency_scalings, from_sigma_space, to_sigma_space, \
    vp_coefficients, x0_from_eps

SPACINGS = ("trailing", "leading", "linspace")


@dataclass
class StepRecord:
    """What a sampler reports after each step (detached clones on the sampling device)."""

    step: int  # index into timesteps
    t: int | float  # the timestep the model was evaluated at (first evaluation of the step)
    x_t: torch.Tensor  # the sample AFTER this step (the next, lower noise level; the final image after the last)
    x0: torch.Tensor  # the clean image the model predicted at this step
    nfe: int = 0  # model evaluations so far, this step's included (Heun makes 2 per step; the samplers fill it in)


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


def strength_timesteps(timesteps, strength: float) -> torch.Tensor:
    """img2img (SDEdit, Meng et al. 2022): the last int(len(timesteps) * strength) timesteps, as diffusers' img2img
    pipelines keep them. The image is noised to the first of them (add_noise) and denoised from there: strength 0
    keeps no step (the image comes back unchanged), 1 keeps them all (nearly plain text-to-image)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number in [0, 1] (0 = the image unchanged, 1 = redrawn), "
                         f"got {strength!r}")
    timesteps = torch.as_tensor(timesteps)
    kept = min(int(len(timesteps) * strength), len(timesteps))
    return timesteps[len(timesteps) - kept:]  # (kept,)


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
            x0 = x0_from_eps(x, eps, a_t)  # "predicted x0" (eq. 12, first term): DDPM eq. 4 inverted
            # eq. 16: how much fresh noise to inject; eta=0 makes the step deterministic
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            # eq. 12: jump to x_prev = sqrt(a_prev) x0 + "direction pointing to x_t" + random noise
            # (clamp: with eta=1 the bracket is ~a_t, which rounds below 0 at the cosine schedule's t = T-1)
            x_next = a_prev**0.5 * x0 + (1 - a_prev - sigma**2).clamp(min=0) ** 0.5 * eps
            if eta > 0:
                x_next = x_next + sigma * _randn_like(x, generator)
            x = x_next
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone(), nfe=i + 1))
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
            x0 = x0_from_eps(x, eps, a_t)  # DDPM eq. 4 inverted (eq. 15); unclipped
            # eq. 7: posterior mean mu~(x_t, x0), a blend of predicted x0 and the current x_t
            mean = (a_prev**0.5 * beta_t / (1 - a_t)) * x0 + (alpha_t**0.5 * (1 - a_prev) / (1 - a_t)) * x
            # eq. 7: posterior variance beta~_t; sample x_prev ~ N(mean, beta~_t I), no noise at t = 0
            variance = (1 - a_prev) / (1 - a_t) * beta_t
            x_next = mean
            if t > 0:  # (the last step has variance 0; noise is still drawn if t > 0, as diffusers does)
                x_next = mean + variance**0.5 * _randn_like(x, generator)
            x = x_next
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone(), nfe=i + 1))
    return x


def euler(eps_model, x, schedule, timesteps, *, callback=None, generator=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0) / sigma (Karras et al. 2022, Algorithm 1)."""
    timesteps = _check_inputs(x, schedule, timesteps, fractional=True)
    sigmas = _sigmas(schedule, timesteps)  # (N + 1,): the noise levels visited, then 0
    x = to_sigma_space(x, sigmas[0])  # x = x0 + sigma eps
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            x0 = _denoise(eps_model, x, sigmas[i], t)
            d = (x - x0) / sigmas[i]  # the ODE's slope dx/dsigma (k-diffusion's to_d); equals the predicted eps
            x = x + d * (sigmas[i + 1] - sigmas[i])  # one Euler step down to the next noise level
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=from_sigma_space(x, sigmas[i + 1]), x0=x0.clone(), nfe=i + 1))
    return x


def heun(eps_model, x, schedule, timesteps, *, callback=None, generator=None) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1): an Euler step, then the average of the slopes at
    both ends. The last step (to sigma = 0) stays an Euler step, so N timesteps cost 2N - 1 model calls."""
    timesteps = _check_inputs(x, schedule, timesteps, fractional=True)
    sigmas = _sigmas(schedule, timesteps)
    x = to_sigma_space(x, sigmas[0])
    nfe = 0
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            x0 = _denoise(eps_model, x, sigmas[i], t)
            d = (x - x0) / sigmas[i]
            dt = sigmas[i + 1] - sigmas[i]
            x_euler = x + d * dt  # predictor: where Euler lands
            nfe += 1
            if i + 1 == len(timesteps):  # sigma_next = 0: the slope there is undefined, keep Euler's answer
                x = x_euler
            else:  # corrector: the slope where Euler landed, averaged with the slope where it started (trapezoid)
                x0_next = _denoise(eps_model, x_euler, sigmas[i + 1], timesteps[i + 1])
                d_next = (x_euler - x0_next) / sigmas[i + 1]
                x = x + (d + d_next) / 2 * dt
                nfe += 1
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=from_sigma_space(x, sigmas[i + 1]), x0=x0.clone(), nfe=nfe))
    return x


def dpmpp_2m(eps_model, x, schedule, timesteps, *, callback=None, generator=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): solves the ODE in lambda = log(alpha / sigma) exactly for an
    x0 prediction that is constant over a step, and reaches second order by reusing the previous step's prediction,
    so it still costs one model call per step. Written on x_t's own scale, as diffusers does (fewer round-offs)."""
    timesteps = _check_inputs(x, schedule, timesteps, fractional=True)
    sigmas = _sigmas(schedule, timesteps)
    x0_prev, h_prev = None, None
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            alpha_s, sigma_s = vp_coefficients(sigmas[i])  # x_t = alpha x0 + sigma eps at this step
            eps = _predict_eps(eps_model, x, t)
            x0 = (x - sigma_s * eps) / alpha_s
            if sigmas[i + 1] == 0:  # the last step lands on the prediction itself (lambda -> infinity)
                x = x0
            else:
                alpha_t, sigma_t = vp_coefficients(sigmas[i + 1])
                # step size in lambda = log(alpha / sigma); written op for op as diffusers does, so that even a
                # guided network, which amplifies round-off, gives diffusers' images to the last bits
                h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s) - torch.log(sigma_s))
                phi = alpha_t * (torch.exp(-h) - 1.0)
                x = (sigma_t / sigma_s) * x - phi * x0  # exact if x0 were constant over the step (first order, DDIM)
                if x0_prev is not None:  # the line through the last two predictions, read at mid-step (eq. 9)
                    r = h_prev / h
                    x = x - 0.5 * phi * ((1.0 / r) * (x0 - x0_prev))
                x0_prev, h_prev = x0, h
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone(), nfe=i + 1))
    return x


def lcm(eps_model, x, schedule, timesteps, *, callback=None, generator=None) -> torch.Tensor:
    """Multistep latent-consistency sampling (Luo et al. 2023, Algorithm 1 of the LCM paper; Song et al. 2023,
    Algorithm 1): jump straight to a clean estimate f(x_t, t) = c_skip x_t + c_out x0, then re-noise it to the next
    timestep with fresh noise. Meant for a consistency-distilled model; with an ordinary one it is a noisy DDIM."""
    timesteps = _check_inputs(x, schedule, timesteps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            a_t, a_prev = _alpha_bars(schedule, timesteps, i)
            eps = _predict_eps(eps_model, x, t)
            c_skip, c_out = consistency_scalings(torch.tensor(t))
            x0 = c_out * x0_from_eps(x, eps, a_t) + c_skip * x  # the consistency function's clean image
            if i + 1 < len(timesteps):  # q(x_prev | x0): noise it again, independently of the path so far
                x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * _randn_like(x, generator)
            else:
                x = x0
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0.detach().clone(), nfe=i + 1))
    return x


def ddim_inversion(eps_model, x0, schedule, timesteps, *, callback=None) -> torch.Tensor:
    """DDIM run backwards (Song et al. 2021, sec. 4.3; as null-text inversion, Mokady et al. 2023, runs it): from a
    clean image x0 up through `timesteps` (given descending, as to the samplers) to the noise x_T from which `ddim`
    with the same timesteps draws (about) x0 again. Each step re-uses eq. 12 upwards, with the noise predicted from
    the less noisy sample (the only approximation: the exact eps would need the x_t being solved for)."""
    timesteps = _check_inputs(x0, schedule, timesteps)[::-1]  # visited ascending: clean -> noisy
    x, a_from = x0, torch.tensor(1.0)  # alpha_bar = 1: clean data
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            a_to = schedule.alphas_cumprod[t]
            eps = _predict_eps(eps_model, x, t)
            x0_pred = x0_from_eps(x, eps, a_from)  # at alpha_bar = 1 (the first step) this is x itself
            x = a_to**0.5 * x0_pred + (1 - a_to) ** 0.5 * eps  # eq. 12 with eta = 0, one level up
            a_from = a_to
            if callback is not None:
                callback(StepRecord(step=i, t=t, x_t=x.detach().clone(), x0=x0_pred.detach().clone(), nfe=i + 1))
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim, "euler": euler, "heun": heun,
                                                     "dpmpp_2m": dpmpp_2m, "lcm": lcm}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called `name` (one of SAMPLERS)."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# ----- shared helpers (no math here; the math lives in the loops above) ---------------------
def _check_inputs(x, schedule: NoiseSchedule, timesteps, fractional: bool = False) -> list:
    """timesteps as a list of ints (floats if fractional ones are allowed and given), after checking they are
    non-empty, descending and in [0, T-1]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError("x must be a floating-point tensor with a batch dimension, e.g. torch.randn(B, C, H, W)")
    T = schedule.num_train_timesteps
    try:
        ts = torch.as_tensor(timesteps)
    except (TypeError, ValueError, RuntimeError):
        ts = None
    kind = "numbers" if fractional else "ints"
    if ts is None or ts.ndim != 1 or ts.numel() == 0 or ts.dtype == torch.bool or ts.is_complex() \
            or (ts.is_floating_point() and not fractional):
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of {kind}, e.g. make_timesteps(schedule, 50)")
    if ts.is_floating_point() and not bool(torch.isfinite(ts).all()):
        raise ValueError(f"timesteps must be finite numbers in [0, {T - 1}], got {ts.tolist()[:5]}...")
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


def _sigmas(schedule: NoiseSchedule, timesteps: list) -> torch.Tensor:
    """The noise levels sigma of the visited timesteps with a final 0 appended: (N + 1,) float32 on the CPU."""
    return torch.cat([schedule.sigma_at(timesteps), torch.zeros(1)])


def _denoise(eps_model, x: torch.Tensor, sigma: torch.Tensor, t) -> torch.Tensor:
    """The clean image a sigma-space sample x = x0 + sigma eps implies: x0 = x - sigma eps_model(x_t, t), where the
    network sees x on its own scale, x_t = x / sqrt(1 + sigma^2) (k-diffusion's CompVisDenoiser)."""
    eps = _predict_eps(eps_model, from_sigma_space(x, sigma), t)
    return x - sigma * eps


def _predict_eps(eps_model, x: torch.Tensor, t) -> torch.Tensor:
    """eps_model(x_t, t) with t broadcast to a (B,) tensor on x's device (long for an int t, else float32)."""
    dtype = torch.long if isinstance(t, (int, np.integer)) else torch.float32
    t_batch = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)  # (B,)
    eps = eps_model(x, t_batch)
    if eps.shape != x.shape:
        raise ValueError(f"eps_model returned shape {tuple(eps.shape)}, expected x's shape {tuple(x.shape)}")
    return eps


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x; drawn on the generator's device, then moved (as diffusers' randn_tensor).

    generator: None, one torch.Generator, or a list of them, one per image (diffusers' convention): then each image's
    noise comes from its own generator, so it does not depend on which batch the image is sampled in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]} images: pass one per image")
        return torch.cat([_randn_like(x[i:i + 1], g) for i, g in enumerate(generator)])  # (B, ...)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
