"""Quality floors: what a shipped checkpoint must still do, measured on small fresh data in seconds on a CPU.

Each recipe names a floor: a metric, the settings it is measured with, and a limit. `python -m course_lib.train`
measures it on the checkpoint it just saved (loaded as users load it) and writes it into the JSON
("quality_floor"); the tests measure it again on every shipped checkpoint. Weights replaced by noise, or a bug in
the code that loads or samples a model, fall far below the floor; an honest retraining stays above it.

    prompt_accuracy   text to image: share of images showing everything their fresh prompt names     (at least)
    color_accuracy    text to image: share of images in the prompt's colour                         (at least)
    frechet_distance  unconditional: Fréchet distance of samples to real renders (classifier space)  (at most)
    psnr_db           VAE, VQ tokenizer: reconstruction PSNR (dB) on fresh renders                   (at least)
    accuracy          classifier: share of fresh renders with all five attributes right              (at least)
    zero_shot         CLIP: zero-shot accuracy with one short prompt per value, mean of 5 attributes (at least)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import course_lib
from course_lib.data import ShapesDataset
from course_lib.generate import generate
from course_lib.latent import reconstruct
from course_lib.metrics import attribute_accuracy, classifier_accuracy, fresh_prompts, frechet_distance, \
    load_classifier, prompt_accuracy, psnr, zero_shot_accuracy
from course_lib.metrics.prompts import REFERENCE_SEED
from course_lib.pretrained import Pretrained, image_shape
from course_lib.samplers import ddim, make_timesteps

# metric -> the settings it is measured with
METRICS = {"prompt_accuracy": ("prompts", "per_prompt", "guidance_scale", "seed"),
           "color_accuracy": ("prompts", "per_prompt", "guidance_scale", "seed"),
           "frechet_distance": ("n", "steps", "seed"), "psnr_db": ("n", "size", "seed"),
           "accuracy": ("n", "size", "seed"), "zero_shot": ("n", "size", "seed")}
AT_MOST = ("frechet_distance",)  # lower is better: the limit is a ceiling
# (a diffusion text-to-image floor also names its "steps", and may name its "sampler" (without one: DDIM); an
# autoregressive one names neither, and may name a "temperature")


@dataclass
class Floor:
    """The least a checkpoint must do: `metric` measured with `settings`, compared with `limit`."""

    metric: str  # one of METRICS
    limit: float  # at least this (at most, for a distance)
    settings: dict = field(default_factory=dict)  # n / prompts, per_prompt, steps, guidance_scale, seed

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown floor metric {self.metric!r}; valid metrics: {', '.join(METRICS)}")

    def met_by(self, value: float) -> bool:
        return value <= self.limit if self.metric in AT_MOST else value >= self.limit

    def describe(self, value: float) -> str:
        relation = "<=" if self.metric in AT_MOST else ">="
        verdict = "meets" if self.met_by(value) else "FAILS"
        return f"{self.metric} {value:.4g} {verdict} its floor ({relation} {self.limit:g})"


@torch.no_grad()
def measure(p: Pretrained, floor: Floor, directory=None) -> float:
    """The floor's metric on checkpoint `p`; the text encoder or VAE its JSON names come from `directory`, the
    shapes classifier that grades samples is always the shipped one (a measuring instrument, not the model)."""
    missing = [name for name in METRICS[floor.metric] if name not in floor.settings]
    if missing:
        raise ValueError(f"a {floor.metric} floor needs the settings {', '.join(METRICS[floor.metric])}; "
                         f"{', '.join(missing)} missing from {floor.settings}")
    s, device = floor.settings, course_lib.device_of(p.model)
    p.model.eval()
    if floor.metric in ("prompt_accuracy", "color_accuracy"):
        classifier = load_classifier(device=device)
        scores = []
        for i, prompt in enumerate(fresh_prompts(s["prompts"], seed=s["seed"])):
            options = {k: s[k] for k in ("steps", "sampler", "temperature") if k in s}
            images = generate(prompt.text, guidance_scale=s["guidance_scale"], seed=s["seed"] + i,
                              n=s["per_prompt"], model=p, directory=directory, **options).images
            if floor.metric == "prompt_accuracy":
                scores.append(prompt_accuracy(images, prompt.attributes, classifier, keys=prompt.keys))
            else:
                scores.append(attribute_accuracy(images, prompt.attributes, classifier, keys=("color",))["color"])
        return sum(scores) / len(scores)
    if floor.metric == "frechet_distance":
        channels, height, width = image_shape(p)
        x_T = torch.randn((s["n"], channels, height, width), generator=torch.Generator().manual_seed(s["seed"]))
        samples = ddim(p.model, x_T.to(device), p.schedule, make_timesteps(p.schedule, s["steps"])).float().cpu()
        real = ShapesDataset(size=height, n=s["n"], seed=REFERENCE_SEED).images()
        return frechet_distance(samples, real, load_classifier(device=device))
    renders = ShapesDataset(size=s["size"], n=s["n"], seed=s["seed"])
    if floor.metric == "psnr_db":
        images = renders.images()
        if p.meta.get("kind") == "vq":  # a VQ tokenizer: through its codes
            return psnr(p.model.decode(p.model.encode(images.to(device))).float().cpu(), images)
        return psnr(reconstruct(p.model, images), images)
    if floor.metric == "accuracy":
        return classifier_accuracy(p.model, renders.images(), renders.attributes())["all"]
    accuracy = zero_shot_accuracy(p.model, renders)  # zero_shot
    return sum(accuracy.values()) / len(accuracy)


def record(p: Pretrained, floor: Floor, directory=None) -> dict:
    """What a checkpoint's JSON says about its floor: the floor itself and what this checkpoint measured."""
    value = measure(p, floor, directory)
    return {"metric": floor.metric, "limit": floor.limit, "settings": floor.settings, "measured": value,
            "met": floor.met_by(value)}
