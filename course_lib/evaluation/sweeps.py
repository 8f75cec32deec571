"""Sweeps: the same measurement at several settings, one row each; the tables the notebooks show.

`cfg_sweep` generates the same prompts with the same seeds at several guidance scales, so only the scale changes
between rows, and scores every batch with the shapes classifier: prompt accuracy, accuracy per attribute, Fréchet
distance to real renders of the same attributes, and saturation. `steps_sweep` does the same for chapter 2's
claim (few steps are grainy, many are clean) on an unconditional model. `pixel_vs_latent` is chapter 4's table
(work, time and quality of a pixel and a latent model), `kl_sweep` chapter 4's VAE KL-weight table. All the math
lives in metrics, guidance and samplers, the timings in bench; this module only loops and writes tables.
"""
from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field

import numpy as np
import torch

import course_lib
from course_lib import pretrained
from course_lib.bench import generate_seconds
from course_lib.data import ShapesDataset
from course_lib.generate import DEFAULT_MODEL, generate
from course_lib.latent import decode_latents, encode_latents
from course_lib.losses import VAELoss
from course_lib.metrics import attribute_accuracy, decode_gflops, frechet_distance, gflops_per_step, graininess, \
    load_classifier, prompt_accuracy, psnr, saturation
from course_lib.metrics.prompts import REFERENCE_SEED, _check_int, _check_prompts, fresh_prompts, reference_renders
from course_lib.recipes import get_recipe
from course_lib.samplers import get_sampler, make_timesteps
from course_lib.training import train

CFG_SCALES = (0, 1, 2, 3, 5, 7, 10, 12, 15, 20)  # chapter 3's sweep (diffusers' convention: 1 = no guidance)
UNCONDITIONAL_MODEL = "shapes32-unet"


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
        """The rows as fixed-width text (all columns, or the ones named), then the real-renders baseline.

        columns: a list of keys, or a dict {key: short header} for a table narrow enough for a notebook cell."""
        if columns is None:
            columns = list(self.rows[0]) if self.rows else []
        headers = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
        for c in headers:
            self.column(c)  # KeyError naming the valid columns
        width = {c: max(len(h), 7) for c, h in headers.items()}
        lines = ["  ".join(h.rjust(width[c]) for c, h in headers.items())]
        for row in self.rows:
            lines.append("  ".join((f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])).rjust(width[c])
                                   for c in headers))
        baseline = {headers[k]: v for k, v in self.baseline.items() if k in headers}
        if baseline:
            text = "real renders vs real renders: " + ", ".join(f"{k} {v:.3f}" for k, v in baseline.items())
            lines.extend(textwrap.wrap(text, width=max(len(lines[0]), 80), subsequent_indent="  "))
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
              sampler: str = "ddim", model=DEFAULT_MODEL, directory=None, classifier=None, device=None,
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
    p = pretrained.load_checkpoint(model, device, directory)
    device = course_lib.device_of(p.model)
    classifier = classifier if classifier is not None else load_classifier(device=device)
    size = pretrained.image_shape(p)[-1]
    reference = reference_renders(prompts, n_per_prompt, size=size)
    second = reference_renders(prompts, n_per_prompt, size=size, seed=REFERENCE_SEED + 1)
    sweep = Sweep([], [], baseline=score(second, prompts, n_per_prompt, classifier, reference))
    for s in _progress(scales, progress, "guidance scales"):
        images = torch.cat([generate(prompt.text, steps=steps, guidance_scale=s, sampler=sampler, seed=seed + i,
                                     n=n_per_prompt, model=p, directory=directory).images
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
    p = pretrained.load_checkpoint(model, device, directory)
    if p.schedule is None or p.meta.get("text_encoder") is not None:
        raise ValueError(f"checkpoint {p.meta.get('name')!r} is not an unconditional denoiser; steps_sweep needs one "
                         f"such as {UNCONDITIONAL_MODEL!r} (measure text-to-image models with cfg_sweep)")
    device = course_lib.device_of(p.model)
    p.model.eval()  # dropout off: the same seed must give the same images
    classifier = classifier if classifier is not None else load_classifier(device=device)
    channels, height, width = pretrained.image_shape(p)
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


PIXEL_VS_LATENT_MODELS = ("shapes64-t2i", "shapes64-latent-t2i")  # the same 64x64 images: pixels vs 8x8x4 latents


def pixel_vs_latent(models=PIXEL_VS_LATENT_MODELS, *, prompts=None, guidance_scale: float = 5.0, steps: int = 20,
                    n_per_prompt: int = 2, repeats: int = 3, directory=None) -> list[dict]:
    """Chapter 4's table, one row per checkpoint: sampler numbers per image, GFLOPs per step (two network passes:
    guidance) and per decode, CPU seconds per image of a whole `generate` (decode included), and cfg_sweep's
    quality numbers at one guidance scale. Every model gets the same prompts (default 12 fresh ones) and seeds.
    """
    prompts = fresh_prompts(12) if prompts is None else prompts
    rows = []
    for name in models:
        p = pretrained.load_checkpoint(name, "cpu", directory)
        c, h, w = pretrained.sample_shape(p)
        quality = cfg_sweep([guidance_scale], prompts, steps=steps, n_per_prompt=n_per_prompt, model=p,
                            directory=directory, device="cpu")
        row = quality.rows[0]
        seconds = generate_seconds(p, steps=steps, n=4, repeats=repeats, device="cpu", directory=directory)
        rows.append({"model": name, "space": f"{h}x{w}x{c}", "numbers_per_image": c * h * w,
                     "gflops_per_step": gflops_per_step(p, directory=directory),
                     "decode_gflops": decode_gflops(p, directory=directory),
                     "cpu_s_per_image": seconds / 4,
                     "prompt_accuracy": row["prompt_accuracy"],
                     "attribute_accuracy": {k[:-len("_accuracy")]: v for k, v in row.items()
                                            if k.endswith("_accuracy") and k != "prompt_accuracy"},
                     "frechet_distance": row["frechet_distance"],
                     "real_vs_real_fd": quality.baseline["frechet_distance"]})
    return rows


def kl_sweep(kl_weights=(0.0, 1e-6, 1e-4, 1e-2), steps: int = 2000, batch_size: int = 64, device=None,
             progress: bool = True) -> list[dict]:
    """Train one VAE per KL weight (the shapes64-vae recipe: same data, seed and steps) and measure what it buys.

    Per weight: PSNR on fresh renders, the KL per image (nats, at the last step), the latents' std (what
    scaling_factor undoes) and the PSNR after nudging each scaled latent by N(0, 0.1^2) noise: a latent space where
    small moves still decode to clean images is what a denoiser, whose predictions are never exact, needs.
    """
    recipe = get_recipe("shapes64-vae")
    device = course_lib.device(device)
    prepared = recipe.task.prepare(recipe.data, device)  # the training renders, drawn once for every weight
    config = dataclasses.replace(recipe.train, steps=steps, batch_size=batch_size, ckpt_every=0)
    rows = []
    for kl_weight in kl_weights:
        task = dataclasses.replace(recipe.task, kl_weight=kl_weight)
        torch.manual_seed(config.seed)  # the same initial weights for every weight
        vae = recipe.build_model()
        result = train(vae, VAELoss(kl_weight), prepared.data, config, device=device, progress=progress)
        metrics = task.record(vae, recipe.data, prepared)["metrics"]  # measures the scaling factor too
        rows.append({"kl_weight": kl_weight, "psnr_db": metrics["psnr_db"], "compression": metrics["compression"],
                     "eval": metrics["eval"], "kl_per_image": round(result.components["kl"][-1], 1),
                     "latent_std": round(1.0 / vae.config.scaling_factor, 4),
                     "psnr_nudged_db": round(_nudged_psnr(vae, task), 2), "steps": steps, "batch_size": batch_size})
        print(rows[-1], flush=True)
    return rows


def _nudged_psnr(vae, task, sigma: float = 0.1) -> float:
    """PSNR of D((z + sigma * eps) / scaling_factor) against the renders, z the scaled latents of fresh renders."""
    images = ShapesDataset(size=vae.config.image_size, n=task.eval_n, seed=task.eval_seed).images()
    z = encode_latents(vae, images)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    return psnr(decode_latents(vae, z + sigma * eps), images)


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


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)
