"""Check cells for chapter 8's exercises (autoregression vs diffusion), in the style of course_lib.exercises:
quiet when right, an AssertionError with a hint when wrong, never the reference answer itself."""
from __future__ import annotations

from typing import Callable

import torch


def check_causal_mask(fn: Callable) -> None:
    """`fn(n)` must return the (n, n) bool mask of a causal transformer: True where position i may attend to j."""
    for n in (4, 9, 1):
        got = fn(n)
        if not isinstance(got, torch.Tensor) or got.dtype != torch.bool:
            raise AssertionError(f"n={n}: expected a bool torch.Tensor (True = may attend), got "
                                 f"{type(got).__name__} {getattr(got, 'dtype', '')}")
        if got.shape != (n, n):
            raise AssertionError(f"n={n}: expected shape ({n}, {n}), got {tuple(got.shape)}")
        want = torch.ones(n, n, dtype=torch.bool).tril()
        if n > 1 and torch.equal(got, want.T):
            raise AssertionError("rows are the positions that look (queries), columns the ones looked at: your mask "
                                 "lets position 0 see every later token. Transpose it (tril, not triu).")
        if n > 1 and torch.equal(got, want & ~torch.eye(n, dtype=torch.bool)):
            raise AssertionError("a position may attend to itself: its input is the token *before* it, which it "
                                 "needs. Keep the diagonal.")
        if not torch.equal(got, want):
            raise AssertionError(f"n={n}: position i must see exactly positions 0..i. Row 1 of yours: "
                                 f"{got[min(1, n - 1)].int().tolist()}")
    print("✓ the causal mask is right: every position sees itself and everything before it")


def check_sequential_calls(answers: dict) -> None:
    """`answers` maps each method to the number of model calls that must run one after another for ONE image."""
    want = {"pixel AR, 32x32": 32 * 32, "token AR, 8x8 codes": 8 * 8, "diffusion, 20 steps": 20,
            "diffusion, 20 steps with CFG": 20}
    hints = {"pixel AR, 32x32": "one call per pixel: each pixel's colour is one token",
             "token AR, 8x8 codes": "one call per code of the 8x8 grid",
             "diffusion, 20 steps": "one network call per step (DDIM)",
             "diffusion, 20 steps with CFG": "the conditional and unconditional predictions go through the network "
                                             "together, as one batch of 2: they do not wait for each other"}
    missing = sorted(set(want) - set(answers))
    if missing:
        raise AssertionError(f"answer every method; missing: {missing}")
    for method, value in want.items():
        if answers[method] != value:
            raise AssertionError(f"{method}: {answers[method]} is not it. Hint: {hints[method]}.")
    print("✓ right: 1024 calls in a row for pixels, 64 for codes, 20 for diffusion (with or without guidance)")
