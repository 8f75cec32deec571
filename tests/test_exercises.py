"""The notebooks' check cells must accept right answers and catch the typical wrong ones."""
import pytest
import torch

from course_lib.exercises import check_add_noise, check_alphas_cumprod, check_first_t
from course_lib.schedules import NoiseSchedule


def test_add_noise_checker():
    check_add_noise(lambda x0, eps, ab: ab**0.5 * x0 + (1 - ab) ** 0.5 * eps)
    wrong = {
        "no square roots": lambda x0, eps, ab: ab * x0 + (1 - ab) * eps,
        "swapped": lambda x0, eps, ab: (1 - ab) ** 0.5 * x0 + ab**0.5 * eps,
        "variance not preserved": lambda x0, eps, ab: x0 + (1 - ab) ** 0.5 * eps,
        "returns a float": lambda x0, eps, ab: 0.0,
    }
    for name, fn in wrong.items():
        with pytest.raises(AssertionError):
            check_add_noise(fn)


def test_alphas_cumprod_checker():
    check_alphas_cumprod(lambda betas: torch.cumprod(1 - betas, 0))
    for fn in (lambda b: torch.cumprod(b, 0), lambda b: 1 - b, lambda b: torch.cumsum(1 - b, 0),
               lambda b: torch.cumprod(1 - b, 0)[:-1]):
        with pytest.raises(AssertionError):
            check_alphas_cumprod(fn)


def test_first_t_checker():
    s = NoiseSchedule.cosine()
    right = int(torch.nonzero(s.snr(torch.arange(1000)) < 0.1)[0])
    check_first_t(right, s, 0.1)
    for wrong in (right - 1, right + 1, float(right), 0):
        with pytest.raises(AssertionError):
            check_first_t(wrong, s, 0.1)


def test_predict_x0_checker():
    from course_lib.exercises import check_predict_x0

    check_predict_x0(lambda x_t, eps, ab: (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5)
    for fn in (lambda x_t, eps, ab: x_t - eps,
               lambda x_t, eps, ab: (x_t - (1 - ab) * eps) / ab,
               lambda x_t, eps, ab: (x_t + (1 - ab) ** 0.5 * eps) / ab**0.5):
        with pytest.raises(AssertionError):
            check_predict_x0(fn)


def test_ddim_step_checker():
    from course_lib.exercises import check_ddim_step

    def x0_of(x_t, eps, ab):
        return (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5

    check_ddim_step(lambda x_t, eps, ab, ab_prev: ab_prev**0.5 * x0_of(x_t, eps, ab) + (1 - ab_prev) ** 0.5 * eps)
    wrong = (
        lambda x_t, eps, ab, ab_prev: ab**0.5 * x0_of(x_t, eps, ab) + (1 - ab) ** 0.5 * eps,  # stays at t
        lambda x_t, eps, ab, ab_prev: ab_prev**0.5 * x0_of(x_t, eps, ab),  # drops the eps direction
        lambda x_t, eps, ab, ab_prev: x_t - (1 - ab_prev) ** 0.5 * eps,  # ad-hoc subtraction
    )
    for fn in wrong:
        with pytest.raises(AssertionError):
            check_ddim_step(fn)
