"""Recreate a shipped checkpoint: `python -m course_lib.train RECIPE [--out DIR] [--steps N] [--batch-size N]`.

(`--device D` picks the device; default `course_lib.device()`. `--time-budget SECONDS` measures the throughput
for a few steps first and trains as many steps as fit; the JSON then records the plain `--steps N` command.)

Denoisers train with `course_lib.training.train`; the two helper models (the CLIP whose text tokens condition
the text-to-image U-Net, the attribute classifier behind `course_lib.metrics`, and the VAE of latent diffusion)
have trainers of their own. A recipe with a `vae` trains on that VAE's scaled latents of its images.

Trains the recipe (resuming from `<out>/<name>.train.safetensors` if a previous run was interrupted), saves the
EMA weights with `course_lib.pretrained.save`, and writes `<name>.png`, a preview of samples (DDIM, 50 steps).
"""
from __future__ import annotations

import copy
import dataclasses
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import course_lib
from course_lib import pretrained
from course_lib.recipes import RECIPES, Recipe, get_recipe, load_data, shapes_dataset
from course_lib.samplers import ddim, make_timesteps
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig, train


def device_name(device: torch.device) -> str:
    """A human-readable name of the training hardware, for the checkpoint's metrics."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@torch.no_grad()
def encode_captions(encoder, captions: list[str], batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings (N, L, D) and masks (N, L) of every caption, computed once before training."""
    parts = [encoder(captions[i:i + batch_size]) for i in range(0, len(captions), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def sample_preview(model, schedule, recipe: Recipe, n: int, device, seed: int = 0, encoder=None) -> torch.Tensor:
    """n samples with DDIM (eta = 0, `recipe.sample_steps` trailing steps), on the CPU, in [-1, 1] for images.

    Text-conditioned recipes sample the first n captions of a fresh dataset (seed 1) with classifier-free guidance.
    Latent recipes return the sampled latents; `decode` them for a look.
    """
    cfg = model.config
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size) if recipe.data.dataset == "shapes" else (n, 2)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(device)
    timesteps = make_timesteps(schedule, recipe.sample_steps)
    eps_model = model.eval()
    if encoder is not None:
        from course_lib.guidance import GuidedModel

        prompts = shapes_dataset(dataclasses.replace(recipe.data, n=n, seed=1, hold_out=False)).captions()
        eps_model = GuidedModel(model, *encoder(prompts), *encoder(""), recipe.guidance_scale)
    return ddim(eps_model, x, schedule, timesteps, generator=generator).float().cpu()


def save_preview(samples: torch.Tensor, path: Path, reference: torch.Tensor | None = None) -> None:
    """Images -> a 4x4 PNG grid (4x nearest upscale); points -> a scatter plot next to the data."""
    if samples.ndim == 4:
        from course_lib.widgets.display import grid, png_bytes

        path.write_bytes(png_bytes(grid(samples, nrow=int(np.ceil(np.sqrt(len(samples))))), scale=4))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(*reference[:2000].T.numpy(), s=2, c="0.75", label="data")
    ax.scatter(*samples.T.numpy(), s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


SAFETY = 0.8  # fraction of the probed throughput that --time-budget plans with


def fitting_steps(model, schedule, data, config: TrainConfig, seconds: float, *, cond=None, empty=None,
                  device=None) -> int:
    """How many steps of `config` fit in `seconds`: time 40 steps on a throwaway copy (after 10 warm-up steps).

    Plans for 80% of the measured rate (a short probe runs fast: on an H200 one measured 26 steps/s, and the
    5-minute run then averaged 20), rounded down to a multiple of 100, at least config.warmup + 100.
    """
    probe = dataclasses.replace(config, steps=10, warmup=0, ckpt_every=0)
    train(copy.deepcopy(model), schedule, data, probe, cond_data=cond, empty_cond=empty, device=device,
          progress=False)  # warm-up: cuDNN autotuning, allocator, lazy initialisation
    timed = train(copy.deepcopy(model), schedule, data, dataclasses.replace(probe, steps=40), cond_data=cond,
                  empty_cond=empty, device=device, progress=False)
    steps = int(SAFETY * seconds * 40 / timed.seconds) // 100 * 100
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


def run(recipe: Recipe, *, out=None, steps=None, batch_size=None, device=None, command=None,
        progress=True, time_budget: float | None = None) -> Path:
    """Train `recipe`, save its EMA weights + JSON + preview PNG in `out`; returns the weights path.

    time_budget: seconds to train for: measure the throughput, then train `fitting_steps` steps (capped by
    `steps` when that is given too). The JSON's command is then the equivalent `--steps N` run.
    """
    out = Path(out) if out is not None else pretrained.CHECKPOINT_DIR
    overrides = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    config: TrainConfig = dataclasses.replace(recipe.train, **overrides)
    device = torch.device(device) if device is not None else course_lib.device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv kernels
    torch.manual_seed(config.seed)  # the model's initial weights
    model = recipe.build_model()
    if recipe.init_from is not None:
        added = init_from_checkpoint(model, recipe.init_from)
        print(f"initialised from {recipe.init_from}; {len(added)} new tensors keep their fresh init")
    schedule = NoiseSchedule.from_name(recipe.schedule, recipe.num_train_timesteps)
    data = load_data(recipe.data)
    vae = None
    if recipe.vae is not None:  # latent diffusion: the denoiser only ever sees scaled latents
        from course_lib.latent import encode_latents, load_vae

        vae = load_vae(recipe.vae, device=device)
        data = encode_latents(vae, data)  # (N, 4, H/8, W/8)
    state_path = out / f"{recipe.name}.train.safetensors"  # resumable training state, removed on success

    encoder = cond = empty = None
    if recipe.text_encoder is not None:  # captions -> frozen CLIP token embeddings, once
        from course_lib.clip import load_text_encoder

        encoder = load_text_encoder(recipe.text_encoder, device=device)
        cond = encode_captions(encoder, shapes_dataset(recipe.data).captions())
        tokens, mask = encoder("")  # a dropped caption becomes the empty prompt: the unconditional input
        empty = (tokens[0], mask[0])

    if time_budget is not None:
        fit = fitting_steps(model, schedule, data, config, time_budget, cond=cond, empty=empty, device=device)
        config = dataclasses.replace(config, steps=min(fit, steps) if steps is not None else fit)
        command = _command_with_steps(command, config.steps)
    print(f"training {recipe.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{config.steps} steps x {config.batch_size} on {device_name(device)}")
    result = train(model, schedule, data, config, cond_data=cond, empty_cond=empty, ckpt_path=state_path,
                   device=device, progress=progress)
    tail = result.history[-100:]
    metrics = {"train_images_per_s": round(result.images_per_s, 1), "device": device_name(device)}
    meta = {"data": dataclasses.asdict(recipe.data), "steps": result.steps,
            "final_loss": sum(tail) / len(tail),  # mean of the last 100 steps: one step's loss is very noisy
            "metrics": metrics, "command": command, "train_config": dataclasses.asdict(config),
            "text_encoder": recipe.text_encoder, "init_from": recipe.init_from, "vae": recipe.vae}
    weights = pretrained.save(recipe.name, result.ema, schedule_name=recipe.schedule, meta=meta, directory=out,
                              num_train_timesteps=recipe.num_train_timesteps)
    samples = sample_preview(result.ema, schedule, recipe, 16 if recipe.data.dataset == "shapes" else 2000, device,
                             encoder=encoder)
    if vae is not None:
        from course_lib.latent import decode_latents

        samples = decode_latents(vae, samples)
    save_preview(samples, out / f"{recipe.name}.png", reference=data if data.ndim == 2 else None)
    state_path.unlink(missing_ok=True)
    print(f"saved {weights} (+ .json, .png); final loss {meta['final_loss']:.4f}; "
          f"throughput {result.images_per_s:.0f} images/s on {metrics['device']}")
    return weights


def _other_trainers() -> dict:
    """Checkpoints that are not denoisers: name -> trainer(out, *, device, command, steps, batch_size)."""
    from course_lib import clip, latent, metrics

    return {clip.MODEL_NAME: clip.train_recipe, metrics.CLASSIFIER_NAME: metrics.train_classifier_recipe,
            latent.VAE_NAME: latent.train_vae_recipe}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    # allow_abbrev=False: the JSON's command is rebuilt from the words typed, so every option has one spelling
    parser = argparse.ArgumentParser(prog="python -m course_lib.train", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("recipe", help=f"one of: {', '.join([*RECIPES, *_other_trainers()])}")
    parser.add_argument("--out", default=None, help=f"output directory (default {pretrained.CHECKPOINT_DIR})")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: course_lib.device())")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="train as many steps as fit in SECONDS (measured first); denoiser recipes only")
    args = parser.parse_args(argv)
    others = _other_trainers()
    if args.recipe not in others:
        try:
            recipe = get_recipe(args.recipe)
        except ValueError as e:
            parser.error(f"{e}, {', '.join(others)}")
    if args.device is not None:
        try:
            course_lib.device(args.device)  # the one device parser: typos, and cuda/mps where there is none
        except ValueError as e:
            parser.error(f"--device: {e}")
    command = shlex.join(["python", "-m", "course_lib.train", *argv])
    if args.time_budget is not None and (not 0 < args.time_budget < float("inf") or args.recipe in others):
        parser.error("--time-budget must be > 0 seconds and works for the denoiser recipes "
                     f"({', '.join(RECIPES)}); use --steps for {args.recipe}")
    if args.recipe in others:
        others[args.recipe](args.out, device=args.device, command=command, steps=args.steps, batch_size=args.batch_size)
        return
    run(recipe, out=args.out, steps=args.steps, batch_size=args.batch_size, device=args.device, command=command,
        time_budget=args.time_budget)


if __name__ == "__main__":
    main()
