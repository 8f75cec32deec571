"""Chapter 4's check cells accept the right answers and catch the typical wrong ones, naming the mistake."""
import pytest
import torch

from course_lib.exercises_latent import check_compression, check_decode_share, check_scaling
from course_lib.metrics import decode_gflops, gflops_per_step

OUR_SCALING_FACTOR = 0.5687  # about shapes64-vae's; the checker also tries Stable Diffusion's 0.18215


def compression(shape, f, c):
    C, H, W = shape
    return C * H * W / (c * (H // f) * (W // f))


def test_check_compression_accepts_the_answer_and_says_so(capsys):
    check_compression(compression)
    check_compression(lambda shape, f, c: torch.tensor(shape[0] * f**2 / c))  # the closed form, as a tensor
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("wrong, hint", [
    (lambda s, f, c: s[1] * s[2] / ((s[1] // f) * (s[2] // f)), "ignores the channels"),
    (lambda s, f, c: s[0] * s[1] * s[2] / (c * s[1] * s[2] / f), "AND width"),
    (lambda s, f, c: 1 / compression(s, f, c), "upside down"),
    (lambda s, f, c: s[0] * s[1] * s[2] // (c * (s[1] // f) * (s[2] // f)), r"rounded down.*//"),
    (lambda s, f, c: c * (s[1] // f) * (s[2] // f), "counts numbers"),
    (lambda s, f, c: 48, "is not it"),
    (lambda s, f, c: "48", "one number"),
    (lambda s, f, c: True, "one number"),
])
def test_check_compression_names_the_usual_mistakes(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_compression(wrong)


def test_check_scaling_accepts_the_answer(capsys):
    check_scaling(lambda z, s: z * s, lambda z, s: z / s, OUR_SCALING_FACTOR)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("to_diffusion, from_diffusion, hint", [
    (lambda z, s: z / s, lambda z, s: z * s, "MULTIPLY"),
    (lambda z, s: z, lambda z, s: z, "unchanged"),
    (lambda z, s: z * s, lambda z, s: z * s, "divide by scaling_factor"),
    (lambda z, s: z * s, lambda z, s: z, "round trip"),
    (lambda z, s: z / z.std(), lambda z, s: z / s, "standardised the batch"),
    (lambda z, s: (z - z.mean()) / z.std(), lambda z, s: z / s, "standardised the batch"),
    (lambda z, s: z * OUR_SCALING_FACTOR, lambda z, s: z / OUR_SCALING_FACTOR, r"s=0\.18215"),  # hard-coded factor
    (lambda z, s: (z * s)[:1], lambda z, s: z / s, "shaped like z"),
])
def test_check_scaling_names_the_usual_mistakes(to_diffusion, from_diffusion, hint):
    with pytest.raises(AssertionError, match=hint):
        check_scaling(to_diffusion, from_diffusion, OUR_SCALING_FACTOR)


@pytest.fixture(scope="module")
def latent_cost():
    """The latent model's GFLOPs per guided step and per decode, as the notebook's table reports them."""
    return gflops_per_step("shapes64-latent-t2i"), decode_gflops("shapes64-latent-t2i")


def test_check_decode_share_accepts_the_answer_from_the_table(latent_cost, capsys):
    step, decode = latent_cost
    check_decode_share(decode / (20 * step + decode))
    check_decode_share(torch.tensor(decode / (20 * step + decode)))
    assert capsys.readouterr().out.startswith("✓")
    check_decode_share(decode / (10 * step + decode), steps=10)


@pytest.mark.parametrize("wrong, hint", [
    (lambda step, decode: decode / (20 * step), "include it in the total"),
    (lambda step, decode: 100 * decode / (20 * step + decode), "percentage"),
    (lambda step, decode: 20 * step / (20 * step + decode), "steps' share"),
    (lambda step, decode: decode / (40 * step + decode), "already count both guided passes"),
    (lambda step, decode: decode / (step + decode), "multiply the work per step by 20"),
    (lambda step, decode: decode / step, "multiply the work per step by 20"),
    (lambda step, decode: 0.0, "pixel model"),
    (lambda step, decode: 0.5, "is off"),
    (lambda step, decode: -0.1, "not a share"),
    (lambda step, decode: "9%", "one number"),
])
def test_check_decode_share_names_the_usual_mistakes(latent_cost, wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_decode_share(wrong(*latent_cost))


def test_check_decode_share_does_not_trust_the_numbers_it_is_given(latent_cost):
    """A share computed from a wrong table (here: the decode counted at half its FLOPs) fails: the checker counts."""
    step, decode = latent_cost
    with pytest.raises(AssertionError):
        check_decode_share((decode / 2) / (20 * step + decode / 2))
