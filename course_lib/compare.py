"""Pixel space vs latent space, measured side by side: chapter 4's table.

For each text-to-image checkpoint: how many numbers the sampler works on per image, GFLOPs of one denoising
step (classifier-free guidance included: two network passes) and of the final VAE decode, CPU seconds per
image for a whole `generate` call, and the quality numbers of `course_lib.evaluation` (prompt accuracy and
Fréchet distance in the shapes classifier's feature space) at one guidance scale.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from course_lib import evaluation
from course_lib import generate as pipeline

MODELS = ("shapes64-t2i", "shapes64-latent-t2i")  # the same 64x64 images: pixel space vs 8x8x4 latents


def _flops(fn) -> int:
    """Floating-point operations torch counts for fn() (matmuls and convolutions: 2 per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def gflops_per_step(model="shapes64-latent-t2i", *, guided: bool = True, directory=None) -> float:
    """GFLOPs of one denoising step for ONE image: a network call on a batch of 2 (cond + uncond) if guided.

    An unconditional checkpoint has nothing to guide: one plain call, whatever `guided` says.
    """
    p = pipeline.load_checkpoint(model, "cpu", directory)
    encoder = pipeline.load_text_encoder(p, "cpu", directory)
    batch = 2 if guided and encoder is not None else 1
    tokens, mask = encoder(["a red circle"] * batch) if encoder is not None else (None, None)
    x = torch.zeros(batch, *pipeline.sample_shape(p))  # (batch, C, H, W): the sampler's space
    t = torch.full((batch,), 500)
    return _flops(lambda: p.model(x, t, cond=tokens, cond_mask=mask)) / 1e9


def decode_gflops(model="shapes64-latent-t2i", *, directory=None) -> float:
    """GFLOPs of turning one sample into an image: the VAE decode for a latent model, 0 for a pixel model."""
    p = pipeline.load_checkpoint(model, "cpu", directory)
    decode = pipeline.load_decoder(p, "cpu", directory)
    if decode is None:
        return 0.0
    z = torch.zeros(1, *pipeline.sample_shape(p))  # (1, 4, h, w)
    return _flops(lambda: decode(z)) / 1e9


def generate_seconds(model="shapes64-latent-t2i", *, steps: int = 20, n: int = 4, repeats: int = 3, device="cpu",
                     directory=None) -> float:
    """Median wall seconds of one generate(steps, n images, guidance 5) call after a warm-up (decode included)."""
    prompt = "a small blue star at the top"
    pipeline.generate(prompt, steps=steps, n=n, model=model, device=device, directory=directory)  # loads once
    times = []
    for seed in range(1, repeats + 1):  # a new seed each time
        start = time.perf_counter()
        pipeline.generate(prompt, steps=steps, n=n, seed=seed, model=model, device=device, directory=directory)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds_per_image(model="shapes64-latent-t2i", *, steps: int = 20, n: int = 4, repeats: int = 3,
                      directory=None) -> float:
    """Median wall seconds of generate(steps, n images) on the CPU divided by n (decode included)."""
    return generate_seconds(model, steps=steps, n=n, repeats=repeats, device="cpu", directory=directory) / n


def pixel_vs_latent(models=MODELS, *, prompts=None, guidance_scale: float = 5.0, steps: int = 20,
                    n_per_prompt: int = 2, repeats: int = 3, directory=None) -> list[dict]:
    """One row per checkpoint: sampler numbers per image, GFLOPs per step and per decode, CPU s/image, quality.

    prompts: evaluation.Prompt list (default 12 fresh prompts); every model gets the same prompts and seeds.
    """
    prompts = evaluation.fresh_prompts(12) if prompts is None else prompts
    rows = []
    for name in models:
        p = pipeline.load_checkpoint(name, "cpu", directory)
        c, h, w = pipeline.sample_shape(p)
        sweep = evaluation.cfg_sweep([guidance_scale], prompts, steps=steps, n_per_prompt=n_per_prompt,
                                     model=p, directory=directory, device="cpu")
        rows.append({"model": name, "space": f"{h}x{w}x{c}", "numbers_per_image": c * h * w,
                     "gflops_per_step": gflops_per_step(p, directory=directory),
                     "decode_gflops": decode_gflops(p, directory=directory),
                     "cpu_s_per_image": seconds_per_image(p, steps=steps, repeats=repeats, directory=directory),
                     "prompt_accuracy": sweep.rows[0]["prompt_accuracy"],
                     "attribute_accuracy": {k[:-len("_accuracy")]: v for k, v in sweep.rows[0].items()
                                            if k.endswith("_accuracy") and k != "prompt_accuracy"},
                     "frechet_distance": sweep.rows[0]["frechet_distance"],
                     "real_vs_real_fd": sweep.baseline["frechet_distance"]})
    return rows


def main(argv=None) -> None:
    """`python -m course_lib.compare [--prompts N] [--per-prompt N] [-o FILE]`: the table, printed and saved."""
    import argparse
    import json
    from pathlib import Path

    from course_lib.pretrained import CHECKPOINT_DIR, CheckpointError, CheckpointNotFoundError

    parser = argparse.ArgumentParser(prog="python -m course_lib.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48, help="fresh prompts (default 48)")
    parser.add_argument("--per-prompt", type=int, default=4, help="images per prompt (default 4)")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale for both models (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("-o", "--output", default=str(CHECKPOINT_DIR.parent / "pixel_vs_latent.json"))
    args = parser.parse_args(argv)
    if min(args.prompts, args.per_prompt, args.steps) < 1 or args.guidance_scale < 0:
        parser.error("--prompts, --per-prompt and --steps must be >= 1, --guidance-scale >= 0")
    try:
        rows = pixel_vs_latent(prompts=evaluation.fresh_prompts(args.prompts), guidance_scale=args.guidance_scale,
                               steps=args.steps, n_per_prompt=args.per_prompt)
    except (ValueError, CheckpointError, CheckpointNotFoundError) as e:
        parser.error(str(e))
    record = {"rows": rows, "threads": torch.get_num_threads(),
              "settings": {"prompts": args.prompts, "per_prompt": args.per_prompt,
                           "guidance_scale": args.guidance_scale, "steps": args.steps},
              "command": f"python -m course_lib.compare --prompts {args.prompts} --per-prompt {args.per_prompt} "
                         f"--guidance-scale {args.guidance_scale:g} --steps {args.steps}"}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    for row in rows:
        print(row)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
