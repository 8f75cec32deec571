"""Measure what the guidance scale and the step count do, instead of eyeballing a few samples.

`cfg_sweep` generates the same prompts with the same seeds at several guidance scales, so only the scale changes
between rows, and scores every batch with the shapes classifier: prompt accuracy, accuracy per attribute, Fréchet
distance to real renders of the same attributes, and saturation. `steps_sweep` does the same for chapter 2's
claim (few steps are grainy, many are clean) on an unconditional model. `fresh_prompts` and `held_out_prompts`
pick what to test on. All the math lives in `metrics`, `guidance` and `samplers`; this module only loops.

From a shell (prints the table; the notebooks run smaller versions of the same sweeps):

    python -m course_lib.evaluation cfg --prompts 24 --per-prompt 8 --steps 20
    python -m course_lib.evaluation steps --n 256
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

import course_lib
from course_lib import generate as pipeline
from course_lib.data import BACKGROUNDS, COLORS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, TEMPLATES, Attributes, \
    Jitter, ShapesDataset, caption, random_attributes, render
from course_lib.metrics import PROMPT_KEYS, attribute_accuracy, frechet_distance, graininess, load_classifier, \
    prompt_accuracy, saturation
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError
from course_lib.samplers import get_sampler, make_timesteps

CFG_SCALES = (0, 1, 2, 3, 5, 7, 10, 12, 15, 20)  # chapter 3's sweep (diffusers' convention: 1 = no guidance)
TRAINING_SEED = 0  # the seed of the datasets the shipped checkpoints were trained on (recipes.py)
EVAL_SEED = 2025  # attribute draws for test prompts: any seed but TRAINING_SEED
REFERENCE_SEED = 4242  # jitter (and free attributes) of the real renders that generated images are compared with
DEFAULT_TEMPLATE = 3  # "a {color} {shape} ({size}) {where} on a {background} background": names all five attributes
UNCONDITIONAL_MODEL = "shapes32-unet"
_ATTRIBUTE_NAMES = tuple(f.name for f in dataclasses.fields(Attributes))  # shape, color, size, position, background


# ----- prompts -------------------------------------------------------------------------------------------------
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


# ----- sweeps --------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """A measured sweep: one row of numbers per setting, and the images behind each row."""

    rows: list[dict]  # one flat dict per setting: the setting (guidance_scale, or sampler and steps), then metrics
    images: list[torch.Tensor]  # images[i]: the samples scored in rows[i], (N, C, H, W) on the CPU
    baseline: dict = field(default_factory=dict)  # the same metrics for a second set of real renders: the floor

    def column(self, key: str) -> list:
        """One metric (or setting) across all rows, e.g. sweep.column("prompt_accuracy")."""
        if not self.rows or key not in self.rows[0]:
            raise KeyError(f"no column {key!r}; columns: {', '.join(self.rows[0]) if self.rows else 'none'}")
        return [row[key] for row in self.rows]

    def index(self, **setting) -> int:
        """Position of the one row matching the setting, e.g. sweep.index(guidance_scale=7)."""
        hits = [i for i, row in enumerate(self.rows) if all(row.get(k) == v for k, v in setting.items())]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows match {setting}; settings in this sweep: "
                           f"{[{k: r[k] for k in setting if k in r} for r in self.rows]}")
        return hits[0]

    def row(self, **setting) -> dict:
        """The row of one setting, e.g. sweep.row(sampler="ddim", steps=5)."""
        return self.rows[self.index(**setting)]

    def table(self, columns=None) -> str:
        """The rows as fixed-width text (all columns, or the ones named), then the real-renders baseline."""
        columns = list(columns) if columns is not None else (list(self.rows[0]) if self.rows else [])
        for c in columns:
            self.column(c)  # KeyError naming the valid columns
        width = {c: max(len(c), 7) for c in columns}
        lines = ["  ".join(c.rjust(width[c]) for c in columns)]
        for row in self.rows:
            lines.append("  ".join((f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])).rjust(width[c])
                                   for c in columns))
        baseline = {k: v for k, v in self.baseline.items() if k in columns}
        if baseline:
            lines.append("real renders vs real renders: " + ", ".join(f"{k} {v:.3f}" for k, v in baseline.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def score(images: torch.Tensor, prompts, n_per_prompt: int, classifier, reference: torch.Tensor) -> dict:
    """The metrics of one batch generated prompt by prompt (n_per_prompt images each, in prompt order).

    prompt_accuracy: share of images showing everything their prompt names; <key>_accuracy: per attribute, over
    the prompts that name it; frechet_distance: to `reference` in the classifier's feature space; saturation.
    """
    prompts = _check_prompts(prompts)
    if images.shape[0] != len(prompts) * n_per_prompt or reference.shape[0] != images.shape[0]:
        raise ValueError(f"expected {len(prompts)} prompts x {n_per_prompt} images, and as many reference images; "
                         f"got {images.shape[0]} images and {reference.shape[0]} reference images")
    exact, per_key = [], {}
    for i, prompt in enumerate(prompts):
        batch = images[i * n_per_prompt:(i + 1) * n_per_prompt]  # this prompt's images
        exact.append(prompt_accuracy(batch, prompt.attributes, classifier, keys=prompt.keys))
        for key, value in attribute_accuracy(batch, prompt.attributes, classifier, keys=prompt.keys).items():
            per_key.setdefault(key, []).append(value)
    row = {"prompt_accuracy": float(np.mean(exact))}
    row.update({f"{key}_accuracy": float(np.mean(values)) for key, values in per_key.items()})
    row["frechet_distance"] = frechet_distance(images, reference, classifier)
    row.update(saturation(images))
    return row


def cfg_sweep(scales=CFG_SCALES, prompts=None, *, steps: int = 15, n_per_prompt: int = 3, seed: int = 0,
              sampler: str = "ddim", model=pipeline.DEFAULT_MODEL, directory=None, classifier=None, device=None,
              progress: bool = False) -> Sweep:
    """Generate every prompt at every guidance scale and score each scale's images (rows in `scales` order).

    prompts       Prompt objects (default `fresh_prompts()`), or (text, Attributes) pairs (scored on PROMPT_KEYS)
    seed          prompt i is generated with seed + i at every scale: only the scale differs between rows
    model         a text-to-image checkpoint name (in `directory`) or a loaded Pretrained
    classifier    scores the images (default: the shipped shapes-classifier)
    The baseline is a second set of real renders of the same prompts (another jitter seed), scored the same way.
    """
    scales = _check_scales(scales)
    prompts = _check_prompts(fresh_prompts() if prompts is None else prompts)
    _check_int("n_per_prompt", n_per_prompt, 1)
    _check_int("seed", seed, 0)
    if len(prompts) * n_per_prompt < 2:
        raise ValueError("need at least 2 images per scale for a Fréchet distance (more prompts or n_per_prompt)")
    p = pipeline.load_checkpoint(model, device, directory)
    device = course_lib.device_of(p.model)
    classifier = classifier if classifier is not None else load_classifier(device=device)
    size = pipeline.image_shape(p)[-1]
    reference = reference_renders(prompts, n_per_prompt, size=size)
    second = reference_renders(prompts, n_per_prompt, size=size, seed=REFERENCE_SEED + 1)
    sweep = Sweep([], [], baseline=score(second, prompts, n_per_prompt, classifier, reference))
    for s in _progress(scales, progress, "guidance scales"):
        images = torch.cat([pipeline.generate(prompt.text, steps=steps, guidance_scale=s, sampler=sampler,
                                              seed=seed + i, n=n_per_prompt, model=p, directory=directory).images
                            for i, prompt in enumerate(prompts)])  # (P * n, C, H, W), prompt by prompt
        sweep.rows.append({"guidance_scale": s, **score(images, prompts, n_per_prompt, classifier, reference)})
        sweep.images.append(images)
    return sweep


def steps_sweep(steps=(5, 10, 20, 50), samplers=("ddim", "ddpm"), *, n: int = 64, seed: int = 0,
                model=UNCONDITIONAL_MODEL, directory=None, classifier=None, device=None,
                progress: bool = False) -> Sweep:
    """Chapter 2's claim re-measured on an unconditional model: Fréchet distance and graininess per sampler and steps.

    Every run starts from the same x_T (seed) and DDPM draws its noise from a generator seeded with seed + 1, so
    only the sampler and the step count differ between rows. Both metrics compare with n real renders
    (ShapesDataset, seed REFERENCE_SEED); graininess is ~1 for clean samples, > 1 grainy, < 1 blurry.
    """
    steps = _check_steps_list(steps)
    samplers = (samplers,) if isinstance(samplers, str) else tuple(samplers)
    if not samplers:
        raise ValueError("samplers must name at least one sampler, e.g. ('ddim', 'ddpm')")
    for name in samplers:
        get_sampler(name)  # ValueError naming the valid samplers
    _check_int("n", n, 2)
    _check_int("seed", seed, 0)
    p = pipeline.load_checkpoint(model, device, directory)
    if p.schedule is None or p.meta.get("text_encoder") is not None:
        raise ValueError(f"checkpoint {p.meta.get('name')!r} is not an unconditional denoiser; steps_sweep needs one "
                         f"such as {UNCONDITIONAL_MODEL!r} (measure text-to-image models with cfg_sweep)")
    device = course_lib.device_of(p.model)
    p.model.eval()  # dropout off: the same seed must give the same images
    classifier = classifier if classifier is not None else load_classifier(device=device)
    channels, height, width = pipeline.image_shape(p)
    reference = ShapesDataset(size=height, n=n, seed=REFERENCE_SEED).images()  # (n, 3, H, W)
    second = ShapesDataset(size=height, n=n, seed=REFERENCE_SEED + 1).images()
    x_T = torch.randn((n, channels, height, width), generator=torch.Generator().manual_seed(seed)).to(device)
    sweep = Sweep([], [], baseline={"frechet_distance": frechet_distance(second, reference, classifier),
                                    "graininess": graininess(second, reference)})
    for name, k in _progress([(name, k) for name in samplers for k in steps], progress, "runs"):
        images = get_sampler(name)(p.model, x_T, p.schedule, make_timesteps(p.schedule, k),
                                   generator=torch.Generator().manual_seed(seed + 1)).float().cpu()
        sweep.rows.append({"sampler": name, "steps": k, "frechet_distance": frechet_distance(images, reference,
                                                                                              classifier),
                           "graininess": graininess(images, reference)})
        sweep.images.append(images)
    return sweep


# ----- argument checks -----------------------------------------------------------------------------------------
def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_scales(scales) -> list[float]:
    scales = [scales] if isinstance(scales, (int, float)) else list(scales)
    bad = [s for s in scales if isinstance(s, bool) or not isinstance(s, (int, float)) or not s >= 0]
    if not scales or bad:
        raise ValueError(f"scales must be a non-empty list of numbers >= 0 (1 = no guidance), got {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales has duplicates: {scales!r}")
    return scales


def _check_steps_list(steps) -> list[int]:
    steps = [steps] if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else list(steps)
    bad = [k for k in steps if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if not steps or bad or len(set(steps)) != len(steps):
        raise ValueError(f"steps must be a non-empty list of distinct ints >= 1, e.g. (5, 50), got {steps!r}")
    return [int(k) for k in steps]


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


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


# ----- command line --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation",
                                     description="Measure guidance-scale and step-count sweeps and print the tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("cfg", help="guidance-scale sweep of a text-to-image checkpoint (fresh + held-out prompts)")
    cfg.add_argument("--scales", type=float, nargs="+", default=list(CFG_SCALES), help="guidance scales")
    cfg.add_argument("--prompts", type=int, default=8, help="number of fresh prompts (default 8)")
    cfg.add_argument("--per-prompt", type=int, default=3, help="images per prompt and scale (default 3)")
    cfg.add_argument("--steps", type=int, default=15, help="sampler steps (default 15)")
    cfg.add_argument("--sampler", default="ddim", help="ddim or ddpm (default ddim)")
    cfg.add_argument("--model", default=pipeline.DEFAULT_MODEL, help=f"checkpoint (default {pipeline.DEFAULT_MODEL})")
    cfg.add_argument("--held-out-draws", type=int, default=1,
                     help="held-out prompt sets (6 prompts each, seeds held-out-seed, +1, ...; default 1)")
    cfg.add_argument("--held-out-seed", type=int, default=EVAL_SEED, help=f"first held-out seed (default {EVAL_SEED})")
    cfg.add_argument("--held-out-only", action="store_true", help="skip the fresh (seen-combination) prompts")
    steps = sub.add_parser("steps", help="step-count sweep of an unconditional checkpoint (DDIM and DDPM)")
    steps.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50], help="step counts")
    steps.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"], help="samplers (default ddim ddpm)")
    steps.add_argument("--n", type=int, default=256, help="images per run (default 256)")
    steps.add_argument("--model", default=UNCONDITIONAL_MODEL, help=f"checkpoint (default {UNCONDITIONAL_MODEL})")
    for p in (cfg, steps):
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--checkpoint-dir", default=None, help="where the checkpoints are (default data/checkpoints)")
        p.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    args = parser.parse_args(argv)
    try:
        if args.command == "cfg":
            settings = dict(steps=args.steps, n_per_prompt=args.per_prompt, seed=args.seed, sampler=args.sampler,
                            model=args.model, directory=args.checkpoint_dir, device=args.device, progress=True)
            scales = [int(s) if float(s).is_integer() else s for s in args.scales]
            _check_int("--held-out-draws", args.held_out_draws, 1)
            held_out = [p for k in range(args.held_out_draws)
                        for p in held_out_prompts(seed=args.held_out_seed + k)]  # 6 prompts per draw
            tests = [] if args.held_out_only else [(f"{args.prompts} fresh prompts (seen combinations)",
                                                    fresh_prompts(args.prompts))]
            for title, prompts in tests + [(f"held-out pairs, {len(held_out)} prompts", held_out)]:
                print(f"\n{title}, {args.per_prompt} images each, {args.steps} {args.sampler} steps:")
                print(cfg_sweep(scales, prompts, **settings))
        else:
            sweep = steps_sweep(args.steps, args.samplers, n=args.n, seed=args.seed, model=args.model,
                                directory=args.checkpoint_dir, device=args.device, progress=True)
            print(f"\n{args.n} images per run, against {args.n} real renders:")
            print(sweep)
    except (TypeError, ValueError, CheckpointNotFoundError, CheckpointError) as e:
        parser.error(str(e))  # one line and exit status 2, not a traceback


if __name__ == "__main__":
    main()
