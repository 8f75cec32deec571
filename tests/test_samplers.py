"""Samplers: step-for-step equal to diffusers' DDIMScheduler / DDPMScheduler loops, plus callbacks and errors."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from course_lib.samplers import SAMPLERS, SPACINGS, StepRecord, ddim, ddpm, get_sampler, make_timesteps
from course_lib.schedules import NoiseSchedule

DIFFUSERS_CONFIGS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}
SHAPE = (2, 3, 8, 8)


class TinyEps(torch.nn.Module):
    """A fixed, cheap, nontrivial eps-model: the exact eps for N(0, 0.5^2) data plus a random local-mixing term.

    The Gaussian part keeps predicted x0 bounded (so float32 comparisons are meaningful); the mixing
    term couples neighbouring pixels and channels and depends on t, so any mistake in the step math
    shows up in the output. Only elementwise ops: matmul/conv thread start-up dominates on tiny tensors.
    """

    def __init__(self, schedule):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(4, *SHAPE[1:], generator=g))  # (4, C, H, W) per-pixel weights
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone())

    def forward(self, x_t, t):
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)  # diffusers' loop passes a 0-dim t
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        eps_gauss = (1 - a).sqrt() * x_t / (0.25 * a + 1 - a)
        neighbours = (x_t, x_t.roll(1, dims=-1), x_t.roll(1, dims=-2), x_t.roll(1, dims=-3))  # each (B, C, H, W)
        mix = torch.tanh(sum(w * n for w, n in zip(self.w, neighbours)))  # (B, C, H, W)
        return eps_gauss + 0.3 * a.sqrt() * mix * torch.cos(t / 300).view(-1, 1, 1, 1)


def start_noise(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def diffusers_loop(scheduler, model, x, steps, **step_kwargs):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, **step_kwargs).prev_sample
    return x


def ddim_scheduler(name):
    return DDIMScheduler(
        num_train_timesteps=1000,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        **DIFFUSERS_CONFIGS[name],
    )


def ddpm_scheduler(name, spacing="trailing"):
    return DDPMScheduler(
        num_train_timesteps=1000,
        clip_sample=False,
        variance_type="fixed_small",
        timestep_spacing=spacing,
        **DIFFUSERS_CONFIGS[name],
    )


# ----- make_timesteps ---------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 50, 61, 333, 999, 1000])
def test_make_timesteps_matches_diffusers(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = make_timesteps(NoiseSchedule.linear(), steps, spacing)
    assert ours.dtype == torch.long and ours.shape == (steps,)
    # [:steps]: for some counts (61 here) diffusers' trailing arange round-off appends a bogus t = -1
    assert torch.equal(ours, ref.timesteps[:steps])
    assert (ours[:-1] > ours[1:]).all() and ours.min() >= 0 and ours.max() <= 999


def test_trailing_is_valid_for_every_step_count():
    schedule, ref = NoiseSchedule.linear(), DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    quirky = []
    for steps in range(1, 1001):
        ref.set_timesteps(steps)
        ours = make_timesteps(schedule, steps)
        assert ours.shape == (steps,) and ours[0] == 999 and ours[-1] >= 0, steps
        assert torch.equal(ours, ref.timesteps[:steps]), steps
        if len(ref.timesteps) != steps:
            assert len(ref.timesteps) == steps + 1 and ref.timesteps[-1] == -1, steps
            quirky.append(steps)
    # the known diffusers quirk: arange's round-off gives 62 step counts one extra timestep, t = -1; which is why
    # the sigma-space tests feed diffusers our timesteps with set_timesteps(timesteps=...)
    assert len(quirky) == 62 and quirky[:3] == [61, 103, 121]


def test_make_timesteps_small_T():
    schedule = NoiseSchedule.cosine(10)
    assert make_timesteps(schedule, 10).tolist() == list(range(9, -1, -1))
    assert make_timesteps(schedule, 2, "leading").tolist() == [5, 0]
    assert make_timesteps(schedule, 3, "linspace").tolist() == [9, 4, 0]  # round(4.5) = 4 (numpy rounds half to even)


@pytest.mark.parametrize(
    "steps, spacing, match",
    [
        (0, "trailing", r"steps must be in \[1, 1000\]"),
        (1001, "trailing", r"steps must be in \[1, 1000\]"),
        (2.5, "trailing", "steps must be an int"),
        ("10", "trailing", "steps must be an int"),
        (True, "trailing", "steps must be an int"),
        (10, "uniform", "valid values: trailing, leading, linspace"),
    ],
)
def test_make_timesteps_errors(steps, spacing, match):
    with pytest.raises(ValueError, match=match):
        make_timesteps(NoiseSchedule.linear(), steps, spacing)


# ----- DDIM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 5, 20, 50])
@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_ddim_matches_diffusers(name, steps):
    schedule = NoiseSchedule.from_name(name)
    model = TinyEps(schedule)
    ref = diffusers_loop(ddim_scheduler(name), model, start_noise(), steps)
    ours = ddim(model, start_noise(), schedule, make_timesteps(schedule, steps))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("name", ["linear", "scaled_linear"])
def test_ddim_eta_matches_diffusers_given_a_generator(name, eta):
    schedule = NoiseSchedule.from_name(name)
    model = TinyEps(schedule)
    gen = torch.Generator().manual_seed(3)
    ref = diffusers_loop(ddim_scheduler(name), model, start_noise(), 10, eta=eta, generator=gen)
    ours = ddim(model, start_noise(), schedule, make_timesteps(schedule, 10), eta=eta,
                generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_ddim_eta1_is_stochastic_but_reproducible():
    schedule = NoiseSchedule.cosine()
    model, timesteps = TinyEps(schedule), make_timesteps(schedule, 5)

    def run(seed):
        return ddim(model, start_noise(), schedule, timesteps, eta=1.0, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    # cosine at t = 999 makes 1 - a_prev - sigma^2 round below zero in float32 (diffusers returns NaN here)
    assert torch.isfinite(a).all()
    # eta = 0 ignores the generator entirely
    d0 = ddim(model, start_noise(), schedule, timesteps, generator=torch.Generator().manual_seed(0))
    d1 = ddim(model, start_noise(), schedule, timesteps, generator=torch.Generator().manual_seed(1))
    assert torch.equal(d0, d1)


@pytest.mark.parametrize("steps", [3, 7, 10])
def test_ddim_eta1_equals_ddpm(steps):
    """DDIM with eta=1 is DDPM's ancestral step (Song et al. 2021, sec. 4.1), for any timestep spacing."""
    schedule = NoiseSchedule.linear()
    model, timesteps = TinyEps(schedule), make_timesteps(schedule, steps)
    a = ddim(model, start_noise(), schedule, timesteps, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddpm(model, start_noise(), schedule, timesteps, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ----- DDPM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, steps",
    [("linear", 10), ("linear", 50), ("linear", 1000), ("cosine", 10), ("cosine", 1000), ("scaled_linear", 50)],
)
def test_ddpm_matches_diffusers(name, steps):
    schedule = NoiseSchedule.from_name(name)
    model = TinyEps(schedule)
    gen = torch.Generator().manual_seed(3)
    ref = diffusers_loop(ddpm_scheduler(name), model, start_noise(), steps, generator=gen)
    ours_gen = torch.Generator().manual_seed(3)
    ours = ddpm(model, start_noise(), schedule, make_timesteps(schedule, steps), generator=ours_gen)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    # the same number of noise draws, so the generators end in the same state
    assert torch.equal(gen.get_state(), ours_gen.get_state())


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_ddpm_other_spacings_match_diffusers(spacing):
    schedule = NoiseSchedule.linear()
    model = TinyEps(schedule)
    ref = diffusers_loop(ddpm_scheduler("linear", spacing), model, start_noise(), 7,
                         generator=torch.Generator().manual_seed(4))
    ours = ddpm(model, start_noise(), schedule, make_timesteps(schedule, 7, spacing),
                generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


# ----- shared behaviour -----------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_callback_records_every_step(sampler):
    schedule = NoiseSchedule.linear()
    model, timesteps = TinyEps(schedule), make_timesteps(schedule, 6)
    x_T = start_noise()
    records = []
    out = get_sampler(sampler)(model, x_T.clone(), schedule, timesteps, callback=records.append,
                               generator=torch.Generator().manual_seed(0))
    assert len(records) == len(timesteps)
    assert all(isinstance(r, StepRecord) for r in records)
    assert [r.step for r in records] == list(range(6))
    assert [r.t for r in records] == timesteps.tolist() and all(type(r.t) is int for r in records)
    assert all(r.x_t.shape == SHAPE and r.x0.shape == SHAPE for r in records)
    assert torch.equal(records[-1].x_t, out) and records[-1].x_t is not out
    # each step's x0 is DDPM eq. 4 solved for x0, at the x_t the previous step reported (x_T first)
    for before, rec in zip([x_T] + [r.x_t for r in records[:-1]], records):
        a = schedule.alphas_cumprod[rec.t]
        eps = model(before, torch.full((2,), rec.t))
        torch.testing.assert_close(rec.x0, (before - (1 - a).sqrt() * eps) / a.sqrt())
    # after the last step (alpha_bar_prev = 1) the sample IS the predicted x0
    torch.testing.assert_close(records[-1].x_t, records[-1].x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_eps_model_gets_a_long_batch_of_t_and_no_grad(sampler):
    schedule = NoiseSchedule.linear()
    layer = torch.nn.Linear(8, 8)  # has parameters that require grad
    seen = []

    def eps_model(x_t, t):
        seen.append(t)
        return layer(x_t)

    out = SAMPLERS[sampler](eps_model, torch.randn(4, 3, 8, 8), schedule, [900, 500, 100])
    assert not out.requires_grad
    assert [t.tolist() for t in seen] == [[900] * 4, [500] * 4, [100] * 4]
    assert all(t.dtype == torch.long and t.shape == (4,) for t in seen)


def test_sampler_registry():
    assert SAMPLERS["ddpm"] is ddpm and SAMPLERS["ddim"] is ddim
    assert get_sampler("ddim") is ddim
    with pytest.raises(ValueError, match="valid names: ddpm, ddim, euler"):
        get_sampler("euler_a")


@pytest.mark.parametrize("sampler", [ddim, ddpm])
@pytest.mark.parametrize(
    "timesteps, match",
    [
        ([], "non-empty 1-D"),
        (torch.tensor([], dtype=torch.long), "non-empty 1-D"),
        ([100, 500], "strictly descending"),
        ([500, 500, 0], "strictly descending"),
        ([1000, 10], r"\[0, 999\]"),
        ([10, -1], r"\[0, 999\]"),
        ([10.0, 5.0], "sequence of ints"),
    ],
)
def test_bad_timesteps(sampler, timesteps, match):
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match=match):
        sampler(TinyEps(schedule), start_noise(), schedule, timesteps)


def test_bad_model_output_and_eta():
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match=r"eps_model returned shape \(2, 3\), expected"):
        ddim(lambda x, t: torch.zeros(2, 3), start_noise(), schedule, [999])
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim(TinyEps(schedule), start_noise(), schedule, [999], eta=-0.1)


# ----- written against the mutants `make mutation` found surviving (mutation.md) ---------------------------
def test_eta_above_one_is_refused_and_deterministic_ddim_draws_no_noise():
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim(TinyEps(schedule), start_noise(), schedule, [999], eta=1.5)
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    ddim(TinyEps(schedule), start_noise(), schedule, make_timesteps(schedule, 5), generator=generator)
    assert torch.equal(generator.get_state(), before)  # eta = 0: no random number is drawn at all


@pytest.mark.parametrize("sampler", [ddim, ddpm])
@pytest.mark.parametrize("x", [[0.0, 1.0], torch.zeros(2, 3, dtype=torch.long), torch.tensor(0.5)],
                         ids=["list", "int tensor", "no batch dimension"])
def test_bad_starting_noise_is_refused(sampler, x):
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match="x must be a floating-point tensor with a batch dimension"):
        sampler(lambda x_t, t: x_t, x, schedule, [999])


@pytest.mark.parametrize("sampler", [ddim, ddpm])
def test_one_dimensional_samples_and_unreadable_timesteps(sampler):
    schedule = NoiseSchedule.linear()
    out = sampler(lambda x_t, t: 0.1 * x_t, torch.ones(4), schedule, [999, 500], generator=torch.Generator())
    assert out.shape == (4,)  # a batch of 4 scalars: the batch dimension is all a sampler needs
    with pytest.raises(ValueError, match="non-empty 1-D sequence of ints"):
        sampler(lambda x_t, t: x_t, torch.ones(4), schedule, ["late", "early"])
