"""NoiseSchedule: numbers equal diffusers' DDPMScheduler, and the closed form equals the step-by-step chain."""
import pytest
import torch
from diffusers import DDPMScheduler

from course_lib.schedules import SCHEDULES, NoiseSchedule

# our name -> the DDPMScheduler config that should give identical numbers
DIFFUSERS_CONFIGS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}


def diffusers_scheduler(name, num_train_timesteps=1000):
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **DIFFUSERS_CONFIGS[name])


@pytest.mark.parametrize("num_train_timesteps", [1000, 50])
@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_betas_and_alphas_cumprod_match_diffusers(name, num_train_timesteps):
    ours = NoiseSchedule.from_name(name, num_train_timesteps)
    ref = diffusers_scheduler(name, num_train_timesteps)
    assert ours.name == name
    assert ours.num_train_timesteps == num_train_timesteps
    for field in ("betas", "alphas", "alphas_cumprod"):
        got = getattr(ours, field)
        assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == (num_train_timesteps,)
        torch.testing.assert_close(got, getattr(ref, field), atol=1e-6, rtol=0)


def test_constructor_arguments_are_used():
    ours = NoiseSchedule.linear(200, beta_start=1e-3, beta_end=0.05)
    ref = DDPMScheduler(num_train_timesteps=200, beta_start=1e-3, beta_end=0.05, beta_schedule="linear")
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)
    ours = NoiseSchedule.scaled_linear(300, beta_start=1e-4, beta_end=0.02)
    ref = DDPMScheduler(num_train_timesteps=300, beta_start=1e-4, beta_end=0.02, beta_schedule="scaled_linear")
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)


def test_cosine_betas_are_capped():
    betas = NoiseSchedule.cosine().betas
    assert betas.max().item() == pytest.approx(0.999)  # the last step would otherwise be beta = 1
    assert (betas[1:] >= betas[:-1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_add_noise_matches_diffusers(name, dtype):
    ours, ref = NoiseSchedule.from_name(name), diffusers_scheduler(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8, generator=g, dtype=dtype)
    noise = torch.randn(6, 3, 8, 8, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = ours.add_noise(x0, noise, t)
    assert x_t.dtype == dtype and x_t.shape == x0.shape
    torch.testing.assert_close(x_t, ref.add_noise(x0, noise, t), atol=1e-6, rtol=0)


def test_add_noise_int_t_and_2d_points():
    schedule = NoiseSchedule.linear()
    x0, noise = torch.randn(5, 2), torch.randn(5, 2)  # toy 2-D points: (B, 2)
    a = schedule.alphas_cumprod[300]
    expected = a.sqrt() * x0 + (1 - a).sqrt() * noise
    torch.testing.assert_close(schedule.add_noise(x0, noise, 300), expected)
    torch.testing.assert_close(schedule.add_noise(x0, noise, torch.full((5,), 300)), expected)
    # each row gets its own noise level
    t = torch.tensor([0, 100, 200, 300, 999])
    rows = torch.stack([schedule.add_noise(x0[i : i + 1], noise[i : i + 1], int(t[i]))[0] for i in range(5)])
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), rows)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_snr_closed_form(name):
    schedule = NoiseSchedule.from_name(name)
    a = schedule.alphas_cumprod
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(schedule.snr(t), a[t] / (1 - a[t]))
    assert schedule.snr(10).shape == () and schedule.snr(10).item() == pytest.approx((a[10] / (1 - a[10])).item())
    snr = schedule.snr(torch.arange(1000))
    assert (snr[1:] < snr[:-1]).all()  # noise only ever grows with t
    assert snr[0] > 100 and snr[-1] < 1e-2


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_step_by_step_chain_matches_closed_form(name):
    """Applying q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) t+1 times gives DDPM eq. 4's mean/variance."""
    schedule = NoiseSchedule.from_name(name)
    betas = schedule.betas.double()
    n, x0_value = 20000, 0.7
    g = torch.Generator().manual_seed(1234)
    x = torch.full((n,), x0_value, dtype=torch.float64)
    checked = 0
    for t in range(schedule.num_train_timesteps):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
        if t in (0, 9, 99, 499, 999):  # x is now a sample of x_t (0-based t: t+1 steps taken)
            a = schedule.alphas_cumprod[t].double()
            mean, var = a.sqrt() * x0_value, 1 - a
            mean_se, var_se = (var / n).sqrt(), var * (2 / (n - 1)) ** 0.5  # standard errors
            assert abs(x.mean() - mean) < 4 * mean_se, (t, x.mean().item(), mean.item())
            assert abs(x.var() - var) < 4 * var_se, (t, x.var().item(), var.item())
            checked += 1
    assert checked == 5


def test_unknown_name():
    with pytest.raises(ValueError, match="valid names: linear, cosine, scaled_linear"):
        NoiseSchedule.from_name("sigmoid")
    with pytest.raises(ValueError, match="positive int"):
        NoiseSchedule.linear(0)


@pytest.mark.parametrize("bad_t", [-1, 1000, torch.tensor([0, 1000]), torch.tensor([-3, 5])])
def test_t_out_of_range(bad_t):
    schedule = NoiseSchedule.linear()
    x0 = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\]"):
        schedule.add_noise(x0, x0, bad_t)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        schedule.snr(bad_t)


def test_bad_shapes_and_types():
    schedule = NoiseSchedule.linear()
    x0 = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="noise must have the same shape as x0"):
        schedule.add_noise(x0, torch.zeros(2, 3, 4, 5), 5)
    with pytest.raises(ValueError, match=r"\(B,\) tensor with B = x0.shape\[0\] = 2"):
        schedule.add_noise(x0, x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer timesteps"):
        schedule.add_noise(x0, x0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="int or an integer tensor"):
        schedule.add_noise(x0, x0, 3.0)
    with pytest.raises(ValueError, match="floating-point tensor"):
        schedule.add_noise(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 1)


# ----- written against the mutants `make mutation` found surviving (mutation.md) ---------------------------
def test_defaults_and_dtypes_whatever_the_default_dtype():
    """T = 1000 by default; every table is float32, even under torch.set_default_dtype(torch.float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name in SCHEDULES:
            schedule = NoiseSchedule.from_name(name) if name != "linear" else NoiseSchedule.linear()
            assert schedule.num_train_timesteps == 1000, name
            assert {t.dtype for t in (schedule.betas, schedule.alphas, schedule.alphas_cumprod)} == {torch.float32}
            # computed in float32 as diffusers does (a float64 linspace rounds a third of the betas differently)
            torch.testing.assert_close(schedule.betas, diffusers_scheduler(name).betas, rtol=0, atol=0)
        assert NoiseSchedule.scaled_linear().num_train_timesteps == NoiseSchedule.cosine().num_train_timesteps == 1000
    finally:
        torch.set_default_dtype(previous)
    betas64 = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    assert NoiseSchedule.from_betas("custom", betas64).alphas_cumprod.dtype == torch.float32


def test_one_step_schedules_are_valid_and_fractional_counts_are_not():
    assert NoiseSchedule.linear(1).num_train_timesteps == 1
    for bad in (0, 2.5, True, "10"):
        with pytest.raises(ValueError, match="positive int"):
            NoiseSchedule.linear(bad)


def test_add_noise_keeps_the_data_dtype_exactly_and_accepts_one_dimensional_data():
    schedule = NoiseSchedule.linear()
    x0, noise = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)  # (B,): scalars
    t = torch.tensor([0, 10, 500, 999])
    a = schedule.alphas_cumprod[t].to(torch.float64)  # alpha_bar in the data's precision, as diffusers does
    assert torch.equal(schedule.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    assert schedule.add_noise(x0.bfloat16(), noise.bfloat16(), t).dtype == torch.bfloat16


def test_add_noise_and_snr_refuse_bad_t_with_clear_messages():
    schedule = NoiseSchedule.linear()
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t must be an int or a \(B,\) tensor"):
        schedule.add_noise(x0, x0, torch.zeros(2, 1, dtype=torch.long))  # (B, 1): one dimension too many
    with pytest.raises(ValueError, match="integer timesteps"):
        schedule.add_noise(x0, x0, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"noise must have the same shape as x0 \(2, 3\), got \(3,\)"):
        schedule.add_noise(x0, torch.zeros(3), 1)
    with pytest.raises(ValueError, match=r"got list"):
        schedule.add_noise(x0, [0.0, 0.0], 1)
    with pytest.raises(ValueError, match="batch dimension"):
        schedule.add_noise(torch.tensor(1.0), torch.tensor(1.0), 1)
