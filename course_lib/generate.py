"""Text to image in one call: `generate("a small blue star at the top")`, or from a shell:

    python -m course_lib.generate "a small blue star at the top" --steps 20 --guidance-scale 5 -o star.png --gif
    python -m course_lib.generate "a red circle" -n 100000 -o circles/      # numbered PNGs, one batch at a time

A thin layer over the pieces of the course: the checkpoint (`pretrained.load_checkpoint`) names its frozen text
encoder (`pretrained.load_text_encoder`) and, for latent models, its VAE (`latent.latent_decoder`); the prompt
becomes token embeddings, `GuidedModel` applies classifier-free guidance (Ho & Salimans 2022), and a sampler
from `course_lib.samplers` owns the loop. Nothing here does diffusion math.

Images are sampled `batch_size` at a time (`generate_batches` yields them batch by batch), so memory stays flat in
the number of images; image k starts from the k-th noise draw of the seed's generator whatever the batch size.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import course_lib
from course_lib import pretrained, samplers
from course_lib.guidance import GuidedModel
from course_lib.images import image_batch, read_image
from course_lib.outputs import save_gif, save_numbered_pngs, save_png  # noqa: F401 (course_lib.generate.save_*)
from course_lib.latent import encode_latents, latent_decoder
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError, Pretrained, image_shape, load_checkpoint, \
    load_text_encoder, sample_shape
from course_lib.samplers import StepRecord, get_sampler, make_timesteps, strength_timesteps
from course_lib.autoregressive import check_sampling, sample_tokens
from course_lib.tokens import FillFrame, tokenizer_of

DEFAULT_MODEL = "shapes32-t2i"  # the shipped text-to-image U-Net (retrain: python -m course_lib.train shapes32-t2i)
# guidance_scale when none is given: 5 for diffusion; 2 for the autoregressive models, whose guidance acts on logits
# (shapes32-ar on 8 fresh prompts: the asked colour in 100% of images at 1 and 2, 94% at 3; at 5 it drifts)
DEFAULT_GUIDANCE = {"diffusion": 5.0, "autoregressive": 2.0}
GRID_MAX = 64  # the command line writes up to this many images as one PNG grid; more go to numbered PNGs
# The default batch: 64 images of 3x32x32 on a CPU, 8 times that on an accelerator; bigger images get
# proportionally fewer (see default_batch_size).
BATCH_VALUES = {"cpu": 64 * 3 * 32 * 32, "accelerator": 8 * 64 * 3 * 32 * 32}
SEED_RULE = ("image k starts from the k-th torch.randn((C, H, W), generator=g) draw of g = "
             "torch.Generator().manual_seed(seed), (C, H, W) the model's sample shape, whatever the batch size (for "
             "the course's models the same numbers as one torch.randn((n, C, H, W), generator=g) draw); a sampler that "
             "draws noise at every step (ddpm, lcm) draws image k's from its own generator, step_noise_generator(seed, "
             "k); so image k alone (first=k, n=1, --first k -n 1) is image k of any batch, up to float round-off")


@dataclass
class Generation:
    """What `generate` returns (and `generate_batches` yields, one per batch); everything on the CPU."""

    images: torch.Tensor  # (n, 3, H, W) final images in [-1, 1] (not clipped: the sampler's output, decoded if latent)
    records: list  # one StepRecord per sampler step: x_t after the step and the predicted x0 (latents if latent);
    #                 an autoregressive model's FillFrames: the image as written so far, a scan line or token apart
    latents: torch.Tensor | None = None  # latent models: the sampler's output (n, 4, h, w) before decoding
    decode: Callable | None = None  # latent models: latents -> images (e.g. for the records); None for pixels
    first: int = 0  # the index of images[0] in the seed's sequence of images (see SEED_RULE)


# ----- the pipeline ------------------------------------------------------------------------------------------------
def generate(prompt: str, *, steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
             seed: int = 0, n: int = 4, first: int = 0, batch_size: int | None = None, model="shapes32-t2i",
             device=None, directory=None, callback=None, temperature: float | None = None,
             top_k: int | None = None, negative_prompt: str = "", image=None, strength: float = 0.8) -> Generation:
    """Sample n images for a prompt with classifier-free guidance (Ho & Salimans 2022) and a sampler.

    prompt          a caption like "a small blue star at the top". The empty prompt "" is the *unconditional*
                    prompt (the one the model saw when captions were dropped in training): it gives unconditional
                    samples, whatever guidance_scale is.
    steps           number of sampler steps (>= 1, default 20; trailing spacing, see `samplers.make_timesteps`)
    guidance_scale  diffusers' convention: 1 = no guidance (the plain conditional model), 0 = ignore the prompt,
                    > 1 = follow the prompt more strongly (fewer kinds of images); default DEFAULT_GUIDANCE (5 for
                    diffusion, 2 for autoregressive models)
    sampler         a name from `samplers.SAMPLERS` ("ddim" by default, "ddpm", ...)
    negative_prompt what to steer away from: it replaces the empty prompt in classifier-free guidance's
                    unconditional branch, as in diffusers' pipelines (no effect at guidance_scale 1)
    image, strength img2img (SDEdit, Meng et al. 2022, as diffusers' img2img pipelines): start from `image`
                    ((3, H, W) or (n, 3, H, W) in [-1, 1], the model's image size; a latent model encodes it with
                    its VAE) noised to the timestep `strength` picks, and run only the last int(steps * strength)
                    steps: 0 returns the image, 1 is nearly plain text-to-image. Diffusion models only.
    temperature, top_k  autoregressive models only (shapes32-ar, shapes32-ar-tokens): softmax temperature
                    (default 1; 0 = always the likeliest token) and keep only the k likeliest tokens (default all).
                    They write one token per model call, so steps and sampler do not apply to them (refused).
    seed            seeds the CPU generators that draw x_T and the sampler's noise: the same images on every device.
                    Image k starts from the generator's k-th draw of one x_T (SEED_RULE): as if all were drawn at
                    once, torch.randn((first + n, C, H, W), generator=torch.Generator().manual_seed(seed))[k];
                    its per-step noise (ddpm, lcm) comes from its own step_noise_generator(seed, k).
    n, first        images first, first + 1, ..., first + n - 1 of the seed's sequence (first=k, n=1: image k alone)
    batch_size      images per sampler call (default: `default_batch_size`); lower it when memory runs out. Only
                    float round-off depends on it.
    model           a text-conditional checkpoint name (in `directory`, default data/checkpoints) or a loaded
                    `Pretrained`; its text encoder (and VAE, for latent models) named in its JSON are loaded
                    from the same directory. Latent models sample latents, decoded once at the end.
    device          where to sample (default: a given Pretrained's device, else course_lib.device())
    callback        called with each step's StepRecord (on the CPU) of each batch, e.g. to show progress

    All n images and every step's records (2 * steps * n samples) stay in memory; for many images iterate over
    `generate_batches` instead, which holds one batch at a time.
    """
    batches = list(generate_batches(prompt, steps=steps, guidance_scale=guidance_scale, sampler=sampler, seed=seed,
                                    n=n, first=first, batch_size=batch_size, model=model, device=device,
                                    directory=directory, callback=callback, temperature=temperature, top_k=top_k,
                                    negative_prompt=negative_prompt, image=image, strength=strength))
    if len(batches) == 1:
        return batches[0]
    try:
        return _concatenate(batches)
    except RuntimeError as e:
        if not _out_of_memory(e):
            raise
        raise MemoryError(f"{n} images and their {steps} steps of records do not fit in memory together: iterate "
                          f"over generate_batches(...) to hold one batch at a time (the command line writes them "
                          f"to a directory: -o DIR/)") from e


def generate_batches(prompt: str, *, steps: int | None = None, guidance_scale: float | None = None,
                     sampler: str | None = None,
                     seed: int = 0, n: int = 4, first: int = 0, batch_size: int | None = None, model="shapes32-t2i",
                     device=None, directory=None, callback=None, temperature: float | None = None,
                     top_k: int | None = None, negative_prompt: str = "", image=None,
                     strength: float = 0.8) -> Iterator[Generation]:
    """`generate`, one batch at a time: yields a Generation of up to batch_size images (its `first` says which).

    Same arguments as `generate`. The arguments are checked and the checkpoint loaded when this is called; each
    batch is sampled when the loop asks for it, so memory holds one batch however large n is.
    """
    _check_arguments(prompt, steps, guidance_scale, sampler, seed, n, first, batch_size)
    from course_lib.models.clip import tokenize  # (open_clip is slow to import: not at import time)

    if not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt must be a str (\"\" = none), got {type(negative_prompt).__name__}")
    tokenize([prompt, negative_prompt])  # a too-long prompt fails here, before any checkpoint is loaded
    if isinstance(model, Pretrained):
        if device is not None and course_lib.device(device).type != course_lib.device_of(model.model).type:
            raise ValueError(f"device {device!r} differs from where the given model is "
                             f"({course_lib.device_of(model.model)}); move it with p.model.to(device), or pass device=None")
        device = course_lib.device_of(model.model)
    p = load_checkpoint(model, device, directory)
    encoder = load_text_encoder(p, device, directory)
    if encoder is None or (p.schedule is None and p.meta.get("kind") != "ar"):
        raise ValueError(f"checkpoint {p.meta.get('name')!r} is not text-conditional (its JSON names no "
                         f"text_encoder): generate() needs a text-conditional checkpoint such as {DEFAULT_MODEL!r}; "
                         f"sample unconditional models with course_lib.samplers or DenoisingPlayer")
    device = course_lib.device_of(p.model)
    p.model.eval()  # dropout off: the same seed must give the same images
    if p.meta.get("kind") == "ar":
        if image is not None:
            raise ValueError(f"img2img (image=, --image) is for diffusion models; {p.meta.get('name')!r} is "
                             f"autoregressive: it completes an image by forcing the known tokens instead")
        guidance_scale = DEFAULT_GUIDANCE["autoregressive"] if guidance_scale is None else guidance_scale
        return _autoregressive_batches(p, encoder, prompt, steps, sampler, guidance_scale, temperature, top_k, seed,
                                       n, first, batch_size, directory, callback, negative_prompt)
    if temperature is not None or top_k is not None:
        raise ValueError(f"temperature and top_k apply to autoregressive models (e.g. model='shapes32-ar'); "
                         f"{p.meta.get('name')!r} is a diffusion model: its randomness is the starting noise (seed)")
    steps, sampler = (20 if steps is None else steps), ("ddim" if sampler is None else sampler)
    guidance_scale = DEFAULT_GUIDANCE["diffusion"] if guidance_scale is None else guidance_scale
    eps_model = GuidedModel(p.model, *encoder(prompt), *encoder(negative_prompt), guidance_scale)  # (1, L, D) each
    decode = latent_decoder(p, device, directory)  # None for a pixel-space model
    batch_size = default_batch_size(p, device) if batch_size is None else int(batch_size)
    shape = sample_shape(p)  # (C, H, W) of one x_T: latents for a latent model
    sample = get_sampler(sampler)
    timesteps = make_timesteps(p.schedule, steps)
    init = None
    if image is not None:  # img2img: the image (latents of it) and the timesteps left to run
        init, timesteps = _img2img_start(p, image, strength, timesteps, n, device, directory)

    def batches() -> Iterator[Generation]:
        noise = torch.Generator().manual_seed(int(seed))  # x_T of image 0, 1, 2, ... in turn (SEED_RULE)
        _skip(noise, first, shape)
        for start in range(first, first + n, batch_size):
            size = min(batch_size, first + n - start)
            # one draw per image, so image k's x_T does not depend on its batch (torch's CPU randn fills 16 values
            # at a time: when C*H*W is a multiple of 16, as for every course model, these are the numbers of one
            # torch.randn((size, C, H, W)) draw, so earlier versions' and the DenoisingPlayer's images stay the same)
            x_T = torch.stack([torch.randn(shape, generator=noise) for _ in range(size)])  # (size, C, H, W)
            records = []

            def on_step(record: StepRecord) -> None:
                record = replace(record, x_t=record.x_t.cpu(), x0=record.x0.cpu())  # every other field as is
                records.append(record)
                if callback is not None:
                    callback(record)

            if init is not None:  # img2img: image k noised with image k's x_T draw to the first timestep left
                rows = init[start - first:start - first + size] if len(init) > 1 else init.expand(size, *shape)
                x_T = p.schedule.add_noise(rows, x_T, int(timesteps[0])) if len(timesteps) else rows
            try:
                samples = x_T.to(device) if len(timesteps) == 0 else \
                    sample(eps_model, x_T.to(device), p.schedule, timesteps, callback=on_step,
                           generator=[step_noise_generator(seed, k) for k in range(start, start + size)])
                images = samples.float().cpu() if decode is None else decode(samples)
            except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
                if not _out_of_memory(e):
                    raise
                raise MemoryError(_too_big(size, image_shape(p), device)) from e
            latents = None if decode is None else samples.float().cpu()
            yield Generation(images=images, records=records, latents=latents, decode=decode, first=start)

    return batches()


def _img2img_start(p: Pretrained, image, strength, timesteps, n: int, device, directory):
    """(the image as the sampler's start, (1 or n, C, H, W) on the CPU: VAE latents for a latent model; the last
    int(steps * strength) timesteps, as diffusers' img2img pipelines keep them)."""
    timesteps = strength_timesteps(timesteps, strength)  # ValueError for a strength outside [0, 1]
    image = image_batch(image, image_shape(p), n, "this model's size")  # (1 or n, 3, H, W)
    vae = pretrained.load_vae(p, device, directory)
    start = image if vae is None else encode_latents(vae, image)  # (1 or n, C, h, w)
    return start, timesteps


def _autoregressive_batches(p: Pretrained, encoder, prompt, steps, sampler, guidance_scale, temperature, top_k,
                            seed, n, first, batch_size, directory, callback,
                            negative_prompt: str = "") -> Iterator[Generation]:
    """generate_batches for an autoregressive checkpoint: `sample_tokens` writes every token of a batch, image k
    drawing from its own step_noise_generator(seed, k); records are FillFrames, one per scan line of pixels (or
    per code of a token model)."""
    name, calls = p.meta.get("name"), p.model.config.seq_len
    if steps is not None or sampler is not None:
        raise ValueError(f"{name!r} is autoregressive: it writes its {calls} tokens one model call each, so steps "
                         f"and sampler (diffusion options) do not apply; drop them (its options: temperature, top_k, "
                         f"guidance_scale)")
    temperature = 1.0 if temperature is None else temperature
    check_sampling(temperature, top_k, p.model.config.vocab_size)
    tokenizer = tokenizer_of(p, course_lib.device_of(p.model), directory)
    every = tokenizer.grid if tokenizer.kind == "pixels" else 1  # a frame per scan line, or per code
    batch_size = default_batch_size(p, course_lib.device_of(p.model)) if batch_size is None else int(batch_size)
    (cond, cond_mask), (uncond, uncond_mask) = encoder(prompt), encoder(negative_prompt)

    def batches() -> Iterator[Generation]:
        for start in range(first, first + n, batch_size):
            size, records = min(batch_size, first + n - start), []

            def on_call(record) -> None:
                if (record.step + 1) % every == 0:
                    records.append(FillFrame(record.step + 1, calls, tokenizer.canvas(record.tokens)))
                    if callback is not None:
                        callback(records[-1])

            tokens = sample_tokens(p.model, size, cond=cond, cond_mask=cond_mask, uncond=uncond,
                                   uncond_mask=uncond_mask, guidance_scale=guidance_scale, temperature=temperature,
                                   top_k=top_k, callback=on_call,
                                   generator=[step_noise_generator(seed, k) for k in range(start, start + size)])
            yield Generation(images=tokenizer.decode(tokens.cpu()), records=records, first=start)

    return batches()


def step_noise_generator(seed: int, k: int) -> torch.Generator:
    """Image k's own generator for a sampler's per-step noise (SEED_RULE): seeded from (seed, k) by numpy's
    SeedSequence, so no two images share a stream and none depends on the batch it is sampled in."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0]))


def default_batch_size(p: Pretrained, device) -> int:
    """Images per sampler call when none is given: BATCH_VALUES pixel values of the *decoded* images (a latent
    model's VAE decodes each batch at full size), so 64 shapes32 images on a CPU, 16 of 64x64."""
    budget = BATCH_VALUES["cpu" if torch.device(device).type == "cpu" else "accelerator"]
    return max(1, budget // math.prod(image_shape(p)))


def _skip(generator: torch.Generator, count: int, shape) -> None:
    """Advance the generator past `count` x_T draws, one at a time (no memory held), as if they had been drawn."""
    for _ in range(count):
        torch.randn(shape, generator=generator)


def _concatenate(batches: list[Generation]) -> Generation:
    """One Generation from consecutive batches: images, latents and each step's records joined along the batch."""
    records = [replace(r, x_t=torch.cat([b.records[i].x_t for b in batches]),
                       x0=torch.cat([b.records[i].x0 for b in batches])) for i, r in enumerate(batches[0].records)]
    latents = None if batches[0].latents is None else torch.cat([b.latents for b in batches])
    return Generation(images=torch.cat([b.images for b in batches]), records=records, latents=latents,
                      decode=batches[0].decode, first=batches[0].first)


def _out_of_memory(error: RuntimeError) -> bool:
    """An allocation failure: torch.OutOfMemoryError on an accelerator, "... you tried to allocate N bytes" on a CPU."""
    return isinstance(error, torch.OutOfMemoryError) or "allocate" in str(error)


def _too_big(size: int, shape, device) -> str:
    """The one-line message for a batch that does not fit, naming the fix."""
    one = "x".join(map(str, shape))  # the image's (C, H, W), e.g. 3x32x32
    if size == 1:
        return (f"one image ({one}) does not fit in {device} memory even at batch_size=1 (--batch-size 1): use a "
                f"smaller model or another device")
    return (f"a batch of {size} images of {one} does not fit in {device} memory: pass a smaller batch_size, e.g. "
            f"batch_size={max(1, size // 4)} (--batch-size {max(1, size // 4)} on the command line)")


def _check_arguments(prompt, steps, guidance_scale, sampler, seed, n, first, batch_size) -> None:
    """Clear errors for the caller's mistakes, before anything slow happens."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str (\"\" is the unconditional prompt), got {type(prompt).__name__} "
                        f"{prompt!r}")
    checks = [("n", n, 1, 4), ("seed", seed, 0, 0), ("first", first, 0, 0)]
    if steps is not None:  # None: 20 for a diffusion model (autoregressive models take none)
        checks.append(("steps", steps, 1, 20))
    if batch_size is not None:  # None: default_batch_size
        checks.append(("batch_size", batch_size, 1, 16))
    for name, value, low, example in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low} (e.g. {name}={example}), got {value!r}")
    if guidance_scale is not None and (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))
                                       or not guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a number >= 0 (1 = no guidance, 5 = strong), got {guidance_scale!r}")
    if sampler is not None:
        get_sampler(sampler)  # ValueError naming the valid samplers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.generate",
                                     description="Generate images from a text prompt with a text-to-image checkpoint.")
    parser.add_argument("prompt", help='e.g. "a small blue star at the top"; "" = unconditional samples')
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default 20; diffusion models only)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="CFG scale: 1 = none, 0 = ignore prompt (default 5; 2 for autoregressive models)")
    parser.add_argument("--sampler", default=None, help=f"one of {', '.join(samplers.SAMPLERS)} (default ddim; "
                                                        f"diffusion models only)")
    parser.add_argument("--negative-prompt", default="",
                        help='what to steer away from, e.g. "red" (replaces the empty prompt in guidance)')
    parser.add_argument("--image", default=None, help="img2img: start from this PNG (resized to the model's size)")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="img2img: how much of the image to redraw, 0..1 (default 0.8)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="autoregressive models only: softmax temperature (default 1; 0 = likeliest token)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="autoregressive models only: sample among the k likeliest tokens (default all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("-n", type=int, default=4, help=f"number of images (default 4); more than {GRID_MAX} need "
                                                        f"a directory: -o DIR/")
    parser.add_argument("--first", type=int, default=0,
                        help="index of the first image in the seed's sequence (default 0): --first K -n 1 "
                             "regenerates image K of a run alone")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per sampler call (default: 64 32x32 images on a CPU, fewer if larger, more on "
                             "a GPU); lower it if memory runs out")
    parser.add_argument("-o", "--out", default="generated.png",
                        help=f"a .png file: one grid of up to {GRID_MAX} images (default generated.png); or a "
                             f"directory ending in '/' (created if missing): numbered PNGs 000000.png ... and "
                             f"generation.json")
    parser.add_argument("--gif", action="store_true", help="also write <out stem>.gif: the denoising, step by step")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint name (default {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint-dir", default=None,
                        help=f"where the checkpoints are (default {pretrained.CHECKPOINT_DIR})")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscale of the written images (default 4)")
    args = parser.parse_args(argv)
    out, into_directory = _check_out(parser, args)
    if args.scale < 1:
        parser.error(f"--scale must be an int >= 1, got {args.scale}")
    settings = dict(steps=args.steps, guidance_scale=args.guidance_scale, sampler=args.sampler, seed=args.seed,
                    first=args.first, temperature=args.temperature, top_k=args.top_k,
                    negative_prompt=args.negative_prompt, strength=args.strength)
    options = dict(n=args.n, batch_size=args.batch_size, model=args.model, device=args.device,
                   directory=args.checkpoint_dir, image=None)
    if args.image is not None:
        options["image"] = _read_image(parser, args.image, args.model, args.device, args.checkpoint_dir)
    try:
        if not into_directory:
            result = generate(args.prompt, **settings, **options)
        else:
            batches = generate_batches(args.prompt, **settings, **options)  # checks everything before the mkdir
            out.mkdir(parents=True, exist_ok=True)
            count = save_numbered_pngs(batches, out, args.n, scale=args.scale)
    except (TypeError, ValueError, MemoryError, CheckpointNotFoundError, CheckpointError) as e:
        parser.error(str(e))  # one line and exit status 2, not a traceback
    if into_directory:
        p = load_checkpoint(args.model, args.device, args.checkpoint_dir)  # cached: the one generate_batches used
        given = lambda value, default: default if value is None else value  # noqa: E731
        if p.meta.get("kind") == "ar":  # the settings this run used, defaults filled in
            used = {**settings, "temperature": given(args.temperature, 1.0),
                    "guidance_scale": given(args.guidance_scale, DEFAULT_GUIDANCE["autoregressive"])}
        else:
            used = {**settings, "steps": given(args.steps, 20), "sampler": given(args.sampler, "ddim"),
                    "guidance_scale": given(args.guidance_scale, DEFAULT_GUIDANCE["diffusion"])}
        record = {"prompt": args.prompt, **used, "count": count, "model": args.model,
                  "checkpoint_dir": args.checkpoint_dir, "device": str(course_lib.device_of(p.model)),
                  "batch_size": args.batch_size or default_batch_size(p, course_lib.device_of(p.model)),
                  "scale": args.scale,
                  "files": "image k is <k>.png, k = first ... first + count - 1, zero-padded to at least 6 digits",
                  "seed_rule": SEED_RULE}
        (out / "generation.json").write_text(json.dumps(record, indent=1) + "\n")  # written last: the run finished
        print(f"wrote {count} PNGs and generation.json to {out}")
        return
    written = [save_png(result.images, out, scale=args.scale)]
    if args.gif:
        written.append(save_gif(result.records, out.with_suffix(".gif"), scale=args.scale, decode=result.decode))
    print(f"wrote {', '.join(str(p) for p in written)}")


def _read_image(parser: argparse.ArgumentParser, path: str, model: str, device, directory) -> torch.Tensor:
    """--image FILE as (3, H, W) in [-1, 1] at the model's image size (box-filtered: a PNG written with --scale k
    comes back exactly)."""
    try:
        _, height, width = image_shape(load_checkpoint(model, device, directory))
        return read_image(path, (height, width))
    except (OSError, ValueError, CheckpointNotFoundError, CheckpointError) as e:
        parser.error(f"--image: {e}")


def _check_out(parser: argparse.ArgumentParser, args) -> tuple[Path, bool]:
    """(path, whether it is a directory for numbered PNGs): -o names a grid file, or a directory when it ends in
    '/'; every mistake is a usage error, before any work."""
    out = Path(args.out)
    if args.out.endswith(("/", "\\")):
        if out.exists() and not out.is_dir():
            parser.error(f"-o {args.out!r} ends in '/' but {out} is a file; name a directory")
        if args.gif:
            parser.error(f"--gif animates one grid: use it with -o FILE.png and -n <= {GRID_MAX}")
        return out, True
    if out.is_dir():
        parser.error(f"-o {args.out!r} is a directory: end it with '/' ({args.out}/) to write numbered PNGs into it")
    if out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, or a directory ending in '/', got {args.out!r}")
    if args.n > GRID_MAX:
        parser.error(f"-n {args.n} is more than one grid ({GRID_MAX} images): pass a directory ending in '/' to -o, "
                     f"e.g. -o {out.with_suffix('')}/, to write numbered PNGs")
    if not out.parent.is_dir():
        parser.error(f"directory {out.parent} does not exist: create it, or pass a directory ending in '/' to -o "
                     f"(created if missing) to write numbered PNGs")
    return out, False


if __name__ == "__main__":
    main()
