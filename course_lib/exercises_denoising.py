"""Check cells for chapter 2's exercises (one DDPM step, the whole sampling loop), in the style of course_lib.exercises:
quiet when right, an AssertionError with a hint when wrong, never the reference answer itself.

Both checkers compare with `course_lib.samplers.ddpm` on small random inputs. The eps-model they sample with is the
exact denoiser of Gaussian data x0 ~ N(mu, s^2 I) (closed form, no network), and every random draw comes from a
seeded torch.Generator, so a right answer reproduces the library's numbers up to float32 round-off.
"""
from __future__ import annotations

from typing import Callable

import torch

from .exercises import _close, _diagnose
from .samplers import ddpm, make_timesteps
from .schedules import NoiseSchedule

DATA_STD = 0.5  # the checks' data: x0 ~ N(mu, DATA_STD^2) per pixel, mu a fixed random pattern
_SHAPE = (2, 3, 4, 4)  # (B, C, H, W) of the checks' samples: small, the math does not care about size


def _data_mean() -> torch.Tensor:
    """mu, one fixed value per pixel (C, H, W): non-zero, so that x0 and x_t are not just multiples of each other."""
    return 0.6 * torch.randn(_SHAPE[1:], generator=torch.Generator().manual_seed(11))


class GaussianEps:
    """eps_theta(x_t, t) = E[eps | x_t] for x0 ~ N(mu, s^2 I): sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab).

    Counts its calls. Accepts t as a (B,) tensor (what course_lib's samplers pass), a 0-dim tensor or an int.
    """

    def __init__(self, schedule: NoiseSchedule):
        self.schedule, self.mu, self.calls = schedule, _data_mean(), 0

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t).long().cpu().reshape(-1).expand(x_t.shape[0])  # (B,)
        ab = self.schedule.alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t)  # (B, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu.to(x_t)) / (ab * DATA_STD**2 + 1 - ab)


# ----- exercise 3: one DDPM step ------------------------------------------------------------------------------

def _library_step(x_t, eps, schedule: NoiseSchedule, t: int, t_prev: int | None, seed: int) -> torch.Tensor:
    """course_lib's DDPM step from t to t_prev (None: the last step, to clean data) with a model that answers eps."""
    records = []
    timesteps = [t] if t_prev is None else [t, t_prev]
    ddpm(lambda x, t_batch: eps, x_t, schedule, timesteps, callback=records.append,
         generator=torch.Generator().manual_seed(seed))
    return records[0].x_t


def _step_cases():
    """(schedule, t, t_prev or None for the last step, x_t, eps, z, seed): strided steps, a 1-step move, the end."""
    g = torch.Generator().manual_seed(3)
    linear, cosine = NoiseSchedule.linear(), NoiseSchedule.cosine()
    for k, (schedule, t, t_prev) in enumerate(((linear, 999, 949), (linear, 500, 450), (cosine, 300, 200),
                                               (linear, 120, 119), (linear, 49, None), (cosine, 0, None))):
        x_t, eps = torch.randn(_SHAPE, generator=g), torch.randn(_SHAPE, generator=g)
        seed = 100 + k
        z = torch.randn(_SHAPE, generator=torch.Generator().manual_seed(seed))  # what the library will draw
        yield schedule, t, t_prev, x_t, eps, z, seed


def _step_variants(x_t, eps, ab, ab_prev, z) -> list[tuple[str, torch.Tensor]]:
    """Typical wrong DDPM steps, each with the hint that fixes it (the checker only compares numbers with them)."""
    alpha = ab / ab_prev
    beta = 1 - alpha
    x0 = (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5

    def mean_of(alpha_, beta_):
        return (ab_prev**0.5 * beta_ / (1 - ab)) * x0 + (alpha_**0.5 * (1 - ab_prev) / (1 - ab)) * x_t

    mean, var = mean_of(alpha, beta), (1 - ab_prev) / (1 - ab) * beta
    variants = [
        ("That is the DDIM step (no noise, re-using eps). DDPM goes to the posterior mean of q(x_prev | x_t, x0) "
         "and adds fresh noise sigma_t * z.", ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps),
        ("Multiply z by the standard deviation sigma_t = sqrt(beta~_t), not by the variance beta~_t.",
         mean + var * z),
        ("Wrong variance: use the posterior's beta~_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t "
         "(DDPM's 'fixed small', what course_lib samples with), not beta_t itself; beta~_t is 0 at the last step, "
         "beta_t is not.", mean + beta**0.5 * z),
        ("The step's own alpha_t is alpha_bar_t / alpha_bar_prev (and beta_t = 1 - alpha_t): alpha_bar_t alone is "
         "the product over ALL steps up to t, not one step's alpha.",
         mean_of(ab, 1 - ab) + (1 - ab_prev) ** 0.5 * z),
        ("The step's own alpha_t is alpha_bar_t / alpha_bar_prev (and beta_t = 1 - alpha_t): alpha_bar_t alone is "
         "the product over ALL steps up to t, not one step's alpha.",
         mean_of(ab, 1 - ab) + ((1 - ab_prev) / (1 - ab) * (1 - ab)) ** 0.5 * z),
    ]
    if ab_prev < 1:
        variants.append(("Add the noise: x_prev = mean + sigma_t * z (only the last step, to alpha_bar_prev = 1, "
                         "is noise-free, because there beta~_t = 0).", mean))
    return variants


def check_ddpm_step(fn: Callable) -> None:
    """Chapter 2: `fn(x_t, eps, alpha_bar_t, alpha_bar_prev, z)` must be one DDPM step as course_lib.samplers.ddpm
    takes it: the posterior mean of q(x_prev | x_t, x0) with x0 predicted from eps, plus sigma_t z, where
    sigma_t^2 = beta~_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta_t and alpha_t = alpha_bar_t / alpha_bar_prev.
    alpha_bar_prev = 1 means the last step, to clean data; z is standard normal noise of x_t's shape."""
    for schedule, t, t_prev, x_t, eps, z, seed in _step_cases():
        ab = schedule.alphas_cumprod[t]
        ab_prev = torch.tensor(1.0) if t_prev is None else schedule.alphas_cumprod[t_prev]
        want = _library_step(x_t, eps, schedule, t, t_prev, seed)
        got = fn(x_t.clone(), eps.clone(), ab.clone(), ab_prev.clone(), z.clone())
        where = f"{schedule.name} schedule, t={t} -> " + ("clean data (alpha_bar_prev = 1)" if t_prev is None
                                                          else f"t={t_prev}")
        if t_prev is None:
            fallback = ("At the last step (alpha_bar_prev = 1) the posterior variance beta~_t is 0: the answer is the "
                        "mean alone, which there equals the predicted x0. Check you add no noise there.")
        else:
            fallback = ("mean = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) * x0 "
                        "+ sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) * x_t, with x0 from "
                        "predict_x0 and alpha_t = alpha_bar_t / alpha_bar_prev; then add sigma_t * z.")
        hint = _diagnose(got, _step_variants(x_t, eps, ab, ab_prev, z), fallback, atol=1e-4, relative=True)
        _close(got, want, where, hint, atol=1e-4, relative=True)
    print("✓ the DDPM step is right")


# ----- exercise 4: the whole sampling loop --------------------------------------------------------------------

def _loop_variant(eps_model, x, schedule: NoiseSchedule, timesteps, generator, prev_of, noise: bool = True):
    """A DDPM loop with alpha_bar_prev = prev_of(i, t) (for the wrong variants' hints; the reference is `ddpm`)."""
    timesteps = [int(t) for t in timesteps]
    for i, t in enumerate(timesteps):
        ab, ab_prev = schedule.alphas_cumprod[t], torch.as_tensor(prev_of(i, t), dtype=torch.float32)
        alpha = ab / ab_prev
        eps = eps_model(x, torch.full((x.shape[0],), t))
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        x_next = (ab_prev**0.5 * (1 - alpha) / (1 - ab)) * x0 + (alpha**0.5 * (1 - ab_prev) / (1 - ab)) * x
        if t > 0:
            z = torch.randn(x.shape, generator=generator)
            if noise:
                x_next = x_next + ((1 - ab_prev) / (1 - ab) * (1 - alpha)).clamp(min=0) ** 0.5 * z
        x = x_next
    return x


def _loop_cases():
    """(schedule, timesteps, x_T, seed): strided trailing steps, steps that end at t = 0, another schedule."""
    linear, cosine = NoiseSchedule.linear(), NoiseSchedule.cosine()
    g = torch.Generator().manual_seed(4)
    for schedule, timesteps in ((linear, make_timesteps(linear, 10)), (linear, make_timesteps(linear, 6, "linspace")),
                                (cosine, make_timesteps(cosine, 8))):
        yield schedule, timesteps, torch.randn(_SHAPE, generator=g), 200 + len(timesteps)


def check_sampling_loop(fn: Callable) -> None:
    """Chapter 2: `fn(eps_model, x_T, schedule, timesteps, generator)` must sample as course_lib.samplers.ddpm does:
    one eps_model call and one DDPM step per entry of the descending `timesteps`, alpha_bar_prev taken at the next
    entry (1.0 after the last), the noise z of each step drawn with torch.randn(x.shape, generator=generator).
    Returns the final sample."""
    for schedule, timesteps, x_T, seed in _loop_cases():
        model = GaussianEps(schedule)
        want = ddpm(model, x_T, schedule, timesteps, generator=torch.Generator().manual_seed(seed))
        model.calls = 0
        got = fn(model, x_T.clone(), schedule, timesteps.clone(), torch.Generator().manual_seed(seed))
        where = f"{len(timesteps)} steps {timesteps[0].item()}..{timesteps[-1].item()}, {schedule.name} schedule"
        if model.calls != len(timesteps):
            raise AssertionError(f"{where}: eps_model was called {model.calls} times; sampling calls it once per "
                                 f"entry of timesteps ({len(timesteps)}), at that entry's t.")
        ts, ab = timesteps.tolist(), schedule.alphas_cumprod

        def loop(prev_of, noise=True):
            return _loop_variant(model, x_T, schedule, ts, torch.Generator().manual_seed(seed), prev_of, noise)

        last_hint = ("After the last timestep the sample is clean: use alpha_bar_prev = 1.0 there, not alpha_bar at "
                     "the last timestep or at t = 0.")
        variants = [
            ("Off by one in the alphas: alpha_bar_prev is alpha_bar at the NEXT entry of timesteps (t - 1 only "
             "when no step is skipped), and 1.0 after the last entry.",
             loop(lambda i, t: ab[t - 1] if t > 0 else 1.0)),
            (last_hint, loop(lambda i, t: ab[ts[i + 1]] if i + 1 < len(ts) else ab[0] if t > 0 else 1.0)),
            (last_hint, loop(lambda i, t: ab[ts[i + 1]] if i + 1 < len(ts) else ab[t])),
            ("No noise was added: every step but the last adds sigma_t * z, with z = torch.randn(x.shape, "
             "generator=generator).", loop(lambda i, t: ab[ts[i + 1]] if i + 1 < len(ts) else 1.0, noise=False)),
        ]
        fallback = ("Walk timesteps in the given (descending) order; at step i use alpha_bar_t = "
                    "schedule.alphas_cumprod[t] and alpha_bar_prev at timesteps[i + 1] (1.0 after the last); draw z "
                    "from `generator` (torch.randn(x.shape, generator=generator)), one per step, and pass everything "
                    "to your DDPM step (check_ddpm_step must pass first).")
        hint = _diagnose(got, variants, fallback, atol=1e-4, relative=True)
        _close(got, want, where, hint, atol=1e-3, relative=True)
    print("✓ your sampling loop reproduces course_lib.samplers.ddpm")
