"""Recreate a shipped checkpoint: `python -m course_lib.train RECIPE [--out DIR] [--steps N] [--batch-size N]`.

(`--device D` picks the device; default `course_lib.device()`. `--time-budget SECONDS` measures the throughput
for a few steps first and trains as many steps as fit; the JSON then records the plain `--steps N` command.)
On several GPUs (or CPU processes): `torchrun --nproc_per_node=N -m course_lib.train RECIPE ...`; `--batch-size`
stays the global batch (README: "Training on more GPUs").

Every recipe, whatever its model, goes through `run`: build the model, let its task prepare data and objective,
train with `course_lib.training.train` (resuming from `<out>/<name>.train.safetensors` if a previous run was
interrupted), let the task record its metrics, save the weights with `course_lib.pretrained.save` and the JSON
written by `provenance`, the task's preview `<name>.png` if it has one, and finally measure the recipe's quality
floor on the saved checkpoint and add it to the JSON ("quality_floor").
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import torch

import course_lib
from course_lib import distributed, floors, pretrained
from course_lib.recipes import RECIPES, Recipe, get_recipe
from course_lib.training import TrainConfig, TrainResult, saved_train_config, time_steps, train

SAFETY = 0.8  # fraction of the probed throughput that --time-budget plans with


def init_from_checkpoint(model: torch.nn.Module, name: str) -> list[str]:
    """Copy checkpoint `name`'s weights into `model`; returns the model's keys it lacked (they keep their init).

    Every weight of the checkpoint must fit the model: a fine-tuned model may add layers, never change them.
    """
    source = pretrained.load(name, device="cpu").model.state_dict()
    own = model.state_dict()
    misfit = [k for k, v in source.items() if k not in own or own[k].shape != v.shape]
    if misfit:
        raise ValueError(f"checkpoint {name!r} does not fit this model ({len(misfit)} weights, e.g. {misfit[:3]}); "
                         f"init_from must name a checkpoint of the same architecture minus added layers")
    model.load_state_dict(source, strict=False)
    return [k for k in own if k not in source]


def fitting_steps(model, loss_fn, data, config: TrainConfig, seconds: float, *, device=None) -> int:
    """How many steps of `config` fit in `seconds`: time 40 steps on a throwaway copy (after 10 warm-up steps).

    Plans for 80% of the measured rate (a short probe runs fast: on an H200 one measured 26 steps/s, and the
    5-minute run then averaged 20), rounded down to a multiple of 100, at least config.warmup + 100. Under
    torchrun every rank probes together and all use rank 0's count.
    """
    timed = time_steps(model, loss_fn, data, config, steps=40, warmup_steps=10, device=device)
    steps = distributed.broadcast(int(SAFETY * seconds * 40 / timed.seconds) // 100 * 100)
    if distributed.rank() == 0:
        print(f"time budget {seconds:.0f} s at {40 / timed.seconds:.1f} steps/s -> {steps} steps")
    return max(steps, config.warmup + 100)


def _command_with_steps(command: str | None, steps: int) -> str | None:
    """`command` with --time-budget (and --out) dropped and --steps set: the run's reproducible form."""
    if command is None:
        return None
    words, kept = shlex.split(command), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--time-budget", "--out", "--steps"):
            skip = True
        elif not word.startswith(("--time-budget=", "--out=", "--steps=")):
            kept.append(word)
    return shlex.join([*kept, "--steps", str(steps)])


def _window_means(values: list[float], every: int) -> list[float]:
    """Means of consecutive windows of `every` values (the last window may be shorter)."""
    return [sum(values[i:i + every]) / len(values[i:i + every]) for i in range(0, len(values), every)]


def provenance(recipe: Recipe, config: TrainConfig, result: TrainResult, *, command: str | None, device,
               fields: dict) -> dict:
    """The JSON written next to every checkpoint: what made it (recipe, data, config, command, hardware) and what
    it measured. `fields` are the task's record (its "metrics", and names such as "text_encoder")."""
    fields = dict(fields)
    tail = result.history[-100:]  # one step's loss is noisy: the mean of the last 100
    every = config.log_every
    curve = {"every": every, "note": f"each entry is the mean of {every} consecutive steps",
             "loss": _window_means(result.history, every),
             **{name: _window_means(values, every) for name, values in result.components.items()}}
    metrics = {**fields.pop("metrics", {}), "train_images_per_s": round(result.images_per_s, 1),
               "device": course_lib.device_name(device)}
    return {"description": recipe.description, "data": dataclasses.asdict(recipe.data), "steps": result.steps,
            "final_loss": sum(tail) / len(tail), "metrics": metrics, "command": command,
            "train_config": dataclasses.asdict(config), "world_size": result.world_size,
            "task": {"kind": type(recipe.task).__name__, **dataclasses.asdict(recipe.task)},
            "init_from": recipe.init_from, **fields, "loss_curve": curve}


def run(recipe: Recipe, *, out=None, steps=None, batch_size=None, device=None, command=None,
        progress=True, time_budget: float | None = None) -> Path:
    """Train `recipe` and save its weights + JSON (+ preview PNG) in `out`; returns the weights path.

    time_budget: seconds to train for: measure the throughput, then train `fitting_steps` steps (capped by
    `steps` when that is given too). The JSON's command is then the equivalent `--steps N` run.
    Under torchrun (course_lib.distributed.setup called first) every rank runs this; rank 0 writes the files.
    """
    out = Path(out) if out is not None else pretrained.CHECKPOINT_DIR
    overrides = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    config: TrainConfig = dataclasses.replace(recipe.train, **overrides)
    device = torch.device(device) if device is not None else course_lib.device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv kernels
    lead = distributed.rank() == 0  # under torchrun, rank 0 alone prints and writes
    torch.manual_seed(config.seed)  # the model's initial weights (the same on every rank)
    model = recipe.build_model()
    if recipe.init_from is not None:
        added = init_from_checkpoint(model, recipe.init_from)
        if lead:
            print(f"initialised from {recipe.init_from}; {len(added)} new tensors keep their fresh init")
    prepared = recipe.task.prepare(recipe.data, device)
    state_path = out / f"{recipe.name}.train.safetensors"  # resumable training state, removed on success
    if time_budget is not None:
        saved = saved_train_config(state_path)  # an interrupted budgeted run finishes the steps it planned
        fit = saved["steps"] if saved is not None else \
            fitting_steps(model, prepared.loss_fn, prepared.data, config, time_budget, device=device)
        config = dataclasses.replace(config, steps=min(fit, steps) if steps is not None else fit)
        command = _command_with_steps(command, config.steps)
    if lead:
        print(f"training {recipe.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{config.steps} steps x {config.batch_size} on {distributed.world_size()} x "
              f"{course_lib.device_name(device)}")
    result = train(model, prepared.loss_fn, prepared.data, config, ckpt_path=state_path, device=device,
                   progress=progress)
    if not lead:
        return out / f"{recipe.name}.safetensors"
    weights = save_trained(recipe, config, result, prepared, out=out, command=command, device=device)
    state_path.unlink(missing_ok=True)
    return weights


def save_trained(recipe: Recipe, config: TrainConfig, result: TrainResult, prepared, *, out, command: str | None,
                 device) -> Path:
    """Write a trained recipe's weights (the EMA if any), JSON and preview PNG into `out`, then measure and record
    its quality floor; returns the weights path. `run` ends with this, and so does chapter 6's scaling sweep."""
    out = Path(out)
    final = result.final
    fields = recipe.task.record(final, recipe.data, prepared)  # before saving: a VAE measures its scaling factor
    meta = provenance(recipe, config, result, command=command, device=device, fields=fields)
    schedule = getattr(recipe.task, "schedule", None)  # denoisers: the schedule a sampler must use
    weights = pretrained.save(recipe.name, final, schedule_name=schedule, meta=meta, directory=out,
                              num_train_timesteps=getattr(recipe.task, "num_train_timesteps", 1000))
    preview = recipe.task.preview(final, recipe.data, prepared)
    if preview is not None:
        (out / f"{recipe.name}.png").write_bytes(preview)
    print(f"saved {weights} (+ .json{', .png' if preview else ''}); final loss {meta['final_loss']:.4f}; "
          f"{result.images_per_s:.0f} images/s on {meta['metrics']['device']}; metrics {fields.get('metrics', {})}")
    if recipe.floor is not None:  # measured as the tests measure it: on the CPU, on the fp16 weights from disk
        saved = pretrained.load(recipe.name, device="cpu", directory=out)
        quality = floors.record(saved, recipe.floor)
        pretrained.annotate(recipe.name, {"quality_floor": quality}, directory=out)
        print(f"quality floor: {recipe.floor.describe(quality['measured'])}")
    return weights


def _command(argv: list[str]) -> str:
    """The command line that reproduces this run (with torchrun's process count when there was one)."""
    words = ["python", "-m", "course_lib.train", *argv]
    world = distributed.world_size()
    if world > 1:
        words = ["torchrun", f"--nproc_per_node={world}", "-m", "course_lib.train", *argv]
    return shlex.join(words)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    # allow_abbrev=False: the JSON's command is rebuilt from the words typed, so every option has one spelling
    parser = argparse.ArgumentParser(prog="python -m course_lib.train", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("recipe", help=f"one of: {', '.join(RECIPES)}")
    parser.add_argument("--out", default=None, help=f"output directory (default {pretrained.CHECKPOINT_DIR})")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the recipe's batch size (under torchrun: the global batch)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: course_lib.device())")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="train as many steps as fit in SECONDS (measured first)")
    args = parser.parse_args(argv)
    try:
        recipe = get_recipe(args.recipe)
    except ValueError as e:
        parser.error(str(e))
    if args.time_budget is not None and not 0 < args.time_budget < float("inf"):
        parser.error(f"--time-budget must be a number of seconds > 0, got {args.time_budget}")
    try:
        device = course_lib.device(args.device)  # the one device parser: typos, and cuda/mps where there is none
    except ValueError as e:
        parser.error(f"--device: {e}")
    try:
        device = distributed.setup(device)  # joins torchrun's process group when there is one
    except (ValueError, RuntimeError) as e:
        parser.error(f"torchrun: {e}")
    try:
        run(recipe, out=args.out, steps=args.steps, batch_size=args.batch_size, device=device,
            command=_command(argv), time_budget=args.time_budget)
    except (ValueError, pretrained.CheckpointError, pretrained.CheckpointNotFoundError) as e:
        parser.error(str(e))  # one line and exit status 2, not a traceback
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
