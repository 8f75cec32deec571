"""What the measurements test on: prompts with the attributes they ask for, and real renders to compare with.

`fresh_prompts` draws attribute combinations the training set also had (new noise, same kind of caption);
`held_out_prompts` names the (shape, color) pairs the text-to-image models never saw. `reference_renders` draws
real images of the same attributes, for the Fréchet distance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from course_lib.data import BACKGROUNDS, COLORS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, TEMPLATES, Attributes, \
    Jitter, caption, random_attributes, render
from .classifier import PROMPT_KEYS

TRAINING_SEED = 0  # the seed of the datasets the shipped checkpoints were trained on (recipes.py)
EVAL_SEED = 2025  # attribute draws for test prompts: any seed but TRAINING_SEED
REFERENCE_SEED = 4242  # jitter (and free attributes) of the real renders that generated images are compared with
DEFAULT_TEMPLATE = 3  # "a {color} {shape} ({size}) {where} on a {background} background": names all five attributes
_ATTRIBUTE_NAMES = tuple(f.name for f in dataclasses.fields(Attributes))  # shape, color, size, position, background


@dataclass(frozen=True)
class Prompt:
    """A test prompt: the caption the model reads and the attributes the classifier checks in its images."""

    text: str  # e.g. "a red star (small) on the left on a black background"
    attributes: Attributes  # what the text asks for
    keys: tuple[str, ...] = PROMPT_KEYS  # the attributes the text names; the others are free (not scored)


def make_prompt(attributes, template: int = DEFAULT_TEMPLATE) -> Prompt:
    """The Prompt for one Attributes (or dict) written with caption template `template` (index into TEMPLATES)."""
    attributes = attributes if isinstance(attributes, Attributes) else Attributes(**attributes)
    text = caption(attributes, template)  # ValueError for a bad template
    names_background = "{background}" in TEMPLATES[template]
    return Prompt(text, attributes, PROMPT_KEYS + ("background",) if names_background else PROMPT_KEYS)


def fresh_prompts(n: int = 8, *, seed: int = EVAL_SEED, template: int = DEFAULT_TEMPLATE) -> list[Prompt]:
    """n distinct attribute combinations drawn with a seed the training data never used, held-out pairs excluded.

    "Fresh" means new draws, not new combinations: the 20 000 training images cover all 720 allowed combinations,
    and with the default template the text is word for word a training caption; what is new is the noise the
    images start from. Only `held_out_prompts` name combinations the text-to-image model never saw.
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    if seed == TRAINING_SEED:
        raise ValueError(f"seed {seed} drew the training data; pick another one (default {EVAL_SEED})")
    per_pair = len(SIZES) * len(POSITIONS) * len(BACKGROUNDS)  # combinations for one (shape, color) pair
    available = (len(SHAPES) * len(COLORS) - len(HELD_OUT_PAIRS)) * per_pair  # 720
    if n > available:
        raise ValueError(f"only {available} distinct combinations avoid the held-out pairs; ask for fewer than {n}")
    rng, seen, prompts = np.random.default_rng(seed), set(), []
    while len(prompts) < n:
        a = random_attributes(rng)
        if (a.shape, a.color) not in HELD_OUT_PAIRS and a not in seen:
            seen.add(a)
            prompts.append(make_prompt(a, template))
    return prompts


def held_out_prompts(*, seed: int = EVAL_SEED, template: int = DEFAULT_TEMPLATE) -> list[Prompt]:
    """One prompt per (shape, color) pair in HELD_OUT_PAIRS, with size, position and background drawn at random."""
    _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    prompts = []
    for shape, color in HELD_OUT_PAIRS:
        a = random_attributes(rng)
        prompts.append(make_prompt(dataclasses.replace(a, shape=shape, color=color), template))
    return prompts


def reference_renders(prompts, n_per_prompt: int, *, size: int = 32, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """Real renders to compare generated images with: n_per_prompt per prompt, in prompt order, (P*n, 3, size, size).

    Each render gets its own random jitter; attributes a prompt leaves free (say, the background) are redrawn.
    """
    prompts = _check_prompts(prompts)
    _check_int("n_per_prompt", n_per_prompt, 1)
    rng, images = np.random.default_rng(seed), []
    for prompt in prompts:
        for _ in range(n_per_prompt):
            drawn = random_attributes(rng)
            free = {k: getattr(drawn, k) for k in _ATTRIBUTE_NAMES if k not in prompt.keys}
            images.append(render(dataclasses.replace(prompt.attributes, **free), size, jitter=Jitter.random(rng)))
    return torch.stack(images)  # (P * n_per_prompt, 3, size, size)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_prompts(prompts) -> list[Prompt]:
    """Prompt objects, or (text, Attributes / dict) pairs turned into Prompts scored on PROMPT_KEYS."""
    if isinstance(prompts, (str, Prompt)) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of Prompt (see fresh_prompts) or (text, Attributes) "
                         f"pairs; got {type(prompts).__name__} {prompts!r:.80}")
    out = []
    for p in prompts:
        if isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str):
            p = Prompt(p[0], p[1] if isinstance(p[1], Attributes) else Attributes(**p[1]))
        if not isinstance(p, Prompt):
            raise ValueError(f"each prompt must be a Prompt or a (text, Attributes) pair, got {p!r:.80}")
        out.append(p)
    return out
