"""Check cells for chapter 3's exercises (classifier-free guidance by code and by hand, the best scale), in the style
of course_lib.exercises: quiet when right, an AssertionError with a hint when wrong, never the reference answer."""
from __future__ import annotations

from typing import Callable

import torch

from .guidance import cfg


def _judge(got: torch.Tensor, eps_uncond, eps_cond, s: float, atol: float, not_yet: str) -> None:
    """AssertionError naming the usual mistake `got` makes at scale s, or `not_yet` if it is wrong otherwise."""
    if torch.allclose(got, cfg(eps_uncond, eps_cond, s + 1), atol=atol):
        raise AssertionError(f"s={s:g}: that is Ho & Salimans' w = {s:g}; here s = 1 must give eps_cond back "
                             f"(w = s - 1)")
    if torch.allclose(got, cfg(eps_cond, eps_uncond, s), atol=atol):
        raise AssertionError(f"s={s:g}: swapped, start from eps_uncond and move towards eps_cond")
    if not torch.allclose(got, cfg(eps_uncond, eps_cond, s), atol=atol):
        raise AssertionError(not_yet)


def check_cfg(fn: Callable) -> None:
    """`fn(eps_uncond, eps_cond, guidance_scale)` must be classifier-free guidance with diffusers' guidance_scale:
    1 returns eps_cond, 0 returns eps_uncond."""
    g = torch.Generator().manual_seed(0)
    eps_uncond, eps_cond = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for s in (3.0, 7.5, 0.0, 1.0):  # 3 and 7.5 first: there the two usual mistakes give different numbers
        got = fn(eps_uncond, eps_cond, s)
        if not isinstance(got, torch.Tensor) or got.shape != eps_uncond.shape:
            raise AssertionError(f"s={s:g}: return a tensor shaped like the predictions {tuple(eps_uncond.shape)}")
        _judge(got, eps_uncond, eps_cond, s, 1e-6, f"s={s:g}: not classifier-free guidance yet")
    print("✓ my_cfg is classifier-free guidance with diffusers' guidance_scale")


def check_cfg_by_hand(at_s0, at_s1, at_s3) -> None:
    """The guided prediction for one pixel with eps_uncond = (0.2, -0.4, 1.0) and eps_cond = (0.5, 0.1, 1.0) at
    s = 0, 1 and 3, worked out by hand."""
    eps_uncond, eps_cond = torch.tensor([0.2, -0.4, 1.0]), torch.tensor([0.5, 0.1, 1.0])
    for s, answer in ((3, at_s3), (0, at_s0), (1, at_s1)):  # s = 3 first: it tells the usual mistakes apart
        try:
            got = torch.tensor(answer, dtype=torch.float32)
        except (TypeError, ValueError):
            raise AssertionError(f"s={s}: give three numbers, one per channel, e.g. [0.1, 0.2, 0.3]") from None
        if got.shape != (3,):
            raise AssertionError(f"s={s}: give three numbers, one per channel")
        _judge(got, eps_uncond, eps_cond, s, 1e-3, f"s={s}: {list(answer)} is not right yet")
    print("✓ s = 0 gives eps_uncond, s = 1 gives eps_cond, and guidance leaves a channel alone where both agree")


def check_best_scale(guess, scales, accuracy, within: float = 0.1) -> None:
    """`guess` (made before the sweep) against the measured whole-prompt accuracy per scale: any scale within
    `within` of the best counts, since with a few dozen images closer differences are noise."""
    measured = dict(zip(scales, accuracy))
    if guess not in measured:
        raise AssertionError(f"pick one of the sweep's scales: {list(measured)}")
    best = max(measured, key=measured.get)
    if measured[guess] < measured[best] - within:
        raise AssertionError(f"s={guess}: whole prompt right in {measured[guess]:.0%} of the images; the sweep's "
                             f"best is {measured[best]:.0%}. Look at the curves: where does accuracy peak?")
    print(f"✓ s={guess}: whole prompt right in {measured[guess]:.0%} of the images (best: s={best}, "
          f"{measured[best]:.0%})")
