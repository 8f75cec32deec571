"""`python -m course_lib.evaluation {cfg,steps,samplers,pixel-vs-latent,kl,scaling,ar-vs-diffusion,floors}`: run a
sweep, print its table.

samplers, pixel-vs-latent and kl also write the JSON the notebooks read (data/samplers_vs_nfe.json,
data/pixel_vs_latent.json, data/vae_kl_sweep.json), cfg and steps when given -o (data/cfg_sweep.json,
data/cfg_held_out.json, data/steps_sweep.json: chapters 3 and 2); scaling trains chapter 6's DiTs and U-Nets, writes
data/dit_scaling.json and ships the best DiT (shapes64-latent-dit);
ar-vs-diffusion measures chapter 8 (autoregressive vs diffusion: cost, quality, ordering) into
data/ar_vs_diffusion.json and records each model's training FLOPs in its checkpoint's JSON;
floors measures every shipped checkpoint against the quality floor of its recipe (--write records it in its JSON).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import course_lib
from course_lib import floors, pretrained
from course_lib.generate import DEFAULT_MODEL
from course_lib.metrics.prompts import EVAL_SEED, _check_int, fresh_prompts, held_out_prompts
from course_lib.pretrained import CHECKPOINT_DIR, CheckpointError, CheckpointNotFoundError
from course_lib.recipes import RECIPES

from course_lib.samplers import SAMPLERS

from .ar_vs_diffusion import ar_vs_diffusion
from .scaling import scaling_sweep
from .samplers import LCM_MODEL, SAMPLER_NFES, SWEEP_SAMPLERS, WITHIN, samplers_sweep, summarize
from .sweeps import CFG_SCALES, UNCONDITIONAL_MODEL, cfg_sweep, kl_sweep, pixel_vs_latent, steps_sweep

PIXEL_VS_LATENT_PATH = CHECKPOINT_DIR.parent / "pixel_vs_latent.json"  # chapter 4's table
KL_SWEEP_PATH = CHECKPOINT_DIR.parent / "vae_kl_sweep.json"  # chapter 4's KL-weight table
SAMPLERS_PATH = CHECKPOINT_DIR.parent / "samplers_vs_nfe.json"  # chapter 7's table
SCALING_PATH = CHECKPOINT_DIR.parent / "dit_scaling.json"  # chapter 6's curves and fit
AR_PATH = CHECKPOINT_DIR.parent / "ar_vs_diffusion.json"  # chapter 8's tables
STEPS_SWEEP_PATH = CHECKPOINT_DIR.parent / "steps_sweep.json"  # chapter 2's 256-image step-count table (-o)
CFG_SWEEP_PATH = CHECKPOINT_DIR.parent / "cfg_sweep.json"  # chapter 3's bigger guidance sweep (-o)
CFG_HELD_OUT_PATH = CHECKPOINT_DIR.parent / "cfg_held_out.json"  # chapter 3's 192 held-out-pair images (-o)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.evaluation",
                                     description="Run the course's sweeps at full size and print their tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("cfg", help="guidance-scale sweep of a text-to-image checkpoint (fresh + held-out prompts)")
    cfg.add_argument("--scales", type=float, nargs="+", default=list(CFG_SCALES), help="guidance scales")
    cfg.add_argument("--prompts", type=int, default=8, help="number of fresh prompts (default 8)")
    cfg.add_argument("--per-prompt", type=int, default=3, help="images per prompt and scale (default 3)")
    cfg.add_argument("--steps", type=int, default=15, help="sampler steps (default 15)")
    cfg.add_argument("--sampler", default="ddim", help=f"one of {', '.join(SAMPLERS)} (default ddim)")
    cfg.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint (default {DEFAULT_MODEL})")
    cfg.add_argument("--held-out-draws", type=int, default=1,
                     help="held-out prompt sets (6 prompts each, seeds held-out-seed, +1, ...; default 1)")
    cfg.add_argument("--held-out-seed", type=int, default=EVAL_SEED, help=f"first held-out seed (default {EVAL_SEED})")
    cfg.add_argument("--held-out-only", action="store_true", help="skip the fresh (seen-combination) prompts")
    steps = sub.add_parser("steps", help="step-count sweep of an unconditional checkpoint (DDIM and DDPM)")
    steps.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50], help="step counts")
    steps.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"],
                       help=f"any of {', '.join(SAMPLERS)} (default ddim ddpm)")
    steps.add_argument("--n", type=int, default=256, help="images per run (default 256)")
    steps.add_argument("--model", default=UNCONDITIONAL_MODEL, help=f"checkpoint (default {UNCONDITIONAL_MODEL})")
    for p in (cfg, steps):
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--checkpoint-dir", default=None, help="where the checkpoints are (default data/checkpoints)")
        p.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
        p.add_argument("-o", "--output", default=None, help="also write the tables to this JSON (e.g. "
                       f"{CFG_SWEEP_PATH if p is cfg else STEPS_SWEEP_PATH}, which the notebooks read)")
    smp = sub.add_parser("samplers", help="chapter 7's table: quality against model calls (NFE) for every sampler")
    smp.add_argument("--samplers", nargs="+", default=list(SWEEP_SAMPLERS), help=f"any of {', '.join(SAMPLERS)}")
    smp.add_argument("--nfes", type=int, nargs="+", default=list(SAMPLER_NFES), help="model calls per image")
    smp.add_argument("--prompts", type=int, default=8, help="fresh prompts (default 8)")
    smp.add_argument("--per-prompt", type=int, default=8, help="images per prompt and row (default 8)")
    smp.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale (default 5)")
    smp.add_argument("--reference-steps", type=int, default=1000, help="DDPM steps of the reference row (1000)")
    smp.add_argument("--model", default=DEFAULT_MODEL, help=f"the teacher (default {DEFAULT_MODEL})")
    smp.add_argument("--lcm-model", default=LCM_MODEL, help=f"the student the lcm rows use (default {LCM_MODEL})")
    smp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    smp.add_argument("--checkpoint-dir", default=None, help="where the checkpoints are (default data/checkpoints)")
    smp.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    smp.add_argument("-o", "--output", default=str(SAMPLERS_PATH), help="JSON to write")
    pvl = sub.add_parser("pixel-vs-latent", help="chapter 4's table: shapes64-t2i vs shapes64-latent-t2i (CPU)")
    pvl.add_argument("--prompts", type=int, default=48, help="fresh prompts (default 48)")
    pvl.add_argument("--per-prompt", type=int, default=4, help="images per prompt (default 4)")
    pvl.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale for both models (default 5)")
    pvl.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    pvl.add_argument("-o", "--output", default=str(PIXEL_VS_LATENT_PATH), help="JSON to write")
    ar = sub.add_parser("ar-vs-diffusion", help="chapter 8: pixel / token autoregression vs diffusion (CPU)")
    ar.add_argument("--prompts", type=int, default=16, help="fresh prompts for the quality rows (default 16)")
    ar.add_argument("--per-prompt", type=int, default=4, help="images per prompt (default 4)")
    ar.add_argument("-o", "--output", default=str(AR_PATH), help="JSON to write")
    kl = sub.add_parser("kl", help="train one VAE per KL weight; PSNR / KL / latent std (chapter 4)")
    kl.add_argument("--kl-weights", type=float, nargs="+", default=[0.0, 1e-6, 1e-4, 1e-2])
    kl.add_argument("--steps", type=int, default=2000)
    kl.add_argument("--batch-size", type=int, default=64)
    kl.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    kl.add_argument("-o", "--output", default=str(KL_SWEEP_PATH), help="JSON to write")
    scl = sub.add_parser("scaling", help="chapter 6: DiTs and U-Nets at equal training FLOPs; the fit; ships "
                                         "the best DiT (resumable: rerun to continue)")
    scl.add_argument("--minutes", type=float, default=None,
                     help="time budget for all runs (default 50 on a CPU, 8 on a GPU); each run's size follows "
                          "from the throughput measured first")
    scl.add_argument("--work-dir", default="runs/scaling", help="training states, kept to resume (runs/scaling)")
    scl.add_argument("--checkpoint-dir", default=None, help="where the best DiT ships (default data/checkpoints)")
    scl.add_argument("--device", default=None, help="cpu, cuda, mps (default: course_lib.device())")
    scl.add_argument("-o", "--output", default=str(SCALING_PATH), help="JSON to write")
    floor = sub.add_parser("floors", help="measure each shipped checkpoint against its recipe's quality floor")
    floor.add_argument("--checkpoint-dir", default=None, help="where the checkpoints are (default data/checkpoints)")
    floor.add_argument("--write", action="store_true", help="record the floor and the measurement in each JSON")
    return parser


def _cfg(args, parser=None) -> dict:
    settings = dict(steps=args.steps, n_per_prompt=args.per_prompt, seed=args.seed, sampler=args.sampler,
                    model=args.model, directory=args.checkpoint_dir, device=args.device, progress=True)
    scales = [int(s) if float(s).is_integer() else s for s in args.scales]
    _check_int("--held-out-draws", args.held_out_draws, 1)
    held_out = [p for k in range(args.held_out_draws)
                for p in held_out_prompts(seed=args.held_out_seed + k)]  # 6 prompts per draw
    tests = [] if args.held_out_only else [("seen combinations", fresh_prompts(args.prompts))]
    record = {}
    for name, prompts in tests + [("held-out pairs", held_out)]:
        print(f"\n{name}, {len(prompts)} prompts, {args.per_prompt} images each, {args.steps} {args.sampler} steps:")
        sweep = cfg_sweep(scales, prompts, **settings)
        print(sweep)
        record[name] = _sweep_record(sweep, prompts=[p.text for p in prompts], images_per_row=len(sweep.images[0]))
    command = (f"python -m course_lib.evaluation cfg --scales {' '.join(map(str, scales))} --prompts {args.prompts} "
               f"--per-prompt {args.per_prompt} --steps {args.steps} --sampler {args.sampler} --model {args.model} "
               f"--held-out-draws {args.held_out_draws} --held-out-seed {args.held_out_seed} --seed {args.seed}"
               + (" --held-out-only" if args.held_out_only else ""))
    return _with_command(record, args, command)


def _steps(args, parser=None) -> dict:
    sweep = steps_sweep(args.steps, args.samplers, n=args.n, seed=args.seed, model=args.model,
                        directory=args.checkpoint_dir, device=args.device, progress=True)
    print(f"\n{args.n} images per run, against {args.n} real renders:")
    print(sweep)
    command = (f"python -m course_lib.evaluation steps --steps {' '.join(map(str, args.steps))} --samplers "
               f"{' '.join(args.samplers)} --n {args.n} --model {args.model} --seed {args.seed}")
    return _with_command({"sweep": _sweep_record(sweep, images_per_row=args.n)}, args, command)


def _sweep_record(sweep, **extra) -> dict:
    """A Sweep as JSON: its rows and its real-vs-real floor (the images stay behind)."""
    return {"rows": sweep.rows, "baseline": sweep.baseline, **extra}


def _with_command(record: dict, args, command: str) -> dict:
    device = course_lib.device(args.device)
    return {**record, "device": course_lib.device_name(device), "threads": torch.get_num_threads(),
            "command": command + (f" --device {args.device}" if args.device else "")
                       + (f" -o {args.output}" if args.output else "")}


def _samplers(args, parser) -> dict:
    if min(args.prompts, args.per_prompt, args.reference_steps) < 1 or args.guidance_scale < 0:
        parser.error("--prompts, --per-prompt and --reference-steps must be >= 1, --guidance-scale >= 0")
    device = course_lib.device(args.device)
    sweep = samplers_sweep(args.samplers, args.nfes, prompts=fresh_prompts(args.prompts), n_per_prompt=args.per_prompt,
                           guidance_scale=args.guidance_scale, seed=args.seed, model=args.model,
                           lcm_model=args.lcm_model, reference=("ddpm", args.reference_steps),
                           directory=args.checkpoint_dir, device=device, progress=True)
    n = args.prompts * args.per_prompt
    print(f"\n{n} images per row ({args.prompts} prompts x {args.per_prompt}), guidance {args.guidance_scale:g}:")
    print(sweep.table(["sampler", "nfe", "frechet_distance", "frechet_distance_se", "prompt_accuracy",
                       "seconds_per_image"]))
    command = (f"python -m course_lib.evaluation samplers --prompts {args.prompts} --per-prompt {args.per_prompt} "
               f"--guidance-scale {args.guidance_scale:g} --nfes {' '.join(map(str, args.nfes))} "
               f"--samplers {' '.join(args.samplers)} --reference-steps {args.reference_steps} --seed {args.seed}")
    return {"rows": sweep.rows, "summary": summarize(sweep), "real_vs_real_fd": sweep.baseline["frechet_distance"],
            "images_per_row": n, "note": samplers_note(n), "device": course_lib.device_name(device),
            "threads": torch.get_num_threads(),
            "settings": {"prompts": args.prompts, "per_prompt": args.per_prompt, "guidance_scale": args.guidance_scale,
                         "model": args.model, "lcm_model": args.lcm_model, "seed": args.seed, "within": WITHIN},
            "command": command + (f" --device {args.device}" if args.device else "")}


def samplers_note(n: int) -> str:
    """What the samplers table can and cannot resolve at n images per row."""
    if n >= 1000:
        return f"{n} images per row"
    return (f"{n} images per row, fewer than the 1000 a GPU run would use (a CPU-sized run): each Fréchet distance "
            f"carries a bootstrap standard error (frechet_distance_se) comparable to the gaps between converged "
            f"samplers, so 'within 10%' is stricter than the noise allows; smallest_nfe_indistinguishable compares "
            f"each row with the reference at 2 standard errors of the difference instead")


def _pixel_vs_latent(args, parser) -> dict:
    if min(args.prompts, args.per_prompt, args.steps) < 1 or args.guidance_scale < 0:
        parser.error("--prompts, --per-prompt and --steps must be >= 1, --guidance-scale >= 0")
    rows = pixel_vs_latent(prompts=fresh_prompts(args.prompts), guidance_scale=args.guidance_scale,
                           steps=args.steps, n_per_prompt=args.per_prompt)
    for row in rows:
        print(row)
    return {"rows": rows, "threads": torch.get_num_threads(),
            "settings": {"prompts": args.prompts, "per_prompt": args.per_prompt,
                         "guidance_scale": args.guidance_scale, "steps": args.steps},
            "command": f"python -m course_lib.evaluation pixel-vs-latent --prompts {args.prompts} --per-prompt "
                       f"{args.per_prompt} --guidance-scale {args.guidance_scale:g} --steps {args.steps}"}


def _ar_vs_diffusion(args, parser) -> dict:
    if min(args.prompts, args.per_prompt) < 1:
        parser.error("--prompts and --per-prompt must be >= 1")
    torch.manual_seed(0)
    record = ar_vs_diffusion(args.prompts, args.per_prompt)
    for key in ("cost", "quality"):
        for row in record[key]:
            print(row)
    for key in ("completion", "early_wrong_token", "by_position"):
        for row in record[key]["rows"]:
            print(key, row)
    return record


def _kl(args, parser) -> dict:
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    if any(not w >= 0 for w in args.kl_weights):
        parser.error(f"--kl-weights must all be >= 0 (e.g. 0 1e-6 1e-4 1e-2), got {args.kl_weights}")
    device = course_lib.device(args.device)
    rows = kl_sweep(args.kl_weights, args.steps, args.batch_size, device=device)
    return {"rows": rows, "device": course_lib.device_name(device),
            "command": "python -m course_lib.evaluation kl --kl-weights "
                       + " ".join(f"{w:g}" for w in args.kl_weights)
                       + f" --steps {args.steps} --batch-size {args.batch_size}"}


def _scaling(args, parser) -> None:
    device = course_lib.device(args.device)
    minutes = args.minutes if args.minutes is not None else (50.0 if device.type == "cpu" else 8.0)
    if not minutes > 0:
        parser.error(f"--minutes must be > 0, got {minutes}")
    command = f"python -m course_lib.evaluation scaling --minutes {minutes:g}" + \
        (f" --device {args.device}" if args.device else "")
    record = scaling_sweep(minutes, output=args.output, work_dir=args.work_dir, device=device,
                           checkpoint_dir=args.checkpoint_dir, command=command)
    fit = record["summary"].get("frontier_fit")
    if fit:
        print(f"frontier: slope {fit['slope']:.3f}, R^2 {fit['r2']:.2f}; doubling compute changes FD by "
              f"{fit['doubling_changes_fd_percent']:+.1f}% (95%: {fit['doubling_interval_95_percent'][0]:+.1f}% to "
              f"{fit['doubling_interval_95_percent'][1]:+.1f}%)")
    print(f"wrote {args.output}")


def _floors(args) -> None:
    """Every checkpoint in the directory that a recipe with a floor made: measured on the CPU, as users load it."""
    failed, found = [], 0
    for name, recipe in RECIPES.items():
        if recipe.floor is None or name not in pretrained.list_checkpoints(args.checkpoint_dir):
            continue
        found += 1
        p = pretrained.load_checkpoint(name, device="cpu", directory=args.checkpoint_dir)
        quality = floors.record(p, recipe.floor, directory=args.checkpoint_dir)
        print(f"{name}: {recipe.floor.describe(quality['measured'])}", flush=True)
        if args.write:
            pretrained.annotate(name, {"quality_floor": quality}, directory=args.checkpoint_dir)
        if not quality["met"]:
            failed.append(name)
    if not found:
        raise ValueError(f"no checkpoint with a quality floor in {args.checkpoint_dir or CHECKPOINT_DIR}")
    if failed:
        raise SystemExit(f"below their quality floor: {', '.join(failed)}")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "floors":
            _floors(args)
        elif args.command == "scaling":
            _scaling(args, parser)
        else:
            measure = {"cfg": _cfg, "steps": _steps, "samplers": _samplers, "pixel-vs-latent": _pixel_vs_latent,
                       "kl": _kl, "ar-vs-diffusion": _ar_vs_diffusion}[args.command]
            record = measure(args, parser)
            if args.output:  # cfg and steps write only when given -o; the others always have a file
                Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
                print(f"wrote {args.output}")
    except (TypeError, ValueError, CheckpointNotFoundError, CheckpointError) as e:
        parser.error(str(e))  # one line and exit status 2, not a traceback
