"""Check cells for the notebooks' exercises: each checker compares a student's answer with course_lib.

A checker returns quietly when the answer is right and raises `AssertionError` with a hint when it is wrong,
so a notebook cell `check_add_noise(my_add_noise)` fails loudly on a wrong answer. The checkers never reveal
the reference code; they compare numbers on random inputs.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import NoiseSchedule, SCHEDULES


def _close(got, want, what: str, hint: str, atol: float = 1e-5) -> None:
    """Assert got ~ want with a message a student can act on."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}. {hint}")
    if got.shape != want.shape:
        raise AssertionError(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}. {hint}")
    err = (got.double() - want.double()).abs().max().item()
    if not err <= atol:
        raise AssertionError(f"{what}: off by up to {err:.3g} (tolerance {atol:g}). {hint}")


def check_add_noise(fn: Callable) -> None:
    """Chapter 1: `fn(x0, eps, alpha_bar_t)` must return x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    for alpha_bar_t in (0.999, 0.5, 0.3, 0.01):
        want = alpha_bar_t**0.5 * x0 + (1 - alpha_bar_t) ** 0.5 * eps
        _close(fn(x0, eps, alpha_bar_t), want, f"alpha_bar_t={alpha_bar_t}",
               "Both coefficients are square roots: the *variances* alpha_bar and 1 - alpha_bar add up to 1.")
    print("✓ add_noise is right")


def check_alphas_cumprod(fn: Callable) -> None:
    """Chapter 1: `fn(betas)` must return alpha_bar_t = prod_{s<=t} (1 - beta_s) for every t."""
    for name in SCHEDULES:
        s = NoiseSchedule.from_name(name)
        _close(fn(s.betas.clone()), s.alphas_cumprod, f"schedule {name!r}",
               "alpha_t = 1 - beta_t, and alpha_bar_t multiplies alpha_s for s = 0..t (torch.cumprod).", atol=1e-6)
    print("✓ alphas_cumprod is right for all three schedules")


def check_first_t(answer: int, schedule: NoiseSchedule, snr_below: float) -> None:
    """Chapter 1: `answer` must be the first t whose SNR is below `snr_below`."""
    snr = schedule.snr(torch.arange(schedule.num_train_timesteps))
    want = int(torch.nonzero(snr < snr_below)[0])
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise AssertionError(f"expected an int timestep, got {type(answer).__name__}")
    if answer != want:
        side = "too late" if answer > want else "too early"
        raise AssertionError(f"t={answer} is {side}: SNR there is {float(snr[answer]):.3g}. "
                             "Look for the first index where schedule.snr(t) < the threshold.")
    print(f"✓ the {schedule.name} schedule's SNR first drops below {snr_below} at t={answer}")


def _one_ddim_step(x_t, eps, t: int, t_prev: int, schedule: NoiseSchedule):
    """The library's DDIM step from t to t_prev with a model that always answers `eps`: (x_prev, predicted x0)."""
    from .samplers import ddim  # samplers sit above schedules; import here so chapter 1 needs only schedules

    records = []
    ddim(lambda x, t_batch: eps, x_t, schedule, [t, t_prev], callback=records.append)
    return records[0].x_t, records[0].x0


def _ddim_cases():
    g = torch.Generator().manual_seed(1)
    schedule = NoiseSchedule.linear()
    for t, t_prev in ((999, 949), (500, 450), (100, 0)):
        x_t, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        yield schedule, t, t_prev, x_t, eps


def check_predict_x0(fn: Callable) -> None:
    """Chapter 2: `fn(x_t, eps, alpha_bar_t)` must invert the closed form: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    for schedule, t, t_prev, x_t, eps in _ddim_cases():
        _, want = _one_ddim_step(x_t, eps, t, t_prev, schedule)
        _close(fn(x_t, eps, schedule.alphas_cumprod[t]), want, f"t={t}",
               "Solve x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for x0.", atol=1e-4)
    print("✓ predicted x0 is right")


def check_ddim_step(fn: Callable) -> None:
    """Chapter 2: `fn(x_t, eps, alpha_bar_t, alpha_bar_prev)` must be one deterministic DDIM step (eta = 0)."""
    for schedule, t, t_prev, x_t, eps in _ddim_cases():
        want, _ = _one_ddim_step(x_t, eps, t, t_prev, schedule)
        ab, ab_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]
        _close(fn(x_t, eps, ab, ab_prev), want, f"t={t} -> {t_prev}",
               "Predict x0 first, then re-noise it to the *previous* level with the *same* eps.", atol=1e-4)
    print("✓ the DDIM step is right")
