"""Chapter 2's check cells (one DDPM step, the whole sampling loop) accept right answers, in both of the forms the
papers write them, and catch the typical wrong ones with a hint that names the mistake."""
import pytest
import torch

from course_lib.exercises_denoising import GaussianEps, check_ddpm_step, check_sampling_loop
from course_lib.samplers import ddpm, make_timesteps
from course_lib.schedules import NoiseSchedule


def predict_x0(x_t, eps, ab):
    return (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5


def ddpm_step(x_t, eps, ab, ab_prev, z, *, variance="posterior", alpha_of=lambda ab, ab_prev: ab / ab_prev,
              std=True, noise=True):
    """A DDPM step with switches for the typical mistakes (the defaults are right)."""
    alpha = alpha_of(ab, ab_prev)
    beta = 1 - alpha
    x0 = predict_x0(x_t, eps, ab)
    mean = ab_prev**0.5 * beta / (1 - ab) * x0 + alpha**0.5 * (1 - ab_prev) / (1 - ab) * x_t
    var = (1 - ab_prev) / (1 - ab) * beta if variance == "posterior" else beta
    return mean + (var**0.5 if std else var) * z if noise else mean


def ddpm_step_algorithm_2(x_t, eps, ab, ab_prev, z):
    """DDPM's Algorithm 2 form: the same mean written with eps instead of x0."""
    alpha = ab / ab_prev
    beta = 1 - alpha
    return (x_t - beta / (1 - ab) ** 0.5 * eps) / alpha**0.5 + ((1 - ab_prev) / (1 - ab) * beta) ** 0.5 * z


def sampling_loop(eps_model, x_T, schedule, timesteps, generator, *, step=ddpm_step, prev_of=None, order=1,
                  draw=True):
    """A sampling loop with switches for the typical mistakes (the defaults are right)."""
    ts = [int(t) for t in timesteps][::order]
    x = x_T
    for i, t in enumerate(ts):
        ab = schedule.alphas_cumprod[t]
        if prev_of is not None:
            ab_prev = prev_of(schedule, ts, i)
        else:
            ab_prev = schedule.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = eps_model(x, torch.full((x.shape[0],), t))
        z = torch.randn(x.shape, generator=generator) if draw else torch.randn(x.shape)
        x = step(x, eps, ab, ab_prev, z)
    return x


# ----- one DDPM step --------------------------------------------------------------------------------------------

def test_right_ddpm_steps_pass(capsys):
    check_ddpm_step(ddpm_step)
    check_ddpm_step(ddpm_step_algorithm_2)
    check_ddpm_step(lambda x_t, eps, ab, ab_prev, z: ddpm_step(x_t, eps, float(ab), float(ab_prev), z))
    assert capsys.readouterr().out == "✓ the DDPM step is right\n" * 3


@pytest.mark.parametrize("wrong, hint", [
    (lambda *a: ddpm_step(*a, variance="beta"), "Wrong variance"),
    (lambda *a: ddpm_step(*a, std=False), "standard deviation"),
    (lambda *a: ddpm_step(*a, noise=False), "Add the noise"),
    (lambda *a: ddpm_step(*a, alpha_of=lambda ab, ab_prev: ab), "The step's own alpha_t"),
    (lambda x_t, eps, ab, ab_prev, z: ab_prev**0.5 * predict_x0(x_t, eps, ab) + (1 - ab_prev) ** 0.5 * eps,
     "That is the DDIM step"),
    (lambda *a: ddpm_step(*a) + 0.01, "posterior mean|mean ="),  # a wrong number somewhere: the formula
    (lambda x_t, eps, ab, ab_prev, z: ddpm_step(x_t, eps, ab, ab_prev, z)[0], "expected shape"),
    (lambda x_t, eps, ab, ab_prev, z: ddpm_step(x_t, eps, ab, ab_prev, z).tolist(), "expected a torch.Tensor"),
])
def test_wrong_ddpm_steps_fail_with_a_hint(wrong, hint, capsys):
    with pytest.raises(AssertionError, match=hint):
        check_ddpm_step(wrong)
    assert "✓" not in capsys.readouterr().out


def test_noise_at_the_last_step_is_caught():
    def noisy_end(x_t, eps, ab, ab_prev, z):
        out = ddpm_step(x_t, eps, ab, ab_prev, z)
        return out + 0.1 * z if ab_prev == 1 else out

    with pytest.raises(AssertionError, match="clean data.*no noise there"):
        check_ddpm_step(noisy_end)


def test_the_ddpm_step_checker_never_prints_the_answer(capsys):
    with pytest.raises(AssertionError) as info:
        check_ddpm_step(lambda *a: ddpm_step(*a, noise=False))
    assert "def " not in str(info.value) and "return" not in str(info.value)
    assert capsys.readouterr().out == ""


# ----- the sampling loop ----------------------------------------------------------------------------------------

def test_right_sampling_loops_pass(capsys):
    check_sampling_loop(sampling_loop)
    check_sampling_loop(lambda *a: sampling_loop(*a, step=ddpm_step_algorithm_2))

    def skips_the_last_draw(eps_model, x_T, schedule, timesteps, generator):  # the last step's noise is 0 anyway
        x = x_T
        for i, t in enumerate(timesteps):
            last = i + 1 == len(timesteps)
            ab_prev = torch.tensor(1.0) if last else schedule.alphas_cumprod[timesteps[i + 1]]
            z = torch.zeros_like(x) if last else torch.randn(x.shape, generator=generator)
            x = ddpm_step(x, eps_model(x, t), schedule.alphas_cumprod[t], ab_prev, z)  # t as a 0-dim tensor
        return x

    check_sampling_loop(skips_the_last_draw)
    assert capsys.readouterr().out == "✓ your sampling loop reproduces course_lib.samplers.ddpm\n" * 3


def _prev_t_minus_1(schedule, ts, i):
    return schedule.alphas_cumprod[ts[i] - 1] if ts[i] > 0 else torch.tensor(1.0)


def _prev_last_is_alpha_bar_0(schedule, ts, i):
    return schedule.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else schedule.alphas_cumprod[0]


@pytest.mark.parametrize("wrong, hint", [
    (lambda *a: sampling_loop(*a, prev_of=_prev_t_minus_1), "Off by one in the alphas"),
    (lambda *a: sampling_loop(*a, prev_of=_prev_last_is_alpha_bar_0), "After the last timestep the sample is clean"),
    (lambda *a: sampling_loop(*a, step=lambda *s: ddpm_step(*s, noise=False)), "No noise was added"),
    (lambda *a: sampling_loop(*a, draw=False), "draw z\nfrom `generator`|from `generator`"),
    (lambda *a: sampling_loop(*a, order=-1), "descending"),
    (lambda *a: sampling_loop(*a, step=lambda *s: ddpm_step(*s, variance="beta")), "check_ddpm_step"),
    (lambda eps_model, x_T, schedule, timesteps, generator: x_T, "eps_model was called 0 times"),
    (lambda eps_model, x_T, schedule, timesteps, generator:
     sampling_loop(eps_model, x_T, schedule, make_timesteps(schedule, 1000), generator), "called 1000 times"),
])
def test_wrong_sampling_loops_fail_with_a_hint(wrong, hint, capsys):
    with pytest.raises(AssertionError, match=hint):
        check_sampling_loop(wrong)
    assert "✓" not in capsys.readouterr().out


def test_the_checks_eps_model_is_the_exact_denoiser_of_its_gaussian_data():
    """Sampling N(mu, 0.5^2) data with the library's DDPM and many steps gives back that mean and spread."""
    schedule = NoiseSchedule.linear()
    model = GaussianEps(schedule)
    x_T = torch.randn(4000, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x0 = ddpm(model, x_T, schedule, make_timesteps(schedule, 100), generator=torch.Generator().manual_seed(1))
    assert (x0.mean(0) - model.mu).abs().max() < 0.05
    assert (x0.std(0) - 0.5).abs().max() < 0.05
    assert model.calls == 100
