"""Timings, run as whole programs: `python -m course_lib.bench {player,generate,train,samplers}`.

player:   how long a student waits after moving the DenoisingPlayer's slider, with a shipped model (`--model`,
          default shapes32-unet; a text-to-image one samples with a prompt and guidance, i.e. a doubled batch):
          time to the first frame on screen and to the last frame of a 20-step, 4-image run.
generate: seconds for `course_lib.generate` (20 steps, 4 images, guidance 5), decoding included for latent models.
train:    training throughput (images/s) of any recipe's model (`--recipe`, default shapes32-unet) in the real loop.
samplers: each sampler's own work per step (everything but the model call: a free model returns a fixed eps), as a
          multiple of one bare `x + c * d` update of the same tensor.
Each figure is the median of several runs after one warm-up; nothing here is asserted. Chapter 4's table takes
its CPU seconds from `generate_seconds`; training throughput comes from `training.time_steps`, which
--time-budget plans with too.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import torch

import course_lib
from course_lib.generate import generate
from course_lib.recipes import RECIPES, get_recipe
from course_lib.samplers import SAMPLERS, make_timesteps
from course_lib.schedules import NoiseSchedule
from course_lib.training import time_steps
from course_lib.widgets import DenoisingPlayer


def bench_player(name: str = "shapes32-unet", steps: int = 20, n: int = 4, repeats: int = 5, device=None) -> dict:
    """Median ms from a settings change to the first and to the last frame the player shows."""
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


def generate_seconds(model="shapes64-latent-t2i", *, steps: int = 20, n: int = 4, repeats: int = 3, device="cpu",
                     directory=None) -> float:
    """Median wall seconds of one generate(steps, n images, guidance 5) call after a warm-up (decode included)."""
    prompt = "a small blue star at the top"
    generate(prompt, steps=steps, n=n, model=model, device=device, directory=directory)  # loads once
    times = []
    for seed in range(1, repeats + 1):  # a new seed each time
        start = time.perf_counter()
        generate(prompt, steps=steps, n=n, seed=seed, model=model, device=device, directory=directory)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_generate(name: str = "shapes32-t2i", steps: int = 20, n: int = 4, repeats: int = 5, device=None) -> dict:
    """Median seconds of generate(prompt, steps, n images, guidance 5), VAE decode included (latent models)."""
    seconds = generate_seconds(name, steps=steps, n=n, repeats=repeats, device=device)
    return {"model": name, "device": str(course_lib.device(device)), "threads": torch.get_num_threads(),
            "steps": steps, "images": n, "seconds": seconds}


def bench_train(recipe_name: str = "shapes32-unet", steps: int = 30, batch_size: int | None = None,
                device=None) -> dict:
    """Training images/s of a recipe's model (fresh weights, its real data and objective, the real loop)."""
    recipe = get_recipe(recipe_name)
    device = torch.device(device) if device is not None else course_lib.device()
    config = dataclasses.replace(recipe.train, **({"batch_size": batch_size} if batch_size else {}))
    # A few batches' worth of data is enough to time a step (and far quicker to render than the recipe's).
    small = dataclasses.replace(recipe.data, n=min(recipe.data.n, 4 * config.batch_size))
    prepared = recipe.task.prepare(small, device)
    result = time_steps(recipe.build_model(), prepared.loss_fn, prepared.data, config, steps=steps, warmup_steps=3,
                        device=device)
    return {"recipe": recipe_name, "device": str(device), "batch_size": config.batch_size, "steps": steps,
            "images_per_s": result.images_per_s}


def bench_samplers(shape=(64, 3, 32, 32), steps: int = 50, repeats: int = 5, device=None) -> list[dict]:
    """Per sampler: median microseconds per step with a model that costs nothing, and that as a multiple of one
    bare Euler-style update x + c * d on a tensor of the same shape (the least any sampler step must do)."""
    device = course_lib.device(device)
    schedule = NoiseSchedule.linear()
    x, d = (torch.randn(shape, generator=torch.Generator().manual_seed(s)).to(device) for s in (0, 1))
    free_model = lambda x_t, t: d  # noqa: E731  (a fixed eps: no network time at all)

    def median_seconds(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def bare():
        y = x
        for _ in range(steps):
            y = y + 0.01 * d
        return y

    bare_step = median_seconds(bare) / steps
    timesteps = make_timesteps(schedule, steps)
    rows = []
    for name, fn in SAMPLERS.items():
        per_step = median_seconds(lambda: fn(free_model, x, schedule, timesteps,
                                             generator=torch.Generator().manual_seed(0))) / steps
        rows.append({"sampler": name, "us_per_step": per_step * 1e6, "bare_update_us": bare_step * 1e6,
                     "ratio": per_step / bare_step, "shape": list(shape), "device": str(device)})
    return rows


def main(argv=None) -> None:
    """Command-line entry point."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["player", "generate", "train", "samplers"])
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    parser.add_argument("--model", default=None,
                        help="player: checkpoint (default shapes32-unet); generate: (default shapes32-t2i)")
    parser.add_argument("--recipe", default="shapes32-unet", help=f"train: one of {', '.join(RECIPES)}")
    parser.add_argument("--repeats", type=int, default=5, help="player, generate: timed runs (median reported)")
    parser.add_argument("--steps", type=int, default=None, help="player, generate: sampling steps (20); "
                                                                "train: steps (30); samplers: steps (50)")
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
    elif args.what == "samplers":
        rows = bench_samplers(steps=args.steps or 50, repeats=args.repeats, device=args.device)
        print(f"sampler work per step, free model, {rows[0]['shape']} on {rows[0]['device']} "
              f"(bare x + c*d: {rows[0]['bare_update_us']:.0f} us):")
        for r in rows:
            print(f"  {r['sampler']:>9}: {r['us_per_step']:7.0f} us/step = {r['ratio']:.2f} x the bare update")
    else:
        try:
            r = bench_train(args.recipe, steps=args.steps or 30, batch_size=args.batch_size, device=args.device)
        except ValueError as e:
            parser.error(str(e))
        print(f"train ({r['recipe']}, batch {r['batch_size']}, {r['device']}): {r['images_per_s']:.0f} images/s")


if __name__ == "__main__":
    main()
