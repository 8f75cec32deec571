"""course_lib.evaluation: test prompts, scoring, the guidance-scale, step-count and KL-weight sweeps, chapter 4's
pixels-vs-latents table, and the command line.

The sweeps run on throwaway random-weight checkpoints (the `t2i_checkpoints` fixture in conftest.py); scoring uses
the shipped shapes classifier, which reads fresh renders perfectly, so real renders are an exact oracle.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch

from course_lib import evaluation
from course_lib.evaluation import sweeps
from course_lib.data import HELD_OUT_PAIRS, TEMPLATES, Attributes, ShapesDataset, caption
from course_lib.evaluation import (Sweep, cfg_sweep, fresh_prompts, held_out_prompts, main, make_prompt,
                                   reference_renders, score, steps_sweep)
from course_lib.generate import generate
from course_lib.pretrained import load_checkpoint
from course_lib.recipes import RECIPES
from course_lib.metrics import PROMPT_KEYS, frechet_distance, graininess, load_classifier, prompt_accuracy, saturation
from course_lib.samplers import ddim, ddpm, make_timesteps


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(device="cpu")


@pytest.fixture(scope="module")
def small_cfg_sweep(t2i_checkpoints, classifier):
    """Three scales, two prompts, two images each, three steps: every setting of the sweep in a second."""
    prompts = fresh_prompts(2)
    sweep = cfg_sweep([0, 1, 3.5], prompts, steps=3, n_per_prompt=2, seed=11, model="shapes32-t2i",
                      directory=t2i_checkpoints, classifier=classifier, device="cpu")
    return sweep, prompts


# ----- prompts ---------------------------------------------------------------------------------------------------
def test_fresh_prompts_are_distinct_seeded_and_avoid_held_out_pairs():
    prompts = fresh_prompts(40)
    assert len(prompts) == 40 and len({p.attributes for p in prompts}) == 40
    assert not any((p.attributes.shape, p.attributes.color) in HELD_OUT_PAIRS for p in prompts)
    assert prompts == fresh_prompts(40)  # the same seed, the same prompts
    assert fresh_prompts(40, seed=7) != prompts
    assert fresh_prompts(5) == prompts[:5]  # asking for fewer keeps the first ones


def test_prompt_text_and_keys_follow_the_template():
    for p in fresh_prompts(3):  # default template names the background too
        assert p.text == caption(p.attributes, evaluation.DEFAULT_TEMPLATE)
        assert p.keys == PROMPT_KEYS + ("background",) and p.attributes.background in p.text
    for p in fresh_prompts(3, template=0):
        assert "{background}" not in TEMPLATES[0] and p.keys == PROMPT_KEYS
        assert p.text == caption(p.attributes, 0)


def test_held_out_prompts_name_each_held_out_pair_once():
    prompts = held_out_prompts()
    assert [(p.attributes.shape, p.attributes.color) for p in prompts] == list(HELD_OUT_PAIRS)
    assert all(p.attributes.shape in p.text and p.attributes.color in p.text for p in prompts)
    assert held_out_prompts() == prompts and held_out_prompts(seed=3) != prompts


def test_prompt_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="training data"):
        fresh_prompts(4, seed=evaluation.TRAINING_SEED)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        fresh_prompts(0)
    with pytest.raises(ValueError, match="only 720 distinct combinations"):
        fresh_prompts(721)
    assert len(set(fresh_prompts(720))) == 720  # all of them can be drawn
    with pytest.raises(ValueError, match="template"):
        make_prompt(Attributes("star", "red"), template=len(TEMPLATES))
    with pytest.raises(ValueError, match="unknown color"):
        make_prompt({"shape": "star", "color": "pink"})


# ----- reference renders and scoring (the classifier reads renders perfectly: an exact oracle) --------------------
def test_reference_renders_show_their_prompts(classifier):
    prompts = fresh_prompts(4) + held_out_prompts()
    real = reference_renders(prompts, 3)
    assert real.shape == (30, 3, 32, 32) and torch.equal(real, reference_renders(prompts, 3))
    assert not torch.equal(real, reference_renders(prompts, 3, seed=1))  # another jitter
    for i, p in enumerate(prompts):
        assert prompt_accuracy(real[3 * i:3 * i + 3], p.attributes, classifier, keys=p.keys) == 1.0


def test_reference_renders_redraw_what_the_prompt_leaves_free(classifier):
    prompt = make_prompt(Attributes("heart", "yellow", background="black"), template=0)  # background unnamed
    backgrounds = {a.background for a in classifier.predict(reference_renders([prompt], 20))}
    assert backgrounds == {"black", "white"}
    named = make_prompt(Attributes("heart", "yellow", background="black"))
    assert {a.background for a in classifier.predict(reference_renders([named], 20))} == {"black"}


def test_score_of_real_renders_is_perfect_and_of_wrong_images_is_not(classifier):
    prompts = fresh_prompts(6)
    real = reference_renders(prompts, 4)
    row = score(real, prompts, 4, classifier, real)
    assert row["prompt_accuracy"] == 1.0
    assert all(row[f"{k}_accuracy"] == 1.0 for k in PROMPT_KEYS + ("background",))
    assert abs(row["frechet_distance"]) < 1e-6  # identical sets
    assert {k: row[k] for k in ("clipped_fraction", "mean_chroma")} == saturation(real)
    # the images of prompt i scored against prompt i+1: the classifier notices
    shifted = score(real, prompts[1:] + prompts[:1], 4, classifier, real)
    assert shifted["prompt_accuracy"] < 0.5 and shifted["frechet_distance"] == row["frechet_distance"]


def test_score_rejects_mismatched_counts(classifier):
    prompts = fresh_prompts(2)
    real = reference_renders(prompts, 2)
    with pytest.raises(ValueError, match="2 prompts x 3 images"):
        score(real, prompts, 3, classifier, real)
    with pytest.raises(ValueError, match="reference"):
        score(real, prompts, 2, classifier, real[:3])


# ----- the guidance-scale sweep ------------------------------------------------------------------------------------
def test_cfg_sweep_table_shape(small_cfg_sweep):
    sweep, prompts = small_cfg_sweep
    assert isinstance(sweep, Sweep) and sweep.column("guidance_scale") == [0, 1, 3.5]
    keys = ["guidance_scale", "prompt_accuracy", "shape_accuracy", "color_accuracy", "size_accuracy",
            "position_accuracy", "background_accuracy", "frechet_distance", "clipped_fraction", "mean_chroma"]
    assert all(list(row) == keys for row in sweep.rows)
    assert all(images.shape == (4, 3, 32, 32) for images in sweep.images)
    assert sweep.baseline["prompt_accuracy"] == 1.0  # a second set of real renders
    assert sweep.row(guidance_scale=1) is sweep.rows[1] and sweep.index(guidance_scale=3.5) == 2
    text = str(sweep)
    assert text.splitlines()[0].split() == keys and "real renders vs real renders" in text
    short = sweep.table(["guidance_scale", "frechet_distance"]).splitlines()
    assert len(short) == 5 and short[0].split() == ["guidance_scale", "frechet_distance"]
    assert short[-1] == f"real renders vs real renders: frechet_distance {sweep.baseline['frechet_distance']:.3f}"
    narrow = sweep.table({"guidance_scale": "s", "frechet_distance": "FD"}).splitlines()  # headers for a notebook
    assert narrow[0].split() == ["s", "FD"] and max(len(line) for line in narrow[:4]) < len(short[0])
    assert narrow[-1] == f"real renders vs real renders: FD {sweep.baseline['frechet_distance']:.3f}"
    assert [line.split() for line in narrow[1:4]] == [line.split() for line in short[1:4]]
    with pytest.raises(KeyError, match="no column 'fid'"):
        sweep.table(["fid"])


def test_cfg_sweep_equals_generate_with_the_same_seeds(small_cfg_sweep, t2i_checkpoints):
    sweep, prompts = small_cfg_sweep
    for i, s in enumerate([0, 1, 3.5]):
        for j, prompt in enumerate(prompts):  # prompt j uses seed + j at every scale
            direct = generate(prompt.text, steps=3, guidance_scale=s, seed=11 + j, n=2, model="shapes32-t2i",
                              directory=t2i_checkpoints, device="cpu").images
            assert torch.equal(sweep.images[i][2 * j:2 * j + 2], direct)
    for j in range(2):  # s = 0 ignores the prompt: the images are the unconditional ("") samples of the seed
        unconditional = generate("", steps=3, guidance_scale=0, seed=11 + j, n=2, model="shapes32-t2i",
                                 directory=t2i_checkpoints, device="cpu").images
        assert torch.equal(sweep.images[0][2 * j:2 * j + 2], unconditional)
    assert not torch.equal(sweep.images[0], sweep.images[2])


def test_cfg_sweep_rows_are_the_metrics_of_their_images(small_cfg_sweep, classifier):
    sweep, prompts = small_cfg_sweep
    reference = reference_renders(prompts, 2)
    for row, images in zip(sweep.rows, sweep.images):
        assert row["frechet_distance"] == frechet_distance(images, reference, classifier)
        assert row["prompt_accuracy"] == pytest.approx(
            sum(prompt_accuracy(images[2 * j:2 * j + 2], p.attributes, classifier, keys=p.keys)
                for j, p in enumerate(prompts)) / 2)
        assert row["clipped_fraction"] == saturation(images)["clipped_fraction"]


def test_cfg_sweep_accepts_a_loaded_model_and_text_attribute_pairs(small_cfg_sweep, t2i_checkpoints, classifier):
    sweep, prompts = small_cfg_sweep
    loaded = load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    pairs = [(p.text, p.attributes) for p in prompts]  # scored on PROMPT_KEYS only: no background column
    again = cfg_sweep([3.5], pairs, steps=3, n_per_prompt=2, seed=11, model=loaded, directory=t2i_checkpoints,
                      classifier=classifier)
    assert torch.equal(again.images[0], sweep.images[2])
    assert "background_accuracy" not in again.rows[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(scales=[]), "non-empty list of numbers >= 0"),
    (dict(scales=[1, -2]), "numbers >= 0"),
    (dict(scales=["7"]), "numbers >= 0"),
    (dict(scales=[True]), "numbers >= 0"),
    (dict(scales=[3, 3]), "duplicates"),
    (dict(prompts=[]), "non-empty list of Prompt"),
    (dict(prompts="a red star"), "non-empty list of Prompt"),
    (dict(prompts=[42]), "Prompt or a \\(text, Attributes\\) pair"),
    (dict(n_per_prompt=0), "n_per_prompt must be an int >= 1"),
    (dict(prompts=[("a red star", Attributes("star", "red"))], n_per_prompt=1), "at least 2 images"),
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(sampler="euler_a"), "unknown sampler"),
    (dict(model="shapes32-unet"), "not text-conditional"),
])
def test_cfg_sweep_rejects_bad_input(t2i_checkpoints, classifier, kwargs, message):
    kwargs = {"scales": [1], "prompts": fresh_prompts(1), "steps": 2, "n_per_prompt": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        cfg_sweep(kwargs.pop("scales"), kwargs.pop("prompts"), directory=t2i_checkpoints, classifier=classifier,
                  device="cpu", **kwargs)


# ----- the step-count sweep ----------------------------------------------------------------------------------------
def test_steps_sweep_equals_the_samplers_called_directly(t2i_checkpoints, classifier):
    sweep = steps_sweep([2, 4], ["ddim", "ddpm"], n=3, seed=5, directory=t2i_checkpoints, classifier=classifier,
                        device="cpu")
    assert [(r["sampler"], r["steps"]) for r in sweep.rows] == [("ddim", 2), ("ddim", 4), ("ddpm", 2), ("ddpm", 4)]
    assert all(list(r) == ["sampler", "steps", "frechet_distance", "graininess"] for r in sweep.rows)
    p = load_checkpoint("shapes32-unet", device="cpu", directory=t2i_checkpoints)
    x_T = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    reference = ShapesDataset(size=32, n=3, seed=evaluation.REFERENCE_SEED).images()
    for sampler in (ddim, ddpm):
        for k in (2, 4):
            want = sampler(p.model, x_T, p.schedule, make_timesteps(p.schedule, k),
                           generator=torch.Generator().manual_seed(6))
            i = sweep.index(sampler=sampler.__name__, steps=k)
            assert torch.equal(sweep.images[i], want)
            assert sweep.rows[i]["frechet_distance"] == frechet_distance(want, reference, classifier)
            assert sweep.rows[i]["graininess"] == graininess(want, reference)
    assert set(sweep.baseline) == {"frechet_distance", "graininess"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=[]), "non-empty list of distinct ints"),
    (dict(steps=[0, 5]), "ints >= 1"),
    (dict(steps=[5, 5]), "distinct"),
    (dict(steps=[2.5]), "ints >= 1"),
    (dict(samplers=[]), "at least one sampler"),
    (dict(samplers=["euler_a"]), "unknown sampler"),
    (dict(n=1), "n must be an int >= 2"),
    (dict(model="shapes32-t2i"), "not an unconditional denoiser"),
])
def test_steps_sweep_rejects_bad_input(t2i_checkpoints, classifier, kwargs, message):
    kwargs = {"steps": [2], "n": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        steps_sweep(directory=t2i_checkpoints, classifier=classifier, device="cpu", **kwargs)


def test_sweep_lookups_name_the_problem():
    sweep = Sweep([{"steps": 5, "x": 1.0}, {"steps": 50, "x": 2.0}], [torch.zeros(1), torch.zeros(1)])
    with pytest.raises(KeyError, match="no column 'y'"):
        sweep.column("y")
    with pytest.raises(KeyError, match="0 rows match"):
        sweep.row(steps=10)


# ----- command line ------------------------------------------------------------------------------------------------
def test_command_line_prints_both_tables_and_writes_them_with_o(t2i_checkpoints, capsys, tmp_path):
    main(["cfg", "--scales", "0", "2", "--prompts", "2", "--per-prompt", "1", "--steps", "2",
          "--checkpoint-dir", str(t2i_checkpoints), "--device", "cpu", "-o", str(tmp_path / "cfg.json")])
    out = capsys.readouterr().out
    assert "seen combinations, 2 prompts" in out and "held-out pairs, 6 prompts" in out
    assert out.count("guidance_scale") == 2
    record = json.loads((tmp_path / "cfg.json").read_text())
    assert [r["guidance_scale"] for r in record["seen combinations"]["rows"]] == [0, 2]
    held_out = record["held-out pairs"]
    assert held_out["images_per_row"] == 6 and "frechet_distance" in held_out["baseline"]
    assert record["command"].startswith("python -m course_lib.evaluation cfg --scales 0 2 --prompts 2")
    main(["steps", "--steps", "1", "2", "--samplers", "ddim", "--n", "2", "--checkpoint-dir", str(t2i_checkpoints),
          "--device", "cpu", "-o", str(tmp_path / "steps.json")])
    assert capsys.readouterr().out.count("ddim") == 2
    record = json.loads((tmp_path / "steps.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in record["sweep"]["rows"]] == [("ddim", 1), ("ddim", 2)]
    assert set(record) == set(json.loads(evaluation.STEPS_SWEEP_PATH.read_text()))  # the shipped file's schema


def test_command_line_turns_bad_input_into_a_usage_error(t2i_checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cfg", "--scales", "-1", "--checkpoint-dir", str(t2i_checkpoints), "--device", "cpu"])
    assert exit_info.value.code == 2 and "numbers >= 0" in capsys.readouterr().err


# ----- the KL-weight sweep (a few steps on a handful of renders) ---------------------------------------------
@pytest.fixture
def small_vae_recipe(monkeypatch):
    """kl_sweep trains the shapes64-vae recipe: make that 16 training and 4 eval renders."""
    recipe = RECIPES["shapes64-vae"]
    small = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, n=16),
                                task=dataclasses.replace(recipe.task, eval_n=4))
    monkeypatch.setattr(sweeps, "get_recipe", lambda name: small)


def test_kl_sweep_rows(small_vae_recipe):
    rows = evaluation.kl_sweep((0.0, 1e-2), steps=2, batch_size=2, device="cpu", progress=False)
    assert [r["kl_weight"] for r in rows] == [0.0, 1e-2]
    for r in rows:
        assert {"psnr_db", "compression", "kl_per_image", "latent_std", "psnr_nudged_db", "steps",
                "batch_size"} <= set(r)
        assert r["compression"] == 48 and r["latent_std"] > 0 and (r["steps"], r["batch_size"]) == (2, 2)
        assert np.isfinite(r["psnr_db"]) and np.isfinite(r["psnr_nudged_db"]) and r["kl_per_image"] >= 0


def test_kl_sweep_uses_its_kl_weight(small_vae_recipe):
    """A huge KL weight must squeeze the posterior towards N(0, I): the KL per image drops a lot."""
    weak, strong = evaluation.kl_sweep((0.0, 1000.0), steps=6, batch_size=4, device="cpu", progress=False)
    assert strong["kl_per_image"] < 0.5 * weak["kl_per_image"], (weak, strong)  # measured: 41 -> 3.2 nats


def test_kl_cli_writes_json(small_vae_recipe, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    main(["kl", "--kl-weights", "0.000001", "--steps", "1", "--batch-size", "2", "--device", "cpu", "-o", str(out)])
    record = json.loads(out.read_text())
    assert [r["kl_weight"] for r in record["rows"]] == [1e-6]
    assert record["command"] == "python -m course_lib.evaluation kl --kl-weights 1e-06 --steps 1 --batch-size 2"
    assert record["device"].startswith("cpu")
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["kl", "--steps", "0"], "--steps and --batch-size must be >= 1"),
    (["kl", "--batch-size", "0"], "--steps and --batch-size must be >= 1"),
    (["kl", "--kl-weights", "-1"], "--kl-weights must all be >= 0"),
    (["kl", "--device", "gpu0"], "device 'gpu0' is not a device"),
    (["kl", "--steps", "two"], "invalid int value"),
    (["pixel-vs-latent", "--prompts", "0"], "--prompts, --per-prompt and --steps must be >= 1"),
    ([], "required"),
])
def test_json_writing_commands_reject_bad_arguments_without_writing(tmp_path, capsys, args, message):
    out = tmp_path / "table.json"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "-o", str(out)] if args else args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_pixel_vs_latent_cli_writes_the_table_the_notebook_reads(tmp_path, capsys):
    out = tmp_path / "pixel_vs_latent.json"
    main(["pixel-vs-latent", "--prompts", "1", "--per-prompt", "2", "--steps", "1", "-o", str(out)])
    record = json.loads(out.read_text())
    shipped = json.loads(evaluation.PIXEL_VS_LATENT_PATH.read_text())
    assert [r["model"] for r in record["rows"]] == list(evaluation.PIXEL_VS_LATENT_MODELS)
    assert set(record) == set(shipped) and set(record["rows"][0]) == set(shipped["rows"][0])  # the same schema
    assert record["command"] == ("python -m course_lib.evaluation pixel-vs-latent --prompts 1 --per-prompt 2 "
                                 "--guidance-scale 5 --steps 1")
    assert shipped["command"].startswith("python -m course_lib.evaluation pixel-vs-latent ")


def test_floors_cli_measures_checkpoints_and_fails_random_ones(t2i_checkpoints, tmp_path, capsys):
    """Random-weight stand-ins for three shipped checkpoints: measured, recorded with --write, reported as failing."""
    import shutil

    for path in t2i_checkpoints.iterdir():
        shutil.copy(path, tmp_path / path.name)
    with pytest.raises(SystemExit, match="below their quality floor: shapes32-unet, shapes32-t2i"):
        main(["floors", "--checkpoint-dir", str(tmp_path), "--write"])
    out = capsys.readouterr().out
    assert "shapes32-t2i: prompt_accuracy" in out and "FAILS its floor (>= 0.6)" in out
    recorded = json.loads((tmp_path / "shapes32-t2i.json").read_text())["quality_floor"]
    assert recorded["met"] is False and recorded["limit"] == RECIPES["shapes32-t2i"].floor.limit
    with pytest.raises(SystemExit) as exit_info:  # nothing to measure: a usage error, not a silent pass
        main(["floors", "--checkpoint-dir", str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and "no checkpoint with a quality floor" in capsys.readouterr().err


def test_cfg_command_held_out_options_choose_the_prompts(t2i_checkpoints, capsys, monkeypatch):
    from course_lib.evaluation import cli

    seen = []
    table = Sweep([{"guidance_scale": 1}], [torch.zeros(2, 3, 4, 4)], {})  # what cfg_sweep returns, in small
    monkeypatch.setattr(cli, "cfg_sweep", lambda scales, prompts, **kw: seen.append((scales, prompts)) or table)
    main(["cfg", "--scales", "1", "3.5", "--held-out-draws", "2", "--held-out-seed", "7", "--held-out-only",
          "--checkpoint-dir", str(t2i_checkpoints), "--device", "cpu"])
    (scales, prompts), = seen  # --held-out-only: no table of fresh prompts
    assert scales == [1, 3.5] and prompts == held_out_prompts(seed=7) + held_out_prompts(seed=8)
    assert "held-out pairs, 12 prompts" in capsys.readouterr().out
    seen.clear()
    main(["cfg", "--prompts", "3", "--checkpoint-dir", str(t2i_checkpoints), "--device", "cpu"])
    assert [p for _, p in seen] == [fresh_prompts(3), held_out_prompts()]  # defaults: one draw, EVAL_SEED
    with pytest.raises(SystemExit) as exit_info:
        main(["cfg", "--held-out-draws", "0", "--checkpoint-dir", str(t2i_checkpoints)])
    assert exit_info.value.code == 2 and "--held-out-draws must be an int >= 1" in capsys.readouterr().err


def test_kl_cli_writes_the_schema_of_the_shipped_table(small_vae_recipe, tmp_path):
    out = tmp_path / "sweep.json"
    main(["kl", "--kl-weights", "0", "--steps", "1", "--batch-size", "2", "--device", "cpu", "-o", str(out)])
    record, shipped = json.loads(out.read_text()), json.loads(evaluation.KL_SWEEP_PATH.read_text())
    assert set(record) == set(shipped) and set(record["rows"][0]) == set(shipped["rows"][0])
