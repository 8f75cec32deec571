"""`python -m course_lib.train` and `train.run`: every shipped recipe goes through one code path and writes the same
kind of JSON (provenance); --time-budget; the CLI's errors. Runs are tiny and written to tmp_path only."""
import dataclasses
import functools
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from course_lib import pretrained
from course_lib import train as train_mod
from course_lib.floors import Floor
from course_lib.data import ShapesDataset
from course_lib.images import grid
from course_lib.losses import EpsilonLoss
from course_lib.models import unet_tiny
from course_lib.recipes import RECIPES
from course_lib.schedules import NoiseSchedule
from course_lib.tasks import Autoencoding, Autoregression, Classification, ConsistencyDistillation, Contrastive, \
    Denoising, Tokenizing
from course_lib.training import TrainConfig

SMALLER_TASK = {Denoising: dict(sample_steps=2), ConsistencyDistillation: dict(sample_steps=2),
                Autoencoding: dict(eval_n=4), Classification: dict(eval_n=8), Contrastive: dict(eval_n=8),
                Autoregression: dict(), Tokenizing: dict(eval_n=8)}


def tiny(name: str, **train) -> "train_mod.Recipe":
    """A shipped recipe, shrunk for a test: 32 examples, 3 steps of 4 (logged every 2), small evaluations, and no
    quality floor (a test below measures one)."""
    recipe = RECIPES[name]
    return dataclasses.replace(
        recipe, data=dataclasses.replace(recipe.data, n=32), floor=None,
        task=dataclasses.replace(recipe.task, **SMALLER_TASK[type(recipe.task)]),
        train=dataclasses.replace(recipe.train, **{**dict(steps=3, batch_size=4, warmup=0, ckpt_every=0,
                                                          log_every=2), **train}))


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_trains_through_run_and_records_its_provenance(name, tmp_path, capsys):
    recipe = tiny(name)
    path = train_mod.run(recipe, out=tmp_path, device="cpu", command=f"python -m course_lib.train {name}",
                         progress=False)
    assert path == tmp_path / f"{name}.safetensors" and "saved" in capsys.readouterr().out
    has_preview = isinstance(recipe.task, (Denoising, Autoencoding, Autoregression, Tokenizing))
    expected = {f"{name}.json", f"{name}.safetensors"} | ({f"{name}.png"} if has_preview else set())
    assert {p.name for p in tmp_path.iterdir()} == expected  # the resumable state is removed on success
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    # the one provenance writer: the same fields for every kind of model
    assert meta["name"] == name and meta["steps"] == 3 and meta["world_size"] == 1
    assert meta["data"] == dataclasses.asdict(recipe.data) and meta["init_from"] == recipe.init_from
    assert meta["train_config"] == json.loads(json.dumps(dataclasses.asdict(recipe.train)))
    assert meta["task"] == {"kind": type(recipe.task).__name__, **dataclasses.asdict(recipe.task)}
    assert meta["command"] == f"python -m course_lib.train {name}" and meta["description"] == recipe.description
    assert meta["metrics"]["device"].startswith("cpu") and meta["metrics"]["train_images_per_s"] > 0
    # the loss curve says what each entry is: the mean of `every` steps; final_loss is the mean of the 3 steps
    curve = meta["loss_curve"]
    assert curve["every"] == 2 and len(curve["loss"]) == math.ceil(3 / 2) == 2
    assert meta["final_loss"] == pytest.approx((2 * curve["loss"][0] + curve["loss"][1]) / 3)
    loaded = pretrained.load(name, device="cpu", directory=tmp_path)  # loads as users load it
    assert (loaded.schedule is not None) == isinstance(recipe.task, Denoising)
    metrics = meta["metrics"]
    if isinstance(recipe.task, Denoising):
        assert meta["schedule"] == {"name": recipe.task.schedule, "num_train_timesteps": 1000}
        assert meta["text_encoder"] == recipe.task.text_encoder and meta["vae"] == recipe.task.vae
    elif isinstance(recipe.task, Autoencoding):
        assert len(curve["reconstruction"]) == len(curve["kl"]) == 2  # the VAE's parts, labelled like the loss
        assert metrics["compression"] == 48 and np.isfinite(metrics["psnr_db"]) and metrics["eval"].startswith("4 ")
        assert metrics["scaling_factor"] == round(loaded.model.config.scaling_factor, 5) > 0
    elif isinstance(recipe.task, Classification):
        assert set(metrics["accuracy"]) == {"shape", "color", "size", "position", "background", "all"}
    elif isinstance(recipe.task, Autoregression):
        assert meta["text_encoder"] == "shapes-clip" and meta["tokenizer"] == recipe.task.tokenizer
        assert metrics["sequence_length"] == loaded.model.config.seq_len and metrics["forward_gflops_per_image"] > 0
        if recipe.task.tokenizer is None:  # pixels: the palette of these 32 renders (the shipped one is exact)
            assert 0 <= metrics["tokenizer_max_error_0_255"] <= 255
            assert metrics["vocab_size"] == len(loaded.model.config.palette)
    elif isinstance(recipe.task, Tokenizing):
        assert len(curve["codebook"]) == len(curve["commitment"]) == 2 and metrics["tokens_per_image"] == 64
        assert 1 <= metrics["codes_used"] <= 1024 and metrics["eval"].startswith("8 ")
    else:
        assert {"zero_shot", "zero_shot_ensemble", "retrieval_top1", "retrieval_top1_same_attributes"} <= set(metrics)
        assert metrics["eval"] == "8 fresh renders, seed 123"


def test_vae_preview_is_renders_over_reconstructions_and_runs_are_seeded(tmp_path):
    for out in ("a", "b"):
        train_mod.run(tiny("shapes64-vae"), out=tmp_path / out, device="cpu", progress=False)
    preview = png_array((tmp_path / "a" / "shapes64-vae.png").read_bytes())
    assert preview.shape == (2 * (2 * 64 + 2), 2 * (8 * 64 + 7 * 2), 3)  # 8 renders, 8 reconstructions, x2
    renders = ShapesDataset(size=64, n=8, seed=999).images()
    assert np.array_equal(preview[::2, ::2][:64], grid(renders, nrow=8))  # top row: the renders themselves
    wa, wb = (load_file(str(tmp_path / d / "shapes64-vae.safetensors")) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_cli_writes_a_loadable_checkpoint_and_preview(tmp_path, capsys):
    train_mod.main(["toy2d-mlp", "--steps", "30", "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy2d-mlp.json", "toy2d-mlp.png", "toy2d-mlp.safetensors"]
    assert (tmp_path / "toy2d-mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = pretrained.load("toy2d-mlp", device="cpu", directory=tmp_path).meta
    assert meta["command"] == f"python -m course_lib.train toy2d-mlp --steps 30 --batch-size 64 --device cpu --out " \
                              f"{tmp_path}"
    assert meta["steps"] == 30 and meta["data"]["dataset"] == "toy2d" and meta["metrics"]["train_images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["no-such-recipe"], "valid recipes: shapes32-unet, shapes32-t2i, shapes32-lcm, shapes64-latent-dit, shapes64-t2i, "
                         "shapes64-latent-t2i, shapes32-ar, shapes-vq, shapes32-ar-tokens, toy2d-mlp, "
                         "shapes64-vae, shapes-classifier, shapes-clip"),
    (["toy2d-mlp", "--device", "gpu0"], "--device: device 'gpu0' is not a device; use one of 'cpu', 'cuda'"),
    (["toy2d-mlp", "--steps", "0"], "steps must be >= 1, got 0"),
    (["toy2d-mlp", "--batch-size", "-2"], "batch_size must be >= 1, got -2"),
    (["toy2d-mlp", "--time-budget", "0"], "--time-budget must be a number of seconds > 0"),
    (["toy2d-mlp", "--time-budget", "-5"], "--time-budget must be a number of seconds > 0"),
    (["toy2d-mlp", "--time-budget", "nan"], "--time-budget must be a number of seconds > 0"),
    (["toy2d-mlp", "--time-budget", "inf"], "--time-budget must be a number of seconds > 0"),
    (["toy2d-mlp", "--time", "60"], "--time"),  # abbreviations would survive into the recorded command
])
def test_train_cli_errors_exit_2_before_training(args, message, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("must not train"))
    monkeypatch.setattr(train_mod, "fitting_steps", lambda *a, **k: pytest.fail("must not probe"))
    monkeypatch.setattr(train_mod.pretrained, "save", lambda *a, **k: pytest.fail("must not write"))
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_cli_without_cuda_says_so(capsys):
    if not torch.cuda.is_available():  # (on a CUDA machine there is nothing to refuse)
        with pytest.raises(SystemExit):
            train_mod.main(["toy2d-mlp", "--device", "cuda"])
        assert "CUDA is not available here; use 'cpu'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["shapes64-latent-t2i", "shapes64-vae", "shapes-clip"])
def test_train_cli_passes_time_budget_to_run_for_every_recipe(name, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(train_mod, "run", lambda recipe, **kwargs: seen.update(recipe=recipe, **kwargs))
    train_mod.main([name, "--time-budget", "300", "--out", str(tmp_path), "--device", "cpu"])
    assert seen["recipe"] is RECIPES[name] and seen["time_budget"] == 300.0
    assert seen["command"] == f"python -m course_lib.train {name} --time-budget 300 --out {tmp_path} --device cpu"
    assert seen["steps"] is None and seen["out"] == str(tmp_path)


# ----- --time-budget -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, expected", [
    ("python -m course_lib.train shapes64-t2i --time-budget 300",
     "python -m course_lib.train shapes64-t2i --steps 2900"),
    ("python -m course_lib.train shapes64-t2i --time-budget 300 --out /root/out --steps 5000 --device cuda",
     "python -m course_lib.train shapes64-t2i --device cuda --steps 2900"),
    ("python -m course_lib.train shapes64-t2i --time-budget=300 --out=/root/out --steps=5000 --batch-size 64",
     "python -m course_lib.train shapes64-t2i --batch-size 64 --steps 2900"),
    ("python -m course_lib.train shapes64-t2i --out '/my dir' --device 'cuda:1' --time-budget 1e3",
     "python -m course_lib.train shapes64-t2i --device cuda:1 --steps 2900"),
])
def test_command_with_steps(command, expected):
    assert train_mod._command_with_steps(command, 2900) == expected


def test_command_with_steps_keeps_quoting_and_none():
    assert train_mod._command_with_steps(None, 100) is None
    out = train_mod._command_with_steps("python -m course_lib.train 'my recipe' --time-budget 5", 100)
    assert out == "python -m course_lib.train 'my recipe' --steps 100"


def tiny_denoiser_setup():
    torch.manual_seed(0)
    model = unet_tiny(image_size=8, base_channels=8, channel_mult=(1, 2), attn_resolutions=(4,))
    data = torch.rand(8, 3, 8, 8) * 2 - 1
    config = TrainConfig(steps=1000, batch_size=2, warmup=200, log_every=10)
    return model, EpsilonLoss(NoiseSchedule.linear()), data, config


def test_fitting_steps_real_probe(capsys):
    model, loss_fn, data, config = tiny_denoiser_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    steps = train_mod.fitting_steps(model, loss_fn, data, config, 3600.0, device="cpu")
    assert steps % 100 == 0 and steps >= config.warmup + 100
    assert "time budget 3600 s at" in capsys.readouterr().out
    # the probe trains throwaway copies: the model and the global RNG are untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_fitting_steps_plans_with_safety_margin(monkeypatch):
    model, loss_fn, data, config = tiny_denoiser_setup()
    calls = []

    def fake_train(m, objective, d, c, **kwargs):
        calls.append((m, c))
        return type("Result", (), {"seconds": 2.0})()  # 40 steps in 2 s: 20 steps/s

    from course_lib import training

    monkeypatch.setattr(training, "train", fake_train)  # what time_steps calls
    assert train_mod.SAFETY == 0.8
    assert train_mod.fitting_steps(model, loss_fn, data, config, 100.0) == 1600  # 0.8 * 100 s * 20 steps/s
    assert train_mod.fitting_steps(model, loss_fn, data, config, 106.0) == 1600  # 1696 rounds down
    assert train_mod.fitting_steps(model, loss_fn, data, config, 10.0) == 300  # 160 -> 100 -> warmup + 100
    warm, timed = calls[0][1], calls[1][1]
    assert (warm.steps, warm.warmup, warm.ckpt_every) == (10, 0, 0)
    assert (timed.steps, timed.warmup, timed.ckpt_every) == (40, 0, 0)
    assert all(m is not model for m, _ in calls)  # copies


def tiny_toy_recipe():
    return tiny("toy2d-mlp", batch_size=16, steps=3000)


def test_run_with_time_budget_records_the_equivalent_steps_command(tmp_path):
    recipe = tiny_toy_recipe()
    command = f"python -m course_lib.train toy2d-mlp --time-budget 0.001 --out {tmp_path / 'a'}"
    train_mod.run(recipe, out=tmp_path / "a", device="cpu", command=command, progress=False, time_budget=0.001)
    meta = json.loads((tmp_path / "a" / "toy2d-mlp.json").read_text())
    assert meta["steps"] == meta["train_config"]["steps"] == 100  # the floor: warmup (0) + 100
    assert meta["command"] == "python -m course_lib.train toy2d-mlp --steps 100"
    # ... and that command gives the very same weights
    train_mod.run(recipe, out=tmp_path / "b", steps=100, device="cpu", progress=False)
    wa, wb = (load_file(str(tmp_path / d / "toy2d-mlp.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_time_budget_is_capped_by_steps(tmp_path):
    train_mod.run(tiny_toy_recipe(), out=tmp_path, steps=30, device="cpu", command="python -m course_lib.train "
                  "toy2d-mlp --steps 30 --time-budget 0.001", progress=False, time_budget=0.001)
    meta = json.loads((tmp_path / "toy2d-mlp.json").read_text())
    assert meta["steps"] == 30 and meta["command"] == "python -m course_lib.train toy2d-mlp --steps 30"


def test_an_interrupted_run_resumes_with_the_same_command_and_refuses_another(tmp_path, capsys, monkeypatch):
    """The state file next to the checkpoint: resuming continues; other settings get a message naming the fix."""
    recipe = tiny("toy2d-mlp", steps=6, ckpt_every=3)
    state = tmp_path / "toy2d-mlp.train.safetensors"

    class Stop(Exception):
        pass

    def stop_after_step_4(step, history):  # the step-3 state is on disk by then
        if step == 4:
            raise Stop

    monkeypatch.setattr(train_mod, "train", functools.partial(train_mod.train, callback=stop_after_step_4))
    with pytest.raises(Stop):
        train_mod.run(recipe, out=tmp_path, device="cpu", progress=False)
    monkeypatch.undo()
    assert state.exists() and not (tmp_path / "toy2d-mlp.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:  # the CLI with other steps: refused, saying how to resume
        train_mod.main(["toy2d-mlp", "--steps", "9", "--out", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "steps: saved 6, now 9" in capsys.readouterr().err and state.exists()
    train_mod.run(recipe, out=tmp_path, device="cpu", progress=False)
    assert not state.exists() and json.loads((tmp_path / "toy2d-mlp.json").read_text())["steps"] == 6


@pytest.mark.parametrize("limit, met", [(0.0, True), (1.01, False)])
def test_run_measures_the_recipes_floor_on_the_saved_checkpoint_and_records_it(limit, met, tmp_path, capsys):
    floor = Floor("accuracy", limit, dict(n=16, size=32, seed=7))
    train_mod.run(dataclasses.replace(tiny("shapes-classifier"), floor=floor), out=tmp_path, device="cpu",
                  progress=False)
    quality = json.loads((tmp_path / "shapes-classifier.json").read_text())["quality_floor"]
    assert quality["metric"] == "accuracy" and quality["limit"] == limit and quality["settings"] == floor.settings
    assert quality["met"] is met and 0.0 <= quality["measured"] <= 1.0
    assert ("meets its floor" if met else "FAILS its floor") in capsys.readouterr().out


def test_run_saves_the_ema_weights_not_the_last_steps(tmp_path, monkeypatch):
    """Denoisers are sampled from the EMA: the checkpoint must hold it (fp16), not the raw weights."""
    results = []
    real_train = train_mod.train

    def keep_result(*args, **kwargs):
        results.append(real_train(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(train_mod, "train", keep_result)
    train_mod.run(tiny("toy2d-mlp", steps=40, lr=1e-2), out=tmp_path, device="cpu", progress=False)
    saved = load_file(str(tmp_path / "toy2d-mlp.safetensors"))
    (result,) = results
    ema, raw = result.ema.state_dict(), result.model.state_dict()
    assert all(torch.equal(value, ema[key].half()) for key, value in saved.items())
    assert not all(torch.equal(value, raw[key].half()) for key, value in saved.items())  # and that is not raw


def test_an_interrupted_time_budget_run_resumes_the_steps_it_planned(tmp_path, monkeypatch):
    """A second probe would plan another step count, which the saved state would refuse: there is none."""
    recipe = tiny("toy2d-mlp", steps=3000, ckpt_every=50)

    class Stop(Exception):
        pass

    def stop_after_step_60(step, history):
        if step == 60:
            raise Stop

    monkeypatch.setattr(train_mod, "fitting_steps", lambda *a, **k: 200)  # the first run's plan: 200 steps
    monkeypatch.setattr(train_mod, "train", functools.partial(train_mod.train, callback=stop_after_step_60))
    with pytest.raises(Stop):
        train_mod.run(recipe, out=tmp_path, device="cpu", progress=False, time_budget=60.0)
    monkeypatch.undo()
    monkeypatch.setattr(train_mod, "fitting_steps", lambda *a, **k: pytest.fail("must not probe again"))
    train_mod.run(recipe, out=tmp_path, device="cpu", progress=False, time_budget=60.0,
                  command="python -m course_lib.train toy2d-mlp --time-budget 60")
    meta = json.loads((tmp_path / "toy2d-mlp.json").read_text())
    assert meta["steps"] == 200 and meta["command"] == "python -m course_lib.train toy2d-mlp --steps 200"
