"""Benchmarks, run as whole programs: `python -m course_lib.bench player` or `python -m course_lib.bench train`.

player: how long a student waits after moving the DenoisingPlayer's slider, with a shipped model (`--model`,
        default shapes32-unet; a text-to-image one samples with a prompt and guidance, i.e. a doubled batch):
        time to the first frame on screen and to the last frame of a 20-step, 4-image run.
generate: seconds for `course_lib.generate` (20 steps, 4 images, guidance 5), decoding included for latent models.
train:  training throughput (images/s) of a recipe's model on this machine's device.
Each figure is the median of several runs after one warm-up; nothing here is asserted.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import torch

import course_lib


def bench_player(name: str = "shapes32-unet", steps: int = 20, n: int = 4, repeats: int = 5, device=None) -> dict:
    """Median ms from a settings change to the first and to the last frame the player shows."""
    from course_lib.widgets import DenoisingPlayer

    player = DenoisingPlayer.from_pretrained(name, device=device, n=n, steps=steps, seed=0,  # warm-up run
                                             prompt="a small blue star at the top", guidance_scale=5.0)
    frame_times: list[float] = []
    player.image.observe(lambda change: frame_times.append(time.perf_counter()), names="value")
    first, last = [], []
    for seed in range(1, repeats + 1):  # a new seed each time: never a cache hit
        frame_times.clear()
        start = time.perf_counter()
        player.seed_box.value = seed  # the same path as a student's change: observe -> sample live
        done = time.perf_counter()
        first.append((frame_times[0] - start) * 1000)
        last.append((done - start) * 1000)
    return {"model": name, "device": str(player.device),
            "threads": torch.get_num_threads(), "steps": steps, "images": n,
            "first_frame_ms": statistics.median(first), "final_frame_ms": statistics.median(last)}


def bench_generate(name: str = "shapes32-t2i", steps: int = 20, n: int = 4, repeats: int = 5, device=None) -> dict:
    """Median seconds of generate(prompt, steps, n images, guidance 5), VAE decode included (latent models)."""
    from course_lib.compare import generate_seconds

    seconds = generate_seconds(name, steps=steps, n=n, repeats=repeats, device=device)
    return {"model": name, "device": str(course_lib.device(device)), "threads": torch.get_num_threads(),
            "steps": steps, "images": n, "seconds": seconds}


def bench_train(recipe_name: str = "shapes32-unet", steps: int = 30, batch_size: int | None = None, device=None) -> dict:
    """Training images/s of a recipe's model (fresh weights, real data, the real train loop)."""
    from course_lib.recipes import get_recipe, load_data
    from course_lib.schedules import NoiseSchedule
    from course_lib.training import train

    recipe = get_recipe(recipe_name)
    device = torch.device(device) if device is not None else course_lib.device()
    config = dataclasses.replace(recipe.train, steps=steps, warmup=1, ckpt_every=0,
                                 **({"batch_size": batch_size} if batch_size else {}))
    data = load_data(dataclasses.replace(recipe.data, n=min(recipe.data.n, 4 * config.batch_size)))
    schedule = NoiseSchedule.from_name(recipe.schedule, recipe.num_train_timesteps)
    train(recipe.build_model(), schedule, data, dataclasses.replace(config, steps=3), device=device, progress=False)
    result = train(recipe.build_model(), schedule, data, config, device=device, progress=False)  # after warm-up
    return {"recipe": recipe_name, "device": str(device), "batch_size": config.batch_size, "steps": steps,
            "images_per_s": result.images_per_s}


def main(argv=None) -> None:
    """Command-line entry point."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["player", "generate", "train"])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    parser.add_argument("--model", default=None,
                        help="player: checkpoint (default shapes32-unet); generate: (default shapes32-t2i)")
    parser.add_argument("--repeats", type=int, default=5, help="player: timed runs (median reported)")
    parser.add_argument("--steps", type=int, default=None, help="player: sampling steps (20); train: steps (30)")
    parser.add_argument("--batch-size", type=int, default=None, help="train: override the recipe's batch size")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.what == "player":
        r = bench_player(args.model or "shapes32-unet", steps=args.steps or 20, repeats=args.repeats,
                         device=args.device)
        print(f"player ({r['model']}, {r['steps']} steps x {r['images']} images, {r['device']}, "
              f"{r['threads']} threads): first frame {r['first_frame_ms']:.0f} ms, "
              f"final frame {r['final_frame_ms']:.0f} ms (medians of {args.repeats})")
    elif args.what == "generate":
        r = bench_generate(args.model or "shapes32-t2i", steps=args.steps or 20, repeats=args.repeats,
                           device=args.device)
        print(f"generate ({r['model']}, {r['steps']} steps x {r['images']} images incl. decode, {r['device']}, "
              f"{r['threads']} threads): {r['seconds']:.2f} s (median of {args.repeats})")
    else:
        r = bench_train(steps=args.steps or 30, batch_size=args.batch_size, device=args.device)
        print(f"train ({r['recipe']}, batch {r['batch_size']}, {r['device']}): {r['images_per_s']:.0f} images/s")


if __name__ == "__main__":
    main()
