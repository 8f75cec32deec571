"""Chapter 7's table: image quality against model calls (NFE) for every sampler, on one text-to-image model.

Every sampler gets the same prompts, the same starting noise x_T and the same guidance scale; only the sampler and
its number of model evaluations differ between rows. LCM runs on the distilled student (shapes32-lcm), the others on
its teacher with classifier-free guidance. One NFE is one guided noise prediction: for the teacher a batched pass
over the prompt and the empty prompt, for the student a single pass (guidance is one of its inputs), which is why
the student's seconds per image are lower than the teacher's at equal NFE.
"""
from __future__ import annotations

import time

import torch

import course_lib
from course_lib import pretrained
from course_lib.generate import DEFAULT_MODEL
from course_lib.guidance import GuidedModel
from course_lib.latent import latent_decoder
from course_lib.metrics import frechet_distance, frechet_distance_se, load_classifier, prompt_accuracy
from course_lib.metrics.prompts import REFERENCE_SEED, _check_int, _check_prompts, fresh_prompts, reference_renders
from course_lib.samplers import get_sampler, make_timesteps

from .sweeps import Sweep, _progress

SAMPLER_NFES = (1, 2, 4, 8, 10, 15, 20, 25, 30, 50, 100)  # model calls per image the table is measured at
SWEEP_SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "lcm")
LCM_MODEL = "shapes32-lcm"  # the consistency-distilled student of DEFAULT_MODEL; the "lcm" rows sample it
REFERENCE = ("ddpm", 1000)  # the slow, careful baseline every other row is compared with
WITHIN = 0.10  # "as good as the reference": a Fréchet distance at most 10% above the reference's
Z = 2.0  # "indistinguishable from the reference": FD above it by less than Z standard errors of the difference


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose model calls fit in nfe: Heun's N steps cost 2N - 1 calls, every other sampler's N."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def nfe_of(sampler: str, steps: int) -> int:
    """Model calls of `steps` steps of `sampler`."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sample_prompts(p, sampler: str, steps: int, prompts, n_per_prompt: int, *, guidance_scale: float, seed: int,
                   directory=None, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """(images (P * n, C, H, W) on the CPU in prompt order, seconds of sampling per image): image k of the sweep
    always starts from the same x_T (seed), and stochastic samplers draw their noise from seed + 1 + batch index."""
    device = course_lib.device_of(p.model)
    encoder = pretrained.load_text_encoder(p, device, directory)
    decode = latent_decoder(p, device, directory)  # None for pixel models
    texts = [prompt.text for prompt in prompts for _ in range(n_per_prompt)]
    cond, cond_mask = encoder(texts)  # (N, L, D), (N, L)
    uncond, uncond_mask = encoder("")
    x_T = torch.randn((len(texts), *pretrained.sample_shape(p)), generator=torch.Generator().manual_seed(seed))
    timesteps, fn = make_timesteps(p.schedule, steps), get_sampler(sampler)
    p.model.eval()
    images, seconds = [], 0.0
    for b, start in enumerate(range(0, len(texts), batch_size)):
        chunk = slice(start, start + batch_size)
        eps_model = GuidedModel(p.model, cond[chunk], cond_mask[chunk], uncond, uncond_mask, guidance_scale)
        _synchronize(device)
        tic = time.perf_counter()
        x0 = fn(eps_model, x_T[chunk].to(device), p.schedule, timesteps,
                generator=torch.Generator().manual_seed(seed + 1 + b))
        _synchronize(device)
        seconds += time.perf_counter() - tic
        images.append((decode(x0) if decode is not None else x0).float().cpu())
    return torch.cat(images), seconds / len(texts)


def samplers_sweep(samplers=SWEEP_SAMPLERS, nfes=SAMPLER_NFES, *, prompts=None, n_per_prompt: int = 8,
                   guidance_scale: float = 5.0, seed: int = 0, model=DEFAULT_MODEL, lcm_model=LCM_MODEL,
                   reference=REFERENCE, directory=None, classifier=None, device=None, progress: bool = False) -> Sweep:
    """Every sampler at every NFE (and the reference run first): Fréchet distance to real renders of the prompts with
    its bootstrap standard error, prompt accuracy and sampling seconds per image. Heun's rows are at the odd NFEs
    its steps allow (2N - 1 <= nfe), once each."""
    for name in samplers:
        get_sampler(name)  # ValueError naming the valid samplers
    nfes = sorted({int(k) for k in nfes})
    if not nfes or nfes[0] < 1:
        raise ValueError(f"nfes must be model-call counts >= 1, e.g. {SAMPLER_NFES}, got {nfes}")
    prompts = _check_prompts(fresh_prompts() if prompts is None else prompts)
    _check_int("n_per_prompt", n_per_prompt, 1)
    if len(prompts) * n_per_prompt < 2:
        raise ValueError("need at least 2 images per row for a Fréchet distance (more prompts or n_per_prompt)")
    teacher = pretrained.load_checkpoint(model, device, directory)
    device = course_lib.device_of(teacher.model)
    student = pretrained.load_checkpoint(lcm_model, device, directory) if "lcm" in samplers else None
    classifier = classifier if classifier is not None else load_classifier(device=device)
    size = pretrained.image_shape(teacher)[-1]
    real = reference_renders(prompts, n_per_prompt, size=size)
    second = reference_renders(prompts, n_per_prompt, size=size, seed=REFERENCE_SEED + 1)  # the real-vs-real floor
    sweep = Sweep([], [], baseline={"frechet_distance": frechet_distance(second, real, classifier)})
    runs = [reference] + [(name, steps) for name in samplers
                          for steps in sorted({steps_for(name, k) for k in nfes}) if steps >= 1]
    for name, steps in _progress(runs, progress, "runs"):
        p = student if name == "lcm" else teacher
        images, seconds = sample_prompts(p, name, steps, prompts, n_per_prompt, guidance_scale=guidance_scale,
                                         seed=seed, directory=directory)
        fd, se = frechet_distance_se(images, real, classifier)
        accuracy = [prompt_accuracy(images[i * n_per_prompt:(i + 1) * n_per_prompt], prompt.attributes, classifier,
                                    keys=prompt.keys) for i, prompt in enumerate(prompts)]
        sweep.rows.append({"sampler": name, "model": p.meta["name"], "steps": steps, "nfe": nfe_of(name, steps),
                           "frechet_distance": fd, "frechet_distance_se": se,
                           "prompt_accuracy": sum(accuracy) / len(accuracy), "seconds_per_image": seconds})
        sweep.images.append(images)
    return sweep


def summarize(sweep: Sweep, within: float = WITHIN, z: float = Z) -> dict:
    """The table's conclusions: the reference's numbers (the sweep's first row), and per sampler the fewest model
    calls whose Fréchet distance is within `within` of the reference's, and the fewest whose FD exceeds the
    reference's by less than z standard errors of the difference, sqrt(se^2 + se_ref^2): with few images per row
    the first is stricter than the noise allows (None: no NFE measured gets there)."""
    ref = sweep.rows[0]
    limit = ref["frechet_distance"] * (1 + within)
    smallest, indistinguishable = {}, {}
    for row in sweep.rows[1:]:
        if row["frechet_distance"] <= limit and row["sampler"] not in smallest:
            smallest[row["sampler"]] = row["nfe"]
        noise = (row.get("frechet_distance_se", 0.0) ** 2 + ref.get("frechet_distance_se", 0.0) ** 2) ** 0.5
        if row["frechet_distance"] - ref["frechet_distance"] < z * noise and row["sampler"] not in indistinguishable:
            indistinguishable[row["sampler"]] = row["nfe"]
    samplers = dict.fromkeys(row["sampler"] for row in sweep.rows[1:])
    keys = ("sampler", "model", "steps", "nfe", "frechet_distance", "frechet_distance_se", "prompt_accuracy",
            "seconds_per_image")
    pick = lambda row: {k: row[k] for k in keys if k in row}  # noqa: E731
    found = {(row["sampler"], row["nfe"]): row for row in sweep.rows[1:]}
    lcm_vs_teacher = {name: pick(found[key]) for name, key in (("lcm_4", ("lcm", 4)), ("dpmpp_2m_25", ("dpmpp_2m", 25)))
                      if key in found}  # the distilled student at 4 calls against its teacher's good setting
    return {"reference": pick(ref), "within": within, "fd_limit": limit,
            "smallest_nfe_within": {name: smallest.get(name) for name in samplers}, "z": z,
            "smallest_nfe_indistinguishable": {name: indistinguishable.get(name) for name in samplers},
            "lcm_vs_teacher": lcm_vs_teacher}


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
