"""Text to image in one call: `generate("a small blue star at the top")`, or from a shell:

    python -m course_lib.generate "a small blue star at the top" --steps 20 --guidance-scale 5 -o star.png --gif

A thin layer over the pieces of the course: the checkpoint (`pretrained.load_checkpoint`) names its frozen text
encoder (`pretrained.load_text_encoder`) and, for latent models, its VAE (`latent.latent_decoder`); the prompt
becomes token embeddings, `GuidedModel` applies classifier-free guidance (Ho & Salimans 2022), and a sampler
from `course_lib.samplers` owns the loop. Nothing here does diffusion math.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import course_lib
from course_lib import pretrained
from course_lib.guidance import GuidedModel
from course_lib.images import grid, label_rows, png_bytes, upscale
from course_lib.latent import latent_decoder
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError, Pretrained, load_checkpoint, \
    load_text_encoder, sample_shape
from course_lib.samplers import StepRecord, get_sampler, make_timesteps

DEFAULT_MODEL = "shapes32-t2i"  # the shipped text-to-image U-Net (retrain: python -m course_lib.train shapes32-t2i)


@dataclass
class Generation:
    """What `generate` returns; everything on the CPU."""

    images: torch.Tensor  # (n, 3, H, W) final images in [-1, 1] (not clipped: the sampler's output, decoded if latent)
    records: list[StepRecord]  # one per sampler step: x_t after the step and the predicted x0 (latents if latent)
    latents: torch.Tensor | None = None  # latent models: the sampler's output (n, 4, h, w) before decoding
    decode: Callable | None = None  # latent models: latents -> images (e.g. for the records); None for pixels


# ----- the pipeline ------------------------------------------------------------------------------------------------
def generate(prompt: str, *, steps: int = 20, guidance_scale: float = 5.0, sampler: str = "ddim", seed: int = 0,
             n: int = 4, model="shapes32-t2i", device=None, directory=None, callback=None) -> Generation:
    """Sample n images for a prompt with classifier-free guidance (Ho & Salimans 2022) and a DDIM/DDPM sampler.

    prompt          a caption like "a small blue star at the top". The empty prompt "" is the *unconditional*
                    prompt (the one the model saw when captions were dropped in training): it gives unconditional
                    samples, whatever guidance_scale is.
    steps           number of sampler steps (>= 1; trailing spacing, see `samplers.make_timesteps`)
    guidance_scale  diffusers' convention: 1 = no guidance (the plain conditional model), 0 = ignore the prompt,
                    > 1 = follow the prompt more strongly (fewer kinds of images)
    sampler         a name from `samplers.SAMPLERS` ("ddim", "ddpm")
    seed            seeds one CPU generator that draws x_T and the sampler's noise: the same images on every device
    model           a text-conditional checkpoint name (in `directory`, default data/checkpoints) or a loaded
                    `Pretrained`; its text encoder (and VAE, for latent models) named in its JSON are loaded
                    from the same directory. Latent models sample latents, decoded once at the end.
    device          where to sample (default: a given Pretrained's device, else course_lib.device())
    callback        called with each step's StepRecord (on the CPU), e.g. to show progress
    """
    _check_arguments(prompt, steps, guidance_scale, sampler, seed, n)
    from course_lib.models.clip import tokenize  # (open_clip is slow to import: not at import time)

    tokenize(prompt)  # a too-long prompt fails here, before any checkpoint is loaded
    if isinstance(model, Pretrained):
        if device is not None and course_lib.device(device).type != course_lib.device_of(model.model).type:
            raise ValueError(f"device {device!r} differs from where the given model is "
                             f"({course_lib.device_of(model.model)}); move it with p.model.to(device), or pass device=None")
        device = course_lib.device_of(model.model)
    p = load_checkpoint(model, device, directory)
    encoder = load_text_encoder(p, device, directory)
    if encoder is None or p.schedule is None:
        raise ValueError(f"checkpoint {p.meta.get('name')!r} is not text-conditional (its JSON names no "
                         f"text_encoder): generate() needs a text-conditional checkpoint such as {DEFAULT_MODEL!r}; "
                         f"sample unconditional models with course_lib.samplers or DenoisingPlayer")
    device = course_lib.device_of(p.model)
    p.model.eval()  # dropout off: the same seed must give the same images

    eps_model = GuidedModel(p.model, *encoder(prompt), *encoder(""), guidance_scale)  # cond (1, L, D), uncond
    generator = torch.Generator().manual_seed(int(seed))
    decode = latent_decoder(p, device, directory)  # None for a pixel-space model
    x_T = torch.randn((n, *sample_shape(p)), generator=generator).to(device)  # (n, C, H, W), drawn on the CPU
    records = []

    def on_step(record: StepRecord) -> None:
        record = StepRecord(record.step, record.t, record.x_t.cpu(), record.x0.cpu())
        records.append(record)
        if callback is not None:
            callback(record)

    samples = get_sampler(sampler)(eps_model, x_T, p.schedule, make_timesteps(p.schedule, steps),
                                   callback=on_step, generator=generator)  # the generator goes on drawing DDPM noise
    if decode is None:
        return Generation(images=samples.float().cpu(), records=records)
    return Generation(images=decode(samples), records=records, latents=samples.float().cpu(), decode=decode)


def _check_arguments(prompt, steps, guidance_scale, sampler, seed, n) -> None:
    """Clear errors for the caller's mistakes, before anything slow happens."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str (\"\" is the unconditional prompt), got {type(prompt).__name__} "
                        f"{prompt!r}")
    for name, value, low, example in (("steps", steps, 1, 20), ("n", n, 1, 4), ("seed", seed, 0, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low} (e.g. {name}={example}), got {value!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be a number >= 0 (1 = no guidance, 5 = strong), got {guidance_scale!r}")
    get_sampler(sampler)  # ValueError naming the valid samplers


# ----- files: a PNG grid and a GIF of the denoising -----------------------------------------------------------------
def save_png(images: torch.Tensor, path, scale: int = 4) -> Path:
    """The images (n, C, H, W) in [-1, 1] side by side, nearest-upscaled by `scale`, as a PNG file."""
    path = Path(path)
    path.write_bytes(png_bytes(grid(images, nrow=len(images)), scale=scale))
    return path


def save_gif(records: list[StepRecord], path, scale: int = 4, frame_ms: int = 150, decode=None) -> Path:
    """One GIF frame per sampler step: the samples x_t on top, the predicted x0 below; the last frame lingers.

    decode: latents -> images for the records of a latent model (`Generation.decode`)."""
    from PIL import Image

    frames = []
    for r in records:
        x_t, x0 = (r.x_t, r.x0) if decode is None else (decode(r.x_t), decode(r.x0))
        tiles = grid(torch.cat([x_t[:, :3], x0[:, :3]]), nrow=len(r.x_t))  # (2 rows, n columns) of images
        # the step number in the label also keeps Pillow from merging two look-alike frames into one
        labels = [f"x_t {r.step + 1}/{len(records)}", "predicted x0"]
        frames.append(Image.fromarray(label_rows(upscale(tiles, scale), labels)))
    durations = [frame_ms] * (len(frames) - 1) + [2000]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.generate",
                                     description="Generate images from a text prompt with a text-to-image checkpoint.")
    parser.add_argument("prompt", help='e.g. "a small blue star at the top"; "" = unconditional samples')
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale: 1 = none, 0 = ignore prompt")
    parser.add_argument("--sampler", default="ddim", help="ddim or ddpm (default ddim)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    parser.add_argument("-o", "--out", default="generated.png", help="PNG file to write (default generated.png)")
    parser.add_argument("--gif", action="store_true", help="also write <out stem>.gif: the denoising, step by step")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint name (default {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint-dir", default=None,
                        help=f"where the checkpoints are (default {pretrained.CHECKPOINT_DIR})")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    parser.add_argument("--scale", type=int, default=4, help="pixel upscale of the written images (default 4)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {args.out!r}")
    if args.scale < 1:
        parser.error(f"--scale must be an int >= 1, got {args.scale}")
    try:
        result = generate(args.prompt, steps=args.steps, guidance_scale=args.guidance_scale, sampler=args.sampler,
                          seed=args.seed, n=args.n, model=args.model, device=args.device,
                          directory=args.checkpoint_dir)
    except (TypeError, ValueError, CheckpointNotFoundError, CheckpointError) as e:
        parser.error(str(e))  # one line and exit status 2, not a traceback
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [save_png(result.images, out, scale=args.scale)]
    if args.gif:
        written.append(save_gif(result.records, out.with_suffix(".gif"), scale=args.scale, decode=result.decode))
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
