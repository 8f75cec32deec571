"""Chapter 6's experiment: Diffusion Transformers and U-Nets trained from scratch at equal training compute.

Every run is the `shapes64-latent-dit` recipe (captioned 64x64 shapes as the 8x8x4 latents of shapes64-vae, as the
DiT paper works on Stable Diffusion's latents; eps-prediction, captions dropped 10% of the time, AdamW at a constant
rate, so a run can stop, be measured and go on) with another network. The command first
measures each network's training throughput on this machine, then gives every run the same training FLOPs
(forward GFLOPs x 3 x images seen), sized so that all runs fit the time budget. Each run is measured at 1/16, 1/8,
1/4, 1/2 and all of that budget (the fixed-compute view), and at the image count the most expensive run reaches
(the fixed-steps view): Fréchet distance on the classifier's features and prompt accuracy of guided samples, and
the eps-MSE on held-out images, each with its standard error.

Which way a caption should enter a DiT (pooled into adaLN, or by cross-attention) is settled first, on DiT-Mi/1:
the other DiTs use whichever gives the lower Fréchet distance. The best text DiT is then shipped under the recipe's
name.
Results are written after every measurement; a rerun of the same command continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import course_lib
from course_lib import pretrained
from course_lib.data import DataSpec
from course_lib.latent import encode_latents
from course_lib.metrics import forward_gflops, frechet_distance, frechet_distance_se, load_classifier, prompt_accuracy
from course_lib.metrics.prompts import EVAL_SEED, REFERENCE_SEED, fresh_prompts, reference_renders
from course_lib.recipes import get_recipe
from course_lib.train import save_trained
from course_lib.training import time_steps, train

from .samplers import sample_prompts

RECIPE = "shapes64-latent-dit"  # data, objective, optimiser, and the name the best DiT ships under
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of the training-FLOPs budget: where each run is measured
EVAL = dict(prompts=8, per_prompt=8, sampler="dpmpp_2m", steps=10, guidance_scale=5.0, seed=0)
EPS_MSE_IMAGES = 256  # held-out images (a seed training never used) for the eps-MSE
TRAIN_SHARE = 0.8  # of the time budget planned for training; measuring takes the rest


@dataclass
class ScalingRun:
    """One network of the sweep: a factory of course_lib.models.FACTORIES and its arguments."""

    name: str  # e.g. "DiT-Mi/1", "U-Net-M"
    model: str  # "dit" or "unet_latent_cond"
    model_kwargs: dict = field(default_factory=dict)  # with the recipe's cond_dim added
    matched_to: str | None = None  # U-Nets: the DiT whose forward GFLOPs they match (within 10%)


CONDITIONING_DIT = "DiT-Mi/1"  # the small run that settles pooled vs cross-attention
# (+ CONDITIONING_DIT) 6 DiTs, 32x apart in forward GFLOPs; Ti/1 and Ti/2 (and Mi, Sm) have the same parameters
DITS = ("DiT-Ti/2", "DiT-Mi/2", "DiT-Sm/2", "DiT-Ti/1", "DiT-Sm/1")
UNETS = (  # chapter 4's latent U-Net at widths whose forward GFLOPs match a DiT's; no dropout, as the DiTs
    ScalingRun("U-Net-S", "unet_latent_cond", dict(base_channels=24, num_res_blocks=1, dropout=0.0),
               matched_to="DiT-Mi/2"),
    ScalingRun("U-Net-M", "unet_latent_cond", dict(base_channels=32, dropout=0.0), matched_to="DiT-Sm/2"),
    ScalingRun("U-Net-L", "unet_latent_cond", dict(base_channels=64, dropout=0.0), matched_to="DiT-Sm/1"),
)


def dit_run(name: str, text_conditioning: str = "pooled") -> ScalingRun:
    suffix = "" if text_conditioning == "pooled" else f" ({text_conditioning})"
    return ScalingRun(name + suffix, "dit", {"name": name, "text_conditioning": text_conditioning})


def all_runs(kept: str | None = None) -> list[ScalingRun]:
    """The sweep in order: the conditioning comparison (alone while `kept` is None), then the other DiTs with the
    kept way of reading captions, then the U-Nets (matched to those DiTs)."""
    runs = [dit_run(CONDITIONING_DIT, "pooled"), dit_run(CONDITIONING_DIT, "cross")]
    if kept is None:
        return runs
    unets = [dataclasses.replace(u, matched_to=dit_run(u.matched_to, kept).name) for u in UNETS]
    return runs + [dit_run(name, kept) for name in DITS] + unets


#################################################################################
#                    Measuring: work per image, and quality                     #
#################################################################################

def latent_gflops(model, encoder) -> float:
    """GFLOPs of one forward pass on one latent with a caption (attention counted: metrics.forward_gflops)."""
    cfg = model.config
    return forward_gflops(model, (cfg.in_channels, cfg.image_size, cfg.image_size), encoder)


@dataclass
class Judge:
    """What every measurement of the sweep compares with: prompts, real renders, held-out noisy images."""

    prompts: list
    real: torch.Tensor  # (P * per_prompt, 3, 64, 64) renders of the prompts
    classifier: torch.nn.Module
    x_t: torch.Tensor  # (N, 4, 8, 8) latents of held-out images noised at t with eps
    t: torch.Tensor
    eps: torch.Tensor
    tokens: torch.Tensor  # their captions
    mask: torch.Tensor

    @classmethod
    def build(cls, schedule, encoder, vae, device, size: int = 64) -> "Judge":
        prompts = fresh_prompts(EVAL["prompts"])
        held_out = DataSpec("shapes", n=EPS_MSE_IMAGES, seed=EVAL_SEED, size=size)
        x0 = encode_latents(vae, held_out.load()).to(device)  # (N, 4, H/8, W/8)
        g = torch.Generator().manual_seed(EVAL_SEED)
        t = torch.randint(0, schedule.num_train_timesteps, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(device)
        tokens, mask = encoder(held_out.shapes().captions())
        return cls(prompts, reference_renders(prompts, EVAL["per_prompt"], size=size, seed=REFERENCE_SEED),
                   load_classifier(device=device), schedule.add_noise(x0, eps, t.to(device)), t.to(device), eps,
                   tokens, mask)

    @torch.no_grad()
    def measure(self, p: pretrained.Pretrained) -> dict:
        """Fréchet distance and prompt accuracy of guided samples, held-out eps-MSE: each with its standard error."""
        images, _ = sample_prompts(p, EVAL["sampler"], EVAL["steps"], self.prompts, EVAL["per_prompt"],
                                   guidance_scale=EVAL["guidance_scale"], seed=EVAL["seed"])
        fd, fd_se = frechet_distance_se(images, self.real, self.classifier)
        n = EVAL["per_prompt"]
        accuracy = sum(prompt_accuracy(images[i * n:(i + 1) * n], prompt.attributes, self.classifier,
                                       keys=prompt.keys) for i, prompt in enumerate(self.prompts)) / len(self.prompts)
        errors = torch.cat([(p.model(self.x_t[i:i + 64], self.t[i:i + 64], cond=self.tokens[i:i + 64],
                                     cond_mask=self.mask[i:i + 64]) - self.eps[i:i + 64]).pow(2).mean((1, 2, 3))
                            for i in range(0, len(self.x_t), 64)]).float().cpu()  # (N,) per image
        return {"frechet_distance": fd, "frechet_distance_se": fd_se, "prompt_accuracy": accuracy,
                "prompt_accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(images)),  # binomial (0 at 0 and 1)
                "eps_mse": errors.mean().item(), "eps_mse_se": (errors.std() / math.sqrt(len(errors))).item()}


#################################################################################
#                      The fit: Fréchet distance against compute                #
#################################################################################

# Student's t, two-sided 95%, by degrees of freedom (1.96 beyond 30)
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def fit_power_law(flops, fd) -> dict:
    """Least squares of log FD = a + b log C: intercept a, slope b, R^2, and what doubling C does to FD, 2^b - 1,
    with the 95% interval of b from the fit's residuals (Student t, n - 2 degrees of freedom). The interval treats
    the points as independent, which points taken along one training run only approximately are."""
    x, y = torch.tensor(flops, dtype=torch.float64).log(), torch.tensor(fd, dtype=torch.float64).log()
    n = len(x)
    if n < 3:
        raise ValueError(f"a fit needs at least 3 points, got {n}")
    xc, yc = x - x.mean(), y - y.mean()
    if not (xc * xc).sum() > 0 or not (yc * yc).sum() > 0:
        raise ValueError("a fit needs points with different compute and different Fréchet distances")
    slope = (xc * yc).sum() / (xc * xc).sum()
    residual = yc - slope * xc
    r2 = 1 - (residual * residual).sum() / (yc * yc).sum()
    se = ((residual * residual).sum() / (n - 2) / (xc * xc).sum()).sqrt()
    t = T_95[n - 3] if n - 2 <= len(T_95) else 1.96
    low, high = float(slope - t * se), float(slope + t * se)
    return {"points": n, "intercept": float(y.mean() - slope * x.mean()), "slope": float(slope),
            "slope_interval_95": [low, high], "r2": float(r2),
            "doubling_changes_fd_percent": 100 * (2 ** float(slope) - 1),
            "doubling_interval_95_percent": [100 * (2 ** low - 1), 100 * (2 ** high - 1)]}


def summarize_scaling(record: dict) -> dict:
    """The fits and comparisons the chapter reads, from the measured curves."""
    runs = {r["name"]: r for r in record["runs"] if r.get("curve")}
    dits = [r for r in runs.values() if r["family"] == "dit" and r["role"] == "scaling"]
    # the compute frontier: at each budget fraction, the best DiT there
    frontier = []
    for fraction in record["plan"]["fractions"]:
        rows = [(row["frechet_distance"], row["training_flops"], r["name"]) for r in dits for row in r["curve"]
                if row.get("fraction") == fraction]
        if rows:
            fd, flops, name = min(rows)
            frontier.append({"fraction": fraction, "training_flops": flops, "frechet_distance": fd, "model": name})
    summary = {"frontier": frontier}
    if len(frontier) >= 3:
        summary["frontier_fit"] = fit_power_law([f["training_flops"] for f in frontier],
                                                [f["frechet_distance"] for f in frontier])
    summary["per_model_fit"] = {r["name"]: fit_power_law([row["training_flops"] for row in r["curve"]],
                                                         [row["frechet_distance"] for row in r["curve"]])
                                for r in dits if len(r["curve"]) >= 3}
    final = {name: r["curve"][-1] for name, r in runs.items()}
    fixed = {name: next((row for row in r["curve"] if row["step"] == record["plan"]["fixed_steps"]), None)
             for name, r in runs.items()}
    summary["final"] = final
    summary["fixed_steps"] = {name: row for name, row in fixed.items() if row is not None}
    summary["unet_vs_dit"] = [{"unet": r["name"], "dit": r["matched_to"],
                               "gflops_ratio": r["forward_gflops"] / runs[r["matched_to"]]["forward_gflops"],
                               "unet_final": final[r["name"]], "dit_final": final[r["matched_to"]],
                               "unet_fixed_steps": fixed.get(r["name"]), "dit_fixed_steps": fixed.get(r["matched_to"])}
                              for r in runs.values() if r["family"] == "unet" and r["matched_to"] in runs]
    if dits:
        summary["best_dit"] = min((r for r in runs.values() if r["family"] == "dit"),
                                  key=lambda r: final[r["name"]]["frechet_distance"])["name"]
    return summary


#################################################################################
#                                  The sweep                                    #
#################################################################################

def _recipe_for(run: ScalingRun):
    """The recipe with this run's network (the caption width stays the recipe's)."""
    base = get_recipe(RECIPE)
    return dataclasses.replace(base, model=run.model,
                               model_kwargs={"cond_dim": base.model_kwargs["cond_dim"], **run.model_kwargs})


def _build(run: ScalingRun, device) -> torch.nn.Module:
    recipe = _recipe_for(run)
    torch.manual_seed(recipe.train.seed)  # the initial weights, as `python -m course_lib.train` draws them
    return recipe.build_model().to(device)


def _plan(runs, prepared, encoder, minutes: float, device, batch_size: int) -> dict:
    """Measure each network's training speed, then the training FLOPs every run gets so that all fit the budget.
    (The DiTs are planned reading captions pooled; if cross-attention wins, they take a little longer.)"""
    probe = dataclasses.replace(get_recipe(RECIPE).train, warmup=0)
    speeds = {}
    for run in runs:
        model = _build(run, device)
        timed = time_steps(model, prepared.loss_fn, prepared.data, probe, steps=3, warmup_steps=2, device=device)
        gflops = latent_gflops(model, encoder)
        speeds[run.name] = {"forward_gflops": gflops, "images_per_s": timed.images_per_s,
                            "train_gflops_per_s": 3 * gflops * timed.images_per_s}
        print(f"{run.name}: {gflops:.3f} GFLOPs forward, {timed.images_per_s:.0f} training images/s", flush=True)
    seconds = TRAIN_SHARE * minutes * 60
    flops = seconds / sum(1 / (s["train_gflops_per_s"] * 1e9) for s in speeds.values())  # the same C for every run
    fixed_steps = max(1, min(round(flops / (3e9 * s["forward_gflops"] * batch_size)) for s in speeds.values()))
    return {"minutes": minutes, "training_flops": flops, "batch_size": batch_size, "fixed_steps": fixed_steps,
            "fractions": list(FRACTIONS), "probe": speeds}


def _points(plan: dict, gflops: float) -> list[tuple[int, float | None]]:
    """(step, fraction of the budget or None) where a run of `gflops` forward is measured."""
    per_step = 3e9 * gflops * plan["batch_size"]
    points, previous = {}, 0
    for f in plan["fractions"]:  # strictly increasing: a tiny budget still gets one point per fraction
        previous = max(round(f * plan["training_flops"] / per_step), previous + 1)
        points[previous] = f
    last = max(points)
    if plan["fixed_steps"] not in points and plan["fixed_steps"] <= last:
        points[plan["fixed_steps"]] = None
    return sorted(points.items())


def _write(record: dict, output) -> None:
    record["summary"] = summarize_scaling(record)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(record, indent=2) + "\n")


def _train_run(run, record, prepared, judge, work_dir, device, output, progress) -> dict:
    """Train one run up to the budget, stopping at each of its points to measure; resumes from its state file."""
    plan, schedule = record["plan"], prepared.context["schedule"]
    entry = next((r for r in record["runs"] if r["name"] == run.name), None)
    model = _build(run, device)
    gflops = latent_gflops(model, prepared.context["encoder"])
    if entry is None:
        entry = {"name": run.name, "family": model.kind, "role": "scaling", "matched_to": run.matched_to,
                 "model": run.model, "model_kwargs": run.model_kwargs, "config": dataclasses.asdict(model.config),
                 "params": sum(p.numel() for p in model.parameters()), "forward_gflops": gflops,
                 "train_gflops_per_image": 3 * gflops, "seconds": 0.0, "curve": []}
        record["runs"].append(entry)
    points = _points(plan, gflops)
    entry["steps"] = points[-1][0]
    config = get_recipe(RECIPE).train
    for step, fraction in points:
        if any(row["step"] == step for row in entry["curve"]):
            continue
        result = train(model, prepared.loss_fn, prepared.data, dataclasses.replace(config, steps=step),
                       ckpt_path=_state_path(work_dir, run.name), device=device, progress=progress)
        entry["seconds"] += result.seconds
        p = pretrained.Pretrained(result.final, schedule, _meta(run.name, model))
        images = step * plan["batch_size"]
        entry["curve"].append({"step": step, "images_seen": images, "training_flops": 3e9 * gflops * images,
                               "fraction": fraction, "loss": sum(result.history[-50:]) / len(result.history[-50:]),
                               **judge.measure(p)})
        row = entry["curve"][-1]
        print(f"{run.name} step {step}: FD {row['frechet_distance']:.1f} ± {row['frechet_distance_se']:.1f}, "
              f"prompt accuracy {row['prompt_accuracy']:.2f}, eps-MSE {row['eps_mse']:.4f}", flush=True)
        _write(record, output)
    return entry


def _meta(name: str, model) -> dict:
    """What the samplers' helpers read from a checkpoint's JSON, for a model still in training."""
    recipe = get_recipe(RECIPE)
    return {"name": name, "text_encoder": recipe.task.text_encoder, "vae": recipe.task.vae,
            "data": {"size": recipe.data.size}, "config": dataclasses.asdict(model.config)}


def _state_path(work_dir, name: str) -> Path:
    """Where a run keeps its resumable training state."""
    return Path(work_dir) / ("".join(c if c.isalnum() else "-" for c in name).strip("-") + ".train.safetensors")


def scaling_sweep(minutes: float, *, output, work_dir="runs/scaling", device=None, checkpoint_dir=None,
                  progress: bool = False, command: str | None = None) -> dict:
    """Run (or continue) the whole experiment; writes `output` after every measurement and returns the record.

    Ships the best text DiT under the recipe name into checkpoint_dir when the recipe describes that network."""
    device = course_lib.device(device)
    recipe = get_recipe(RECIPE)
    prepared = recipe.task.prepare(recipe.data, device)
    encoder, schedule = prepared.context["encoder"], prepared.context["schedule"]
    record = json.loads(Path(output).read_text()) if Path(output).exists() else {}
    if record.get("device") != course_lib.device_name(device) or record.get("plan", {}).get("minutes") != minutes:
        record = {}  # another machine or budget: start over (throughputs and budgets do not carry over)
    judge = Judge.build(schedule, encoder, pretrained.load_vae(recipe.task.vae, device=device), device,
                        size=recipe.data.size)
    if not record:
        for state in Path(work_dir).glob("*.train.safetensors"):  # another plan: its runs' states do not apply
            state.unlink()
        second = reference_renders(judge.prompts, EVAL["per_prompt"], size=recipe.data.size, seed=REFERENCE_SEED + 1)
        record = {"command": command, "device": course_lib.device_name(device), "threads": torch.get_num_threads(),
                  "recipe": RECIPE, "data": dataclasses.asdict(recipe.data),
                  "train_config": dataclasses.asdict(recipe.train), "eval": dict(EVAL, eps_mse_images=EPS_MSE_IMAGES),
                  "real_vs_real_fd": frechet_distance(second, judge.real, judge.classifier),
                  "plan": _plan(all_runs("pooled"), prepared, encoder, minutes, device, recipe.train.batch_size),
                  "runs": []}
        _write(record, output)
    started = time.perf_counter()
    pair = [_train_run(run, record, prepared, judge, work_dir, device, output, progress) for run in all_runs()]
    kept = "pooled" if pair[0]["curve"][-1]["frechet_distance"] <= pair[1]["curve"][-1]["frechet_distance"] \
        else "cross"
    record["kept_conditioning"] = kept
    pair[1]["role"] = "conditioning"  # the loser stays out of the scaling fit
    if kept == "cross":
        pair[0]["role"], pair[1]["role"] = "conditioning", "scaling"
    later = all_runs(kept)[2:]
    for run in later:
        _train_run(run, record, prepared, judge, work_dir, device, output, progress)
    record["sweep_seconds_this_call"] = time.perf_counter() - started
    record["note"] = _note(record, device)
    _write(record, output)
    record["shipped"] = _ship(record, prepared, work_dir, device, checkpoint_dir)
    record["samples"] = _sample_grid(record, prepared, judge, work_dir, device, Path(output).with_suffix(".png"))
    _write(record, output)
    return record


def _note(record: dict, device) -> str:
    plan = record["plan"]
    size = "CPU-sized" if device.type == "cpu" else "GPU-sized"
    return (f"{size}: a {plan['minutes']:g}-minute budget on {record['device']} gave "
            f"every run {plan['training_flops'] / 1e12:.1f} TFLOPs of training; the same command on a GPU sizes the "
            f"runs from that GPU's measured throughput")


def _finished(entry: dict, prepared, work_dir, device):
    """(TrainResult, TrainConfig) of a finished run, read back from its training state (no step is trained)."""
    run = ScalingRun(entry["name"], entry["model"], entry["model_kwargs"])
    config = dataclasses.replace(get_recipe(RECIPE).train, steps=entry["steps"])
    result = train(_build(run, device), prepared.loss_fn, prepared.data, config, device=device, progress=False,
                   ckpt_path=_state_path(work_dir, run.name))
    return result, config


def _sample_grid(record: dict, prepared, judge, work_dir, device, path: Path) -> dict:
    """One image per prompt from every run's final weights (same prompts and noise): a row per network, smallest
    forward GFLOPs first, DiTs then U-Nets, written as a PNG the notebook labels from the returned rows."""
    from course_lib.images import grid, png_bytes

    entries = sorted(record["runs"], key=lambda r: (r["family"] != "dit", r["forward_gflops"]))
    entries = [r for r in entries if r["role"] == "scaling" and r.get("curve")]
    rows = []
    for entry in entries:
        model = _finished(entry, prepared, work_dir, device)[0].final
        p = pretrained.Pretrained(model, prepared.context["schedule"], _meta(entry["name"], model))
        images, _ = sample_prompts(p, "dpmpp_2m", 20, judge.prompts, 1, guidance_scale=EVAL["guidance_scale"],
                                   seed=EVAL["seed"])
        rows.append(images)
    path.write_bytes(png_bytes(grid(torch.cat(rows), nrow=len(judge.prompts)), scale=2))
    return {"path": path.name, "rows": [r["name"] for r in entries], "prompts": [q.text for q in judge.prompts],
            "sampler": "dpmpp_2m", "steps": 20, "guidance_scale": EVAL["guidance_scale"]}


def _ship(record: dict, prepared, work_dir, device, checkpoint_dir) -> str | None:
    """Save the best text DiT as the recipe's checkpoint (same weights `python -m course_lib.train` would make)."""
    best = next(r for r in record["runs"] if r["name"] == record["summary"]["best_dit"])
    recipe = get_recipe(RECIPE)
    wanted = {"cond_dim": recipe.model_kwargs["cond_dim"], **best["model_kwargs"]}
    if recipe.model_kwargs != wanted:
        print(f"the best DiT is {best['name']}; recipe {RECIPE} describes {recipe.model_kwargs}: set its "
              f"model_kwargs to {wanted} and run this command again (it only ships)")
        return None
    result, config = _finished(best, prepared, work_dir, device)
    seconds = best["seconds"]  # of training, summed over the pieces of the run
    result = dataclasses.replace(result, seconds=seconds,
                                 images_per_s=best["steps"] * config.batch_size / seconds if seconds > 0 else 0.0)
    save_trained(recipe, config, result, prepared, out=checkpoint_dir or pretrained.CHECKPOINT_DIR,
                 command=f"python -m course_lib.train {RECIPE} --steps {best['steps']}", device=device)
    return best["name"]
