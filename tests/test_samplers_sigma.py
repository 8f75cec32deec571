"""The sigma-space samplers (Euler, Heun, DPM-Solver++(2M)) and LCM: equal to diffusers' step loops, call counts."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler

from course_lib.samplers import SAMPLERS, StepRecord, ddim, dpmpp_2m, euler, get_sampler, heun, lcm, make_timesteps
from course_lib.schedules import NoiseSchedule, consistency_scalings

BETAS = {  # diffusers' names for our schedules, with the betas spelled out (Heun's and LCM's defaults differ)
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
# float32 eps -> x0 at cosine's sigma_max ~ 2e4 is ill-conditioned; diffusers itself is ~5e-5 from float64 there
TOLERANCE = {"linear": 1e-5, "scaled_linear": 1e-5, "cosine": 1e-3}
SHAPE = (2, 3, 8, 8)


class SmoothEps(torch.nn.Module):
    """A fixed, smooth eps-model that accepts fractional t: the exact eps for N(0, 0.5^2) data at the noise level
    sigma(t) (interpolated as diffusers does), plus a t-dependent local mixing term. Its x0 prediction stays bounded,
    so float32 comparisons mean something; the mixing term makes every mistake in the step math visible."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(4, *SHAPE[1:], generator=g))  # (4, C, H, W) per-pixel weights

    def forward(self, x_t, t):
        t = torch.as_tensor(t).reshape(-1).double()  # diffusers' loops pass a 0-dim t
        sigma = self.schedule.sigma_at(t.cpu().numpy()).to(x_t.device)
        a = (1 / (1 + sigma.double() ** 2)).float().view(-1, 1, 1, 1)  # alpha_bar(t), (B, 1, 1, 1)
        eps_gauss = (1 - a).sqrt() * x_t / (0.25 * a + 1 - a)
        neighbours = (x_t, x_t.roll(1, dims=-1), x_t.roll(1, dims=-2), x_t.roll(1, dims=-3))  # each (B, C, H, W)
        mix = torch.tanh(sum(w * n for w, n in zip(self.w, neighbours)))  # (B, C, H, W)
        return eps_gauss + 0.3 * a.sqrt() * mix * torch.cos(t.float() / 300).view(-1, 1, 1, 1)


class Counted:
    """Wraps an eps-model and counts its calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def start_noise(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def diffusers_sigma_loop(scheduler, model, x, timesteps, **step_kwargs):
    """diffusers' sampling loop; x is our variance-preserving x_T, scaled to the scheduler's first sigma."""
    scheduler.set_timesteps(timesteps=[float(t) for t in timesteps])
    x = x * (scheduler.sigmas[0] ** 2 + 1) ** 0.5  # (not init_noise_sigma: with trailing spacing that is sigma_max)
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x, len(scheduler.timesteps)


def diffusers_vp_loop(scheduler, model, x, timesteps, **step_kwargs):
    """diffusers' loop for schedulers that work on the variance-preserving x_t (DPM-Solver, LCM)."""
    scheduler.set_timesteps(timesteps=[int(t) for t in timesteps])
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
    return x, len(scheduler.timesteps)


def reference(sampler, name, model, x, timesteps, generator=None):
    """The same sampling done by the diffusers scheduler that our sampler claims to equal."""
    common = dict(num_train_timesteps=1000, timestep_spacing="trailing", **BETAS[name])
    if sampler == "euler":
        return diffusers_sigma_loop(EulerDiscreteScheduler(**common), model, x, timesteps)
    if sampler == "heun":
        return diffusers_sigma_loop(HeunDiscreteScheduler(**common), model, x, timesteps)
    if sampler == "dpmpp_2m":
        scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                                final_sigmas_type="zero", **common)
        return diffusers_vp_loop(scheduler, model, x, timesteps)
    scheduler = LCMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    return diffusers_vp_loop(scheduler, model, x, timesteps, generator=generator)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "lcm"])
@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_equals_diffusers(sampler, name, steps):
    # (Heun on cosine: its first trapezoid spans sigma 2e4 -> ~10 and the samples blow up to ~1e3 at 2 steps, but we
    # do the same float32 operations as diffusers, so even there the results agree to the cosine tolerance)
    schedule = NoiseSchedule.from_name(name)
    timesteps = make_timesteps(schedule, steps)
    counted = Counted(SmoothEps(schedule))
    ours = SAMPLERS[sampler](counted, start_noise(), schedule, timesteps, generator=torch.Generator().manual_seed(5))
    ref, ref_calls = reference(sampler, name, SmoothEps(schedule), start_noise(), timesteps,
                               generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, atol=TOLERANCE[name], rtol=TOLERANCE[name])
    assert counted.calls == ref_calls == (2 * steps - 1 if sampler == "heun" else steps)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_fractional_timesteps_equal_diffusers_and_reach_the_model_as_floats(sampler):
    schedule = NoiseSchedule.linear()
    timesteps = torch.linspace(999, 3, 7, dtype=torch.float64)  # 999, 833, 667, ... : not whole numbers
    seen = []

    def model(x, t):
        seen.append(t)
        return SmoothEps(schedule)(x, t)

    ours = SAMPLERS[sampler](model, start_noise(), schedule, timesteps)
    ref, _ = reference(sampler, "linear", SmoothEps(schedule), start_noise(), timesteps.tolist())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    assert seen[1][0].item() == pytest.approx(833.0, abs=1e-3)


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_ddim_and_euler_are_the_same_update(steps):
    """x = x0 + sigma eps: DDIM's jump to sqrt(a_prev) x0 + sqrt(1 - a_prev) eps is an Euler step in sigma."""
    schedule = NoiseSchedule.linear()
    timesteps = make_timesteps(schedule, steps)
    out_ddim = ddim(SmoothEps(schedule), start_noise(), schedule, timesteps)
    out_euler = euler(SmoothEps(schedule), start_noise(), schedule, timesteps)
    # equal up to float32 round-off: sigma_max = 157 turns eps ~ 6e-8 into ~4e-5 in the first x0 estimate
    torch.testing.assert_close(out_euler, out_ddim, atol=1e-4, rtol=1e-4)
    # ...while Heun and DPM-Solver++ are genuinely different (higher-order) updates
    for other in (heun, dpmpp_2m):
        if steps > 1:
            assert (other(SmoothEps(schedule), start_noise(), schedule, timesteps) - out_ddim).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_records_count_model_calls(sampler):
    schedule = NoiseSchedule.linear()
    counted, records = Counted(SmoothEps(schedule)), []
    out = SAMPLERS[sampler](counted, start_noise(), schedule, make_timesteps(schedule, 4), callback=records.append,
                            generator=torch.Generator().manual_seed(0))
    assert [r.step for r in records] == [0, 1, 2, 3] and all(isinstance(r, StepRecord) for r in records)
    assert [r.t for r in records] == make_timesteps(schedule, 4).tolist()
    expected = [2, 4, 6, 7] if sampler == "heun" else [1, 2, 3, 4]  # Heun: 2 calls a step, Euler's 1 at the end
    assert [r.nfe for r in records] == expected and records[-1].nfe == counted.calls
    assert torch.equal(records[-1].x_t, out)
    # x_t is reported on the model's own (variance-preserving) scale by every sampler, not as x0 + sigma eps
    assert 0.5 < records[0].x_t.std() < 1.5


def test_lcm_applies_the_consistency_boundary_condition():
    schedule = NoiseSchedule.linear()
    c_skip, c_out = consistency_scalings(torch.tensor([0, 1, 999]))
    torch.testing.assert_close(c_skip, torch.tensor([1.0, 0.25 / 100.25, 0.25 / (9990**2 + 0.25)]))
    torch.testing.assert_close(c_out, torch.tensor([0.0, 10 / 100.25**0.5, 9990 / (9990**2 + 0.25) ** 0.5]))
    records = []
    x_T = start_noise()
    lcm(SmoothEps(schedule), x_T, schedule, [999, 10], callback=records.append, generator=torch.Generator())
    # at t = 10 (scaled to 100) c_skip is tiny but not 0: the result is not the plain x0 prediction
    a = schedule.alphas_cumprod[999]
    x0_plain = (x_T - (1 - a).sqrt() * SmoothEps(schedule)(x_T, 999)) / a.sqrt()
    c_skip, c_out = consistency_scalings(torch.tensor(999))
    torch.testing.assert_close(records[0].x0, c_out * x0_plain + c_skip * x_T)


def test_lcm_is_stochastic_between_steps_and_reproducible():
    schedule = NoiseSchedule.linear()
    ts = make_timesteps(schedule, 4)
    runs = [lcm(SmoothEps(schedule), start_noise(), schedule, ts, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_registry_and_errors_name_every_sampler():
    assert list(SAMPLERS) == ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "lcm"]
    with pytest.raises(ValueError, match="valid names: ddpm, ddim, euler, heun, dpmpp_2m, lcm"):
        get_sampler("dpm++")
    with pytest.raises(ValueError, match="valid names"):
        get_sampler(None)
    schedule = NoiseSchedule.linear()
    for bad, match in (([999.5, 10.0], "sequence of ints"), ([10, 500], "strictly descending"),
                       ([1000.0, 3.0], r"\[0, 999\]"), ([float("nan")], "finite")):
        sampler = lcm if match == "sequence of ints" else euler
        with pytest.raises(ValueError, match=match):
            sampler(SmoothEps(schedule), start_noise(), schedule, bad)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        schedule.sigma_at([1200.0])


@pytest.mark.parametrize("sampler", ["ddpm", "lcm"])
def test_a_list_of_generators_gives_each_image_its_own_noise(sampler):
    schedule = NoiseSchedule.linear()
    ts, x_T = make_timesteps(schedule, 3), start_noise()
    both = SAMPLERS[sampler](SmoothEps(schedule), x_T, schedule, ts,
                             generator=[torch.Generator().manual_seed(s) for s in (10, 11)])
    for i, s in enumerate((10, 11)):  # each image alone, with its own generator: the same numbers
        alone = SAMPLERS[sampler](SmoothEps(schedule), x_T[i:i + 1], schedule, ts,
                                  generator=torch.Generator().manual_seed(s))
        torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="3 generators for a batch of 2 images: pass one per image"):
        SAMPLERS[sampler](SmoothEps(schedule), x_T, schedule, ts, generator=[torch.Generator()] * 3)
