"""Chapter 8's measurements: autoregressive generation (pixels, VQ codes) against diffusion, on the same prompts.

    cost      sequential model calls, GFLOPs per image, wall seconds for 4 images; training FLOPs of each model
    quality   prompt accuracy and Fréchet distance (classifier features), each with its standard error
    ordering  does writing in raster order hurt?  (a) completion from the top half vs from the bottom half;
              (b) a wrong early pixel: does the rest follow it?  (c) prompt accuracy by where the object sits

`python -m course_lib.evaluation ar-vs-diffusion` writes data/ar_vs_diffusion.json; notebook 08 reads it.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from course_lib import pretrained
from course_lib.autoregressive import sample_tokens
from course_lib.data import COLORS, POSITIONS, Attributes, ShapesDataset
from course_lib.generate import DEFAULT_GUIDANCE, generate
from course_lib.guidance import GuidedModel
from course_lib.inpainting import KnownRegion
from course_lib.metrics import fresh_prompts, load_classifier, prompt_matches
from course_lib.metrics.classifier import frechet_distance_se
from course_lib.metrics.flops import count_flops, gflops_per_step
from course_lib.metrics.prompts import make_prompt, reference_renders
from course_lib.samplers import get_sampler, make_timesteps
from course_lib.tokens import tokenizer_of

PIXEL_AR, TOKEN_AR, DIFFUSION, LCM = "shapes32-ar", "shapes32-ar-tokens", "shapes32-t2i", "shapes32-lcm"
# (label, model, sampler, steps): diffusion at 4 / 20 / 50 steps, with chapter 7's samplers where they help
METHODS = [("pixel AR", PIXEL_AR, None, None), ("token AR", TOKEN_AR, None, None),
           ("diffusion DDIM 4", DIFFUSION, "ddim", 4), ("diffusion DDIM 20", DIFFUSION, "ddim", 20),
           ("diffusion DDIM 50", DIFFUSION, "ddim", 50), ("diffusion DPM-Solver++ 20", DIFFUSION, "dpmpp_2m", 20),
           ("LCM 4", LCM, "lcm", 4)]
GUIDANCE = {name: DEFAULT_GUIDANCE["autoregressive" if name in (PIXEL_AR, TOKEN_AR) else "diffusion"]
            for name in (PIXEL_AR, TOKEN_AR, DIFFUSION, LCM)}  # each model's CFG scale: generate's defaults


def _se(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def _images(model, sampler, steps, prompt: str, n: int, seed: int, directory=None) -> torch.Tensor:
    options = {} if sampler is None else {"sampler": sampler, "steps": steps}
    return generate(prompt, model=model, n=n, seed=seed, guidance_scale=GUIDANCE[model], device="cpu",
                    directory=directory, **options).images


def training_flops(name: str, directory=None) -> dict:
    """Training FLOPs of a checkpoint: 3 x (one forward pass) per image seen (forward + backward ~ 3 forwards),
    plus those of the checkpoint it was initialised from."""
    p = pretrained.load_checkpoint(name, "cpu", directory)
    images = int(p.meta["steps"]) * int(p.meta["train_config"]["batch_size"])
    if p.meta["kind"] == "ar":
        forward = p.meta["metrics"]["forward_gflops_per_image"]
    else:
        forward = gflops_per_step(p, guided=False, directory=directory)
    total = 3 * forward * images * 1e9
    init = p.meta.get("init_from")
    if init:
        total += training_flops(init, directory)["flops"]
    return {"flops": total, "images_seen": images, "forward_gflops_per_image": forward, "init_from": init,
            "device": p.meta["metrics"].get("device")}


def cost(directory=None, n: int = 4) -> list[dict]:
    """Sequential calls, GFLOPs and CPU wall seconds per image for every method (guided: 2 sequences per call)."""
    rows = []
    for label, model, sampler, steps in METHODS:
        p = pretrained.load_checkpoint(model, "cpu", directory)
        if p.meta["kind"] == "ar":
            calls = p.model.config.seq_len
            gflops = 2 * p.meta["metrics"]["forward_gflops_per_image"]  # cond + uncond; a KV cache: one pass's work
            tokenizer = tokenizer_of(p, "cpu", directory)
            if tokenizer.kind == "codes":
                zeros = torch.zeros(1, calls, dtype=torch.long)
                gflops += count_flops(lambda: tokenizer.decode(zeros)) / 1e9
        else:
            calls = steps
            # one guided step as the sampler calls it: a batch of 2 (cond + uncond), or an LCM student's one pass
            encoder = pretrained.load_text_encoder(p, "cpu", directory)
            eps_model = GuidedModel(p.model, *encoder("a large red circle"), *encoder(""), GUIDANCE[model])
            x = torch.zeros(1, *pretrained.sample_shape(p))  # (1, C, H, W)
            gflops = steps * count_flops(lambda: eps_model(x, torch.tensor([500]))) / 1e9
        _images(model, sampler, steps, "a large red circle", n, 0, directory)  # warm-up
        start = time.perf_counter()
        _images(model, sampler, steps, "a large red circle", n, 1, directory)
        rows.append({"method": label, "model": model, "sequential_calls": calls, "gflops_per_image": round(gflops, 3),
                     f"cpu_seconds_{n}_images": round(time.perf_counter() - start, 2),
                     "cpu_threads": torch.get_num_threads()})
    return rows


def quality(prompts: int = 16, per_prompt: int = 4, seed: int = 0, directory=None) -> list[dict]:
    """Prompt accuracy (with its standard error over images) and Fréchet distance (bootstrap error) per method."""
    classifier = load_classifier(device="cpu")
    chosen = fresh_prompts(prompts)
    reference = reference_renders(chosen, per_prompt)
    rows = []
    for label, model, sampler, steps in METHODS:
        images, correct = [], []
        for i, prompt in enumerate(chosen):
            batch = _images(model, sampler, steps, prompt.text, per_prompt, seed + i, directory)
            images.append(batch)
            correct += prompt_matches(batch, prompt.attributes, classifier, keys=prompt.keys)
        fd, fd_se = frechet_distance_se(torch.cat(images), reference, classifier)
        rows.append({"method": label, "prompt_accuracy": float(np.mean(correct)), "prompt_accuracy_se": _se(correct),
                     "frechet_distance": fd, "frechet_distance_se": fd_se, "images": len(correct)})
    return rows


#################################################################################
#                 The ordering claim, tested three ways                         #
#################################################################################

def half_mask(size: int, keep: str) -> torch.Tensor:
    """(1, 1, size, size) True on the known half: "top" or "bottom"."""
    rows = torch.arange(size)[:, None].expand(size, size)
    known = rows < size // 2 if keep == "top" else rows >= size // 2
    return known[None, None]


def diffusion_complete(known: torch.Tensor, mask: torch.Tensor, seed: int, directory=None, steps: int = 20,
                       prompt: str = "", guidance_scale: float = 1.0, pinned_steps: int | None = None) -> torch.Tensor:
    """shapes32-t2i inpaints: DDIM with the known region pinned (KnownRegion) for every step, or for the first
    `pinned_steps` only and then released."""
    p = pretrained.load_checkpoint(DIFFUSION, "cpu", directory)
    encoder = pretrained.load_text_encoder(p, "cpu", directory)
    guided = GuidedModel(p.model, *encoder(prompt), *encoder(""), guidance_scale)
    pinned = KnownRegion(guided, p.schedule, known, mask)
    timesteps = make_timesteps(p.schedule, steps)
    release = -1 if pinned_steps is None else \
        (int(timesteps[pinned_steps - 1]) if pinned_steps > 0 else p.schedule.num_train_timesteps)

    def eps_model(x_t, t):
        return pinned(x_t, t) if int(t[0]) >= release else guided(x_t, t)

    x_T = torch.randn(known.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return get_sampler("ddim")(eps_model, x_T, p.schedule, timesteps).float()


def ar_complete(model: str, known: torch.Tensor, mask: torch.Tensor, seed: int, directory=None, prompt: str = "",
                guidance_scale: float = 1.0) -> torch.Tensor:
    """An autoregressive model completes images whose `mask` part is known (forced tokens)."""
    p = pretrained.load_checkpoint(model, "cpu", directory)
    encoder = pretrained.load_text_encoder(p, "cpu", directory)
    tokenizer = tokenizer_of(p, "cpu", directory)
    tokens = tokenizer.encode(known)  # (B, N)
    cell = known.shape[-1] // tokenizer.grid  # pixels per token side
    token_known = mask[:, 0, ::cell, ::cell].flatten(1).expand_as(tokens)  # (B, N): a token is known if its cell is
    forced = torch.where(token_known, tokens, torch.full_like(tokens, -1))
    generators = [torch.Generator().manual_seed(seed * 1000 + k) for k in range(len(known))]
    (cond, cond_mask), (uncond, uncond_mask) = encoder(prompt), encoder("")
    out = sample_tokens(p.model, cond=cond, cond_mask=cond_mask, uncond=uncond, uncond_mask=uncond_mask,
                        guidance_scale=guidance_scale, known=forced, generator=generators)
    return tokenizer.decode(out.cpu())


def completion(n: int = 32, seed: int = 11, directory=None) -> dict:
    """(a) Fresh renders with one half known, completed without a prompt; the classifier checks that the completed
    image still shows the original object (its shape, colour, size and position), and how far the filled half is
    from the truth."""
    classifier = load_classifier(device="cpu")
    data = ShapesDataset(size=32, n=n, seed=seed)
    truth, attributes = data.images(), data.attributes()
    fills = {"pixel AR": lambda k, m: ar_complete(PIXEL_AR, k, m, seed, directory),
             "token AR": lambda k, m: ar_complete(TOKEN_AR, k, m, seed, directory),
             "diffusion": lambda k, m: diffusion_complete(k, m, seed, directory)}
    rows = []
    for method, fill in fills.items():
        for keep in ("top", "bottom"):
            mask = half_mask(32, keep)
            images = fill(truth, mask)
            right = prompt_matches(images, attributes, classifier, keys=("shape", "color", "size", "position"))
            error = ((images - truth).abs() * ~mask).sum(dim=(1, 2, 3)) / (~mask).sum() / 3  # per image, unknown half
            rows.append({"method": method, "known": keep, "object_kept": float(np.mean(right)),
                         "object_kept_se": _se(right), "mean_abs_error_filled_half": float(error.mean()),
                         "images": n})
    return {"rows": rows, "settings": {"n": n, "seed": seed, "prompt": "", "guidance_scale": 1.0,
                                       "diffusion": "shapes32-t2i, DDIM 20 steps, KnownRegion"}}


WRONG_PIXEL = (2, 16)  # (row, column): a pixel of the third row, far above any object
WRONG_COLOR, ASKED_COLOR = "blue", "red"


def wrong_pixel_start(n: int):
    """(prompt, known images (n, 3, 32, 32) holding one blue pixel at WRONG_PIXEL, its mask (1, 1, 32, 32))."""
    prompt = make_prompt(Attributes("circle", ASKED_COLOR, "large", "center", "black"))
    known = torch.zeros(n, 3, 32, 32)
    known[:, :, WRONG_PIXEL[0], WRONG_PIXEL[1]] = torch.tensor(COLORS[WRONG_COLOR]) * 2 - 1  # in [-1, 1]
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., WRONG_PIXEL[0], WRONG_PIXEL[1]] = True
    return prompt, known, mask


def early_wrong_token(n: int = 24, seed: int = 5, directory=None, pinned_steps: int = 5, steps: int = 20) -> dict:
    """(b) A blue pixel is written into row 2 before anything else. The pixel model must keep it (it is part of the
    sequence it continues); diffusion gets the same pixel pinned for its first `pinned_steps` of `steps` and is
    then free. Twice: with a prompt for a red circle on black, and with no prompt (the colour is then the model's
    own choice). Counted: images whose classified colour is not the prompt's (red), images classified blue, and
    images that grew more blue (a second object) than the one pixel."""
    classifier = load_classifier(device="cpu")
    prompt, known, mask = wrong_pixel_start(n)
    blue, (r, c) = known[0, :, WRONG_PIXEL[0], WRONG_PIXEL[1]], WRONG_PIXEL

    def outcome(images: torch.Tensor) -> dict:
        colours = [p.color for p in classifier.predict(images)]
        near_blue = ((images - blue[None, :, None, None]).abs().amax(dim=1) < 0.25)  # (n, H, W)
        near_blue[:, r, c] = False  # the injected pixel itself does not count
        grew = (near_blue.sum(dim=(1, 2)) >= 4).float()
        return {"not_red": float(np.mean([col != ASKED_COLOR for col in colours])),
                "blue_object": float(np.mean([col == WRONG_COLOR for col in colours])),
                "grew_blue": float(grew.mean()), "images": len(images)}

    rows = []
    for text, scale in ((prompt.text, None), ("", 1.0)):
        for injected in (False, True):
            where = mask if injected else torch.zeros_like(mask)
            ar = ar_complete(PIXEL_AR, known, where, seed, directory, text, scale or GUIDANCE[PIXEL_AR])
            d = diffusion_complete(known, where, seed, directory, steps, text, scale or GUIDANCE[DIFFUSION],
                                   pinned_steps)
            for method, images in (("pixel AR", ar), ("diffusion", d)):
                rows.append({"method": method, "prompt": text, "injected": injected, **outcome(images)})
    return {"rows": rows, "settings": {"prompt": prompt.text, "pixel": WRONG_PIXEL, "colour": WRONG_COLOR, "n": n,
                                       "seed": seed, "diffusion": f"DDIM {steps} steps, pixel pinned for the first "
                                                                  f"{pinned_steps}"}}


def by_position(per_position: int = 12, per_prompt: int = 2, seed: int = 3, directory=None) -> dict:
    """(c) Prompt accuracy by where the prompt puts the object: top (written first by a raster model, with no
    context) to bottom (written last, with all of it), for the pixel model, the token model and diffusion."""
    classifier = load_classifier(device="cpu")
    prompts = fresh_prompts(per_position * len(POSITIONS) * 4, seed=seed)
    chosen = {pos: [p for p in prompts if p.attributes.position == pos][:per_position] for pos in POSITIONS}
    rows = []
    for label, model, sampler, steps in [METHODS[0], METHODS[1], METHODS[3]]:
        for pos, group in chosen.items():
            right = []
            for i, prompt in enumerate(group):
                images = _images(model, sampler, steps, prompt.text, per_prompt, seed + i, directory)
                right += prompt_matches(images, prompt.attributes, classifier, keys=prompt.keys)
            rows.append({"method": label, "position": pos, "prompt_accuracy": float(np.mean(right)),
                         "prompt_accuracy_se": _se(right), "images": len(right)})
    return {"rows": rows, "settings": {"per_position": per_position, "per_prompt": per_prompt, "seed": seed}}


def ar_vs_diffusion(prompts: int = 16, per_prompt: int = 4, directory=None, record_training: bool = True) -> dict:
    """Every measurement of chapter 8 in one record (data/ar_vs_diffusion.json); with record_training, each
    model's training FLOPs also go into its checkpoint's JSON ("training_flops")."""
    training = {name: training_flops(name, directory) for name in (PIXEL_AR, TOKEN_AR, DIFFUSION)}
    if record_training:
        for name, value in training.items():
            pretrained.annotate(name, {"training_flops": value}, directory)
    return {"training": training,
            "training_ratio_to_diffusion": {k: v["flops"] / training[DIFFUSION]["flops"] for k, v in training.items()},
            "cost": cost(directory), "quality": quality(prompts, per_prompt, directory=directory),
            "completion": completion(directory=directory), "early_wrong_token": early_wrong_token(directory=directory),
            "by_position": by_position(directory=directory), "threads": torch.get_num_threads(),
            "command": f"python -m course_lib.evaluation ar-vs-diffusion --prompts {prompts} --per-prompt {per_prompt}"}
