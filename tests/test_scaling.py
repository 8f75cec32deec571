"""Chapter 6's experiment (course_lib.evaluation.scaling): the power-law fit, where runs are measured, and the whole
sweep at toy size: resumable, equal training FLOPs for every run, and a shipped DiT equal to what
`python -m course_lib.train` makes with the steps its JSON names."""
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from course_lib.evaluation import scaling
from course_lib.evaluation.scaling import FRACTIONS, _points, fit_power_law


def test_fit_recovers_an_exact_power_law():
    flops = [1e12 * 2**k for k in range(5)]
    fit = fit_power_law(flops, [500 * (c / 1e12) ** -0.3 for c in flops])
    assert fit["slope"] == pytest.approx(-0.3) and fit["r2"] == pytest.approx(1.0)
    assert fit["doubling_changes_fd_percent"] == pytest.approx(100 * (2**-0.3 - 1))  # -18.8%
    assert fit["slope_interval_95"] == pytest.approx([-0.3, -0.3], abs=1e-9)


def test_fit_interval_widens_with_scatter_and_covers_the_truth():
    g = torch.Generator().manual_seed(0)
    flops = [1e12 * 2**k for k in range(8)]
    noise = (torch.randn(8, generator=g, dtype=torch.float64) * 0.05).exp()
    fit = fit_power_law(flops, [float(300 * (c / 1e12) ** -0.2 * e) for c, e in zip(flops, noise)])
    low, high = fit["slope_interval_95"]
    assert low < -0.2 < high and high - low > 0.01 and 0 < fit["r2"] < 1


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1.0, 2.0], [3.0, 2.0])


def test_every_run_is_measured_at_the_budget_fractions_and_the_common_image_count():
    plan = {"training_flops": 3e9 * 0.1 * 64 * 1600, "batch_size": 64, "fractions": list(FRACTIONS),
            "fixed_steps": 150}
    points = _points(plan, gflops=0.1)  # 1600 steps for the whole budget
    assert points == [(100, 1 / 16), (150, None), (200, 1 / 8), (400, 1 / 4), (800, 1 / 2), (1600, 1.0)]
    assert _points({**plan, "fixed_steps": 400}, gflops=0.1)[2] == (400, 1 / 4)  # no duplicate step


@pytest.fixture
def toy_sweep(monkeypatch):
    """The sweep shrunk to seconds: 256 training images, two DiTs and one U-Net, 8 images per measurement."""
    import course_lib.recipes as recipes

    monkeypatch.setattr(scaling, "EVAL", {**scaling.EVAL, "prompts": 2, "per_prompt": 4, "steps": 3})
    monkeypatch.setattr(scaling, "EPS_MSE_IMAGES", 32)
    monkeypatch.setattr(scaling, "CONDITIONING_DIT", "DiT-Ti/2")
    monkeypatch.setattr(scaling, "DITS", ("DiT-Ti/1",))
    monkeypatch.setattr(scaling, "UNETS", (scaling.ScalingRun(
        "U-Net-T", "unet_latent_cond", dict(base_channels=16, num_res_blocks=1, dropout=0.0), matched_to="DiT-Ti/1"),))
    recipe = recipes.RECIPES[scaling.RECIPE]
    small = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, n=256), floor=None)
    monkeypatch.setitem(recipes.RECIPES, scaling.RECIPE, small)
    return recipes


def test_toy_sweep_gives_every_run_the_same_compute_resumes_and_ships_what_train_makes(toy_sweep, tmp_path,
                                                                                        capsys):
    from course_lib import pretrained
    from course_lib import train as train_mod

    out, work, ckpt = tmp_path / "scaling.json", tmp_path / "work", tmp_path / "ckpt"
    record = scaling.scaling_sweep(0.2, output=out, work_dir=work, device="cpu", checkpoint_dir=ckpt, command="x")
    assert json.loads(out.read_text())["summary"] == record["summary"]
    kept = "" if record["kept_conditioning"] == "pooled" else " (cross)"
    assert [r["name"] for r in record["runs"]] == ["DiT-Ti/2", "DiT-Ti/2 (cross)", f"DiT-Ti/1{kept}", "U-Net-T"]
    budget = record["plan"]["training_flops"]
    for run in record["runs"]:
        steps = [row["step"] for row in run["curve"]]
        assert steps == sorted(set(steps)) and run["curve"][-1]["fraction"] == 1.0
        spent = run["curve"][-1]["training_flops"]
        per_step = 3e9 * run["forward_gflops"] * record["plan"]["batch_size"]
        assert abs(spent - budget) <= per_step / 2 + 1e-6 * budget  # the same compute, up to rounding to a step
        for row in run["curve"]:
            assert row["frechet_distance_se"] > 0 and 0 <= row["prompt_accuracy"] <= 1 and row["eps_mse"] > 0
    assert len(record["summary"]["frontier"]) == len(FRACTIONS) and "frontier_fit" in record["summary"]
    assert record["samples"]["rows"][-1] == "U-Net-T" and (tmp_path / "scaling.png").stat().st_size > 0
    best = next(r for r in record["runs"] if r["name"] == record["summary"]["best_dit"])
    if record["shipped"] is None:  # the recipe names another network: the command says what to set, ships nothing
        assert "set its model_kwargs" in capsys.readouterr().out and not ckpt.exists()
        recipe = toy_sweep.RECIPES[scaling.RECIPE]
        toy_sweep.RECIPES[scaling.RECIPE] = dataclasses.replace(
            recipe, model_kwargs={"cond_dim": 64, **best["model_kwargs"]})
    seconds = [r["seconds"] for r in record["runs"]]
    again = scaling.scaling_sweep(0.2, output=out, work_dir=work, device="cpu", checkpoint_dir=ckpt, command="x")
    assert [r["seconds"] for r in again["runs"]] == seconds  # resumed: nothing trained twice
    assert again["shipped"] == best["name"]
    meta = json.loads((ckpt / f"{scaling.RECIPE}.json").read_text())
    assert meta["command"] == f"python -m course_lib.train {scaling.RECIPE} --steps {best['steps']}"
    # that command trains exactly these weights: one run of N steps equals the sweep's run trained in pieces
    retrained = tmp_path / "retrained"
    train_mod.run(toy_sweep.RECIPES[scaling.RECIPE], out=retrained, steps=best["steps"], device="cpu",
                  progress=False)
    shipped, fresh = load_file(str(ckpt / f"{scaling.RECIPE}.safetensors")), \
        load_file(str(retrained / f"{scaling.RECIPE}.safetensors"))
    assert shipped.keys() == fresh.keys() and all(torch.equal(shipped[k], fresh[k]) for k in shipped)
    p = pretrained.load(scaling.RECIPE, device="cpu", directory=ckpt)
    assert p.meta["vae"] == "shapes64-vae" and p.meta["kind"] == "dit"
    assert math.isfinite(p.meta["final_loss"])


def test_cli_refuses_a_budget_that_is_not_positive(capsys):
    from course_lib.evaluation.cli import main

    with pytest.raises(SystemExit):
        main(["scaling", "--minutes", "0"])
    assert "--minutes must be > 0" in capsys.readouterr().err
