"""Check cells for chapter 4's exercises (the VAE's compression, the latent scaling factor, the decode's share of
the work), in the style of course_lib.exercises: quiet when right apart from one ✓ line, an AssertionError with a
hint when wrong, never the reference answer itself.

Every reference is computed independently of the notebook: closed-form ratios for the compression, checker-made
latents for the scaling, and course_lib.metrics' FLOP counter for the decode's share.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .exercises import _close
from .metrics import decode_gflops, gflops_per_step

LATENT_MODEL = "shapes64-latent-t2i"  # the model of exercise 3
SD_SCALING_FACTOR = 0.18215  # Stable Diffusion 1.x's scaling_factor: a second factor the answer must not hard-code


def _number(got, what: str) -> float:
    """`got` as a float: a Python number or a one-element tensor (bools and strings are refused)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        return float(got)
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{what}: return one number, got {type(got).__name__}")
    return float(got)


def check_compression(fn: Callable) -> None:
    """`fn(image_shape (C, H, W), down_factor, latent_channels)` -> how many times fewer numbers the latent holds.

    The cases are closed-form: Stable Diffusion at 512 and 768, a 16-channel latent, our 64x64 VAE's shape with
    other factors, and a case whose answer is not a whole number.
    """
    cases = [((3, 512, 512), 8, 4, 48.0), ((3, 768, 768), 8, 4, 48.0), ((3, 1024, 1024), 8, 16, 12.0),
             ((3, 64, 64), 4, 3, 16.0), ((1, 28, 28), 7, 1, 49.0), ((3, 32, 48), 4, 32, 1.5)]
    for shape, f, c, want in cases:
        where = f"image {shape}, down_factor {f}, {c} latent channels"
        got = _number(fn(shape, f, c), where)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        C, H, W = shape
        if c != C and math.isclose(got, want * c / C):
            raise AssertionError(f"{where}: {got:g} ignores the channels (the image has {C}, the latent {c})")
        if math.isclose(got, want / f):
            raise AssertionError(f"{where}: {got:g}; down_factor shrinks height AND width: f**2 per channel")
        if math.isclose(got, 1.0 / want):
            raise AssertionError(f"{where}: {got:g} is upside down: image numbers / latent numbers")
        if math.isclose(got, math.floor(want)):
            raise AssertionError(f"{where}: {got:g} was rounded down; divide with / (not //): a ratio need not be "
                                 "a whole number")
        if math.isclose(got, c * (H // f) * (W // f)) or math.isclose(got, C * H * W):
            raise AssertionError(f"{where}: {got:g} counts numbers; return the ratio of the two counts")
        raise AssertionError(f"{where}: {got:g} is not it. Count the numbers in the image and in the latent "
                             "(channels x height x width each), then divide")
    print("✓ compression is right: Stable Diffusion's latent holds 48 times fewer numbers than its image")


def check_scaling(to_diffusion: Callable, from_diffusion: Callable, scaling_factor: float) -> None:
    """`to_diffusion(z, s)`: raw VAE latents -> what the denoiser sees; `from_diffusion(z, s)`: back, for the decoder.

    Tried on latents made here, for the VAE's `scaling_factor` and for Stable Diffusion's 0.18215. Like any real
    batch, their mean is not 0 and their std not exactly 1 / s, so an answer that standardises the batch by its
    own statistics differs from z * s. from_diffusion must undo to_diffusion exactly.
    """
    g = torch.Generator().manual_seed(0)
    for s in (float(scaling_factor), SD_SCALING_FACTOR):
        z = (1.3 * torch.randn(4, 4, 8, 8, generator=g) + 0.2) / s  # a batch: mean 0.2 / s, std about 1.3 / s
        got = to_diffusion(z.clone(), s)
        if not isinstance(got, torch.Tensor) or got.shape != z.shape:
            raise AssertionError(f"to_diffusion must return a tensor shaped like z {tuple(z.shape)}")
        if torch.allclose(got, z / s):
            raise AssertionError("to_diffusion divides; scaling_factor is 1 / std(z), so MULTIPLY to get unit "
                                 "variance")
        if torch.allclose(got, z):
            raise AssertionError("to_diffusion returns z unchanged: multiply by scaling_factor")
        if not torch.allclose(got, z * s, atol=1e-5) and abs(got.std().item() - 1) < 1e-3:
            raise AssertionError(f"s={s:g}: you standardised the batch by its own statistics; use the stored "
                                 "factor instead (it is the same for every latent). At sampling time there is no "
                                 "batch of real latents to measure")
        _close(got, z * s, f"to_diffusion(z, s={s:g})", "multiply by scaling_factor (and nothing else)")
        back = from_diffusion(got.clone(), s)
        if not isinstance(back, torch.Tensor) or back.shape != z.shape:
            raise AssertionError("from_diffusion must return a tensor shaped like its input")
        if torch.allclose(back, got * s):
            raise AssertionError("from_diffusion multiplies again; undo the scaling: divide by scaling_factor")
        _close(back, z, f"from_diffusion(to_diffusion(z, s), s={s:g})",
               "the round trip must give z back: divide by scaling_factor")
    print("✓ scaling is right: unit-variance latents in, the VAE's own latents out")


def check_decode_share(answer, steps: int = 20, model: str = LATENT_MODEL, directory=None) -> None:
    """`answer` must be the VAE decode's fraction of a `steps`-step guided generation's FLOPs for one image.

    The reference counts FLOPs itself with course_lib.metrics (one step: a network call on the conditional and
    unconditional inputs together; one decode at the end) and does not read the notebook's table.
    """
    got = _number(answer, "decode_share")
    step, decode = gflops_per_step(model, directory=directory), decode_gflops(model, directory=directory)
    want = decode / (steps * step + decode)
    if math.isclose(got, want, rel_tol=1e-3):
        print(f"✓ the decode is {got:.0%} of a {steps}-step generation's work")
        return
    if math.isclose(got, 100 * want, rel_tol=1e-3):
        raise AssertionError(f"{got:g} is a percentage; give the fraction (between 0 and 1)")
    if got == 0:
        raise AssertionError("0 is the pixel model's share (it has no decode): use the latent model's row, lat")
    if math.isclose(got, decode / (steps * step), rel_tol=1e-3):
        raise AssertionError("the decode is part of the generation: include it in the total as well")
    if math.isclose(got, 1 - want, rel_tol=1e-3):
        raise AssertionError("that is the steps' share; the question asks for the decode's")
    if math.isclose(got, decode / (2 * steps * step + decode), rel_tol=1e-3):
        raise AssertionError("the table's GFLOPs per step already count both guided passes (conditional and "
                             "unconditional): do not double them")
    if math.isclose(got, decode / (step + decode), rel_tol=1e-3) or math.isclose(got, decode / step, rel_tol=1e-3):
        raise AssertionError(f"a generation runs all {steps} steps: multiply the work per step by {steps}")
    if not 0 <= got <= 1:
        raise AssertionError(f"{got:g} is not a share: the decode's work divided by the whole generation's, "
                             "between 0 and 1")
    raise AssertionError(f"{got:.4g} is off: the decode's GFLOPs over those of the whole generation ({steps} steps "
                         "and the decode), all from the latent model's row")
