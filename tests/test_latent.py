"""Latent diffusion: course_lib.latent (the shipped shapes64-vae, scaled latents, the VAE recipe and KL sweep), the
latent recipes and --time-budget of course_lib.train, and latent checkpoints in generate() and the player.

Uses the shipped checkpoints in data/checkpoints (shapes64-vae, shapes64-latent-t2i, shapes64-t2i, shapes-clip);
everything trained here is tiny (a few steps on a handful of images) and written to tmp_path.
"""
import dataclasses
import functools
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from course_lib import generate as pipeline, latent, pretrained
from course_lib import train as train_mod
from course_lib.data import ShapesDataset
from course_lib.models import UNet, VAE, unet_tiny, vae_f8
from course_lib.models.vae import VAETrainConfig, psnr
from course_lib.pretrained import CheckpointNotFoundError
from course_lib.recipes import RECIPES
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig
from course_lib.widgets import DenoisingPlayer
from course_lib.widgets.display import grid, to_uint8, upscale

PROMPT = "a small blue star at the top"
LATENT = "shapes64-latent-t2i"
CKPT = pretrained.CHECKPOINT_DIR
GUTTER = 110  # label_rows' left gutter in player frames and GIF frames


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shipped_json(name: str) -> dict:
    return json.loads((CKPT / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def vae() -> VAE:
    return latent.load_vae(device="cpu")


@pytest.fixture(scope="module")
def renders() -> torch.Tensor:
    """16 fresh 64x64 renders (a seed the VAE never trained on), (16, 3, 64, 64) in [-1, 1]."""
    return ShapesDataset(size=64, n=16, seed=4242).images()


@pytest.fixture(scope="module")
def latent_gen():
    """generate() with the shipped latent model: 3 DDIM steps, 2 images, on the CPU."""
    return pipeline.generate(PROMPT, steps=3, n=2, seed=0, model=LATENT, device="cpu")


def tiny_vae() -> VAE:
    torch.manual_seed(0)
    return vae_f8(base_channels=8, channel_mult=(1, 2, 2, 2), groups=4).eval()


# ----- the shipped VAE and scaled latents --------------------------------------------------------
def test_shipped_vae_checkpoint(vae):
    assert isinstance(vae, VAE) and not vae.training
    meta = shipped_json("shapes64-vae")
    assert meta["kind"] == "vae" and meta["schedule"] is None
    assert vae.config.scaling_factor == pytest.approx(meta["config"]["scaling_factor"])
    assert vae.config.scaling_factor > 0
    assert meta["metrics"]["scaling_factor"] == round(vae.config.scaling_factor, 5)
    assert meta["metrics"]["compression"] == 48 and meta["metrics"]["psnr_db"] > 30
    # the recipe recreates it: same data and hyper-parameters, and the recorded command names the steps it ran
    recipe = latent.VAERecipe()
    assert meta["data"] == {"dataset": "shapes", "n": recipe.n, "seed": recipe.seed, "size": recipe.size}
    assert meta["train_config"] == dataclasses.asdict(dataclasses.replace(recipe.train, steps=meta["steps"]))
    assert meta["command"].startswith("python -m course_lib.train shapes64-vae")


def test_encode_decode_shapes(vae, renders):
    z = latent.encode_latents(vae, renders)
    assert z.shape == (16, 4, 8, 8) and z.dtype == torch.float32 and z.device.type == "cpu"
    x = latent.decode_latents(vae, z)
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all()


def test_latents_are_the_scaled_posterior_mean(vae, renders):
    scale, renders = vae.config.scaling_factor, renders[:4]
    z = latent.encode_latents(vae, renders)
    with torch.no_grad():
        mean = vae.encode(renders).mode()
        torch.testing.assert_close(z, mean * scale)
        # decode undoes the scaling: D(z / scaling_factor) is the plain deterministic round trip
        torch.testing.assert_close(latent.decode_latents(vae, z), vae.decode(mean), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(latent.decode_latents(vae, torch.ones(1, 4, 8, 8)),
                                   vae.decode(torch.ones(1, 4, 8, 8) / scale))


def test_batching_does_not_change_the_result(vae, renders):
    renders = renders[:5]
    z = latent.encode_latents(vae, renders)
    torch.testing.assert_close(latent.encode_latents(vae, renders, batch_size=2), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latent.decode_latents(vae, z, batch_size=3), latent.decode_latents(vae, z),
                               rtol=1e-5, atol=1e-5)


def test_shipped_vae_reconstructs_fresh_renders(vae, renders):
    recon = latent.decode_latents(vae, latent.encode_latents(vae, renders))
    assert psnr(recon, renders) > 28


def test_scaled_latents_have_about_unit_std(vae, renders):
    z = latent.encode_latents(vae, renders)
    assert 0.7 < z.std().item() < 1.4  # what scaling_factor is for: the scale of the noise diffusion adds
    unscaled = z / vae.config.scaling_factor
    assert abs(unscaled.std().item() - z.std().item()) > 0.2  # ... and the factor does change it


def test_load_vae_is_cached_and_latent_decoder_decodes(vae, renders):
    assert latent.load_vae(device="cpu") is vae
    assert latent.load_vae(device="cpu", directory=str(CKPT)) is latent.load_vae(device="cpu", directory=CKPT)
    z = latent.encode_latents(vae, renders[:2])
    decode = latent.latent_decoder(device="cpu")
    assert torch.equal(decode(z), latent.decode_latents(vae, z))


def test_load_vae_refuses_other_checkpoints():
    with pytest.raises(ValueError, match="'shapes-classifier' holds a ShapesClassifier, not a VAE"):
        latent.load_vae("shapes-classifier", device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes64-vae"):
        latent.load_vae(device="cpu", directory="/nonexistent/checkpoints")


def test_vae_without_scaling_factor_names_measure_scaling_factor():
    vae = tiny_vae()
    assert vae.config.scaling_factor is None
    with pytest.raises(ValueError, match="measure_scaling_factor"):
        latent.encode_latents(vae, torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="measure_scaling_factor"):
        latent.decode_latents(vae, torch.zeros(1, 4, 8, 8))


def test_non_vae_is_a_clear_value_error():
    for model in (unet_tiny(), None, "shapes64-vae"):
        with pytest.raises(ValueError, match="expected a course_lib VAE.*load_vae"):
            latent.encode_latents(model, torch.zeros(1, 3, 64, 64))
        with pytest.raises(ValueError, match="expected a course_lib VAE"):
            latent.decode_latents(model, torch.zeros(1, 4, 8, 8))


def test_evaluate_reports_psnr_and_48x_compression(vae):
    metrics = latent.evaluate(vae, latent.VAERecipe(eval_n=8, eval_seed=7))
    assert metrics["compression"] == 48  # 64*64*3 / (8*8*4), exactly
    assert metrics["psnr_db"] > 28
    assert metrics["eval"] == "8 fresh renders, seed 7"


# ----- train_vae_recipe and the KL sweep (a few steps on a handful of images) -------------------------
TINY_VAE_RECIPE = latent.VAERecipe(n=16, eval_n=4, train=VAETrainConfig(steps=5, batch_size=8, warmup=0,
                                                                        log_every=1, seed=0))


@pytest.fixture(scope="module")
def tiny_vae_checkpoint(tmp_path_factory):
    """train_vae_recipe on 16 renders: 2 steps of batch 4 (overriding the recipe's 5 x 8), 4 eval renders."""
    out = tmp_path_factory.mktemp("vae")
    path = latent.train_vae_recipe(out, device="cpu", command="my command", steps=2, batch_size=4, progress=False,
                                   recipe=TINY_VAE_RECIPE)
    return out, path


def test_train_vae_recipe_writes_a_loadable_checkpoint(tiny_vae_checkpoint):
    out, path = tiny_vae_checkpoint
    assert path == out / "shapes64-vae.safetensors"
    assert sorted(p.name for p in out.iterdir()) == ["shapes64-vae.json", "shapes64-vae.png",
                                                     "shapes64-vae.safetensors"]
    meta = json.loads((out / "shapes64-vae.json").read_text())
    assert meta["kind"] == "vae" and meta["schedule"] is None and meta["command"] == "my command"
    assert meta["steps"] == 2 and meta["train_config"]["steps"] == 2 and meta["train_config"]["batch_size"] == 4
    assert meta["data"] == {"dataset": "shapes", "n": 16, "seed": 0, "size": 64}
    metrics = meta["metrics"]
    assert metrics["compression"] == 48 and np.isfinite(metrics["psnr_db"])
    assert metrics["scaling_factor"] > 0 and metrics["scaling_factor"] == round(meta["config"]["scaling_factor"], 5)
    assert metrics["eval"] == "4 fresh renders, seed 999" and metrics["device"].startswith("cpu")
    assert len(meta["history"]["loss"]) == len(meta["history"]["kl"]) == 2 and meta["history"]["every"] == 1

    loaded = pretrained.load("shapes64-vae", device="cpu", directory=out)
    assert isinstance(loaded.model, VAE) and loaded.schedule is None
    assert loaded.model.config.scaling_factor == pytest.approx(meta["config"]["scaling_factor"])
    assert latent.evaluate(loaded.model, TINY_VAE_RECIPE)["psnr_db"] == pytest.approx(metrics["psnr_db"], abs=0.1)
    assert latent.load_vae(device="cpu", directory=out) is not latent.load_vae(device="cpu")
    # preview: 8 fresh renders over their reconstructions, 64 px tiles 2 px apart, upscaled x2
    preview = png_array((out / "shapes64-vae.png").read_bytes())
    assert preview.shape == (2 * (2 * 64 + 2), 2 * (8 * 64 + 7 * 2), 3)
    renders = ShapesDataset(size=64, n=8, seed=999).images()
    assert np.array_equal(preview[::2, ::2][:64], grid(renders, nrow=8))  # top row: the renders themselves


def test_train_vae_recipe_is_seeded(tiny_vae_checkpoint, tmp_path):
    out, path = tiny_vae_checkpoint
    latent.train_vae_recipe(tmp_path, device="cpu", steps=2, batch_size=4, progress=False, recipe=TINY_VAE_RECIPE)
    wa, wb = load_file(str(path)), load_file(str(tmp_path / "shapes64-vae.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "shapes64-vae.json").read_text())["command"] == \
        "python -m course_lib.train shapes64-vae"


@pytest.fixture
def small_sweep_recipe(monkeypatch):
    """kl_sweep (and `sweep`) train on VAERecipe(): make that 16 training and 4 eval renders."""
    monkeypatch.setattr(latent, "VAERecipe", functools.partial(latent.VAERecipe, n=16, eval_n=4))


def test_kl_sweep_rows(small_sweep_recipe):
    rows = latent.kl_sweep((0.0, 1e-2), steps=2, batch_size=2, device="cpu", progress=False)
    assert [r["kl_weight"] for r in rows] == [0.0, 1e-2]
    for r in rows:
        assert {"psnr_db", "compression", "kl_per_image", "latent_std", "psnr_nudged_db", "steps",
                "batch_size"} <= set(r)
        assert r["compression"] == 48 and r["latent_std"] > 0 and (r["steps"], r["batch_size"]) == (2, 2)
        assert np.isfinite(r["psnr_db"]) and np.isfinite(r["psnr_nudged_db"]) and r["kl_per_image"] >= 0


def test_sweep_cli_writes_json(small_sweep_recipe, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    latent.main(["sweep", "--kl-weights", "0.000001", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                 "-o", str(out)])
    record = json.loads(out.read_text())
    assert [r["kl_weight"] for r in record["rows"]] == [1e-6]
    assert record["command"] == "python -m course_lib.latent sweep --kl-weights 1e-06 --steps 1 --batch-size 2"
    assert record["device"].startswith("cpu")
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["sweep", "--steps", "0"], "--steps and --batch-size must be >= 1"),
    (["sweep", "--batch-size", "0"], "--steps and --batch-size must be >= 1"),
    (["sweep", "--device", "gpu0"], "--device: device 'gpu0' is not a device"),
    (["sweep", "--steps", "two"], "invalid int value"),
    ([], "required"),
])
def test_sweep_cli_argument_errors_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "sweep.json"
    with pytest.raises(SystemExit) as exit_info:
        latent.main([*args, "-o", str(out)] if args else args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_sweep_cli_negative_kl_weight_is_a_usage_error(small_sweep_recipe, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        latent.main(["sweep", "--kl-weights", "-1", "--steps", "1", "--device", "cpu",
                     "-o", str(tmp_path / "sweep.json")])
    assert exit_info.value.code == 2


# ----- course_lib.train: --time-budget -----------------------------------------------------------------
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


def test_train_cli_refuses_abbreviated_options(capsys):
    """Abbreviations would survive into the recorded command (_command_with_steps drops full spellings only)."""
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["toy2d-mlp", "--time", "60"])
    assert exit_info.value.code == 2 and "--time" in capsys.readouterr().err


def tiny_denoiser_setup():
    torch.manual_seed(0)
    model = unet_tiny(image_size=8, base_channels=8, channel_mult=(1, 2), attn_resolutions=(4,))
    data = torch.rand(8, 3, 8, 8) * 2 - 1
    config = TrainConfig(steps=1000, batch_size=2, warmup=200, log_every=10)
    return model, NoiseSchedule.linear(), data, config


def test_fitting_steps_real_probe(capsys):
    model, schedule, data, config = tiny_denoiser_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    steps = train_mod.fitting_steps(model, schedule, data, config, 3600.0, device="cpu")
    assert steps % 100 == 0 and steps >= config.warmup + 100
    assert "time budget 3600 s at" in capsys.readouterr().out
    # the probe trains throwaway copies: the model and the global RNG are untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_fitting_steps_plans_with_safety_margin(monkeypatch):
    model, schedule, data, config = tiny_denoiser_setup()
    calls = []

    def fake_train(m, s, d, c, **kwargs):
        calls.append((m, c))
        return type("Result", (), {"seconds": 2.0})()  # 40 steps in 2 s: 20 steps/s

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert train_mod.SAFETY == 0.8
    assert train_mod.fitting_steps(model, schedule, data, config, 100.0) == 1600  # 0.8 * 100 s * 20 steps/s
    assert train_mod.fitting_steps(model, schedule, data, config, 106.0) == 1600  # 1696 rounds down
    assert train_mod.fitting_steps(model, schedule, data, config, 10.0) == 300  # 160 -> 100 -> warmup + 100
    warm, timed = calls[0][1], calls[1][1]
    assert (warm.steps, warm.warmup, warm.ckpt_every) == (10, 0, 0)
    assert (timed.steps, timed.warmup, timed.ckpt_every) == (40, 0, 0)
    assert all(m is not model for m, _ in calls)  # copies


def tiny_toy_recipe():
    recipe = RECIPES["toy2d-mlp"]
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, n=256),
                               train=dataclasses.replace(recipe.train, batch_size=16, warmup=0, ckpt_every=0),
                               sample_steps=2)


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


@pytest.mark.parametrize("args", [
    ["shapes64-vae", "--time-budget", "60"],
    ["shapes-clip", "--time-budget", "60"],
    ["toy2d-mlp", "--time-budget", "0"],
    ["toy2d-mlp", "--time-budget", "-5"],
])
def test_train_cli_time_budget_errors_exit_2(args, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "run", lambda *a, **k: pytest.fail("must not train"))
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--time-budget must be > 0" in err and f"use --steps for {args[0]}" in err and "Traceback" not in err


@pytest.mark.parametrize("budget", ["nan", "inf"])
def test_train_cli_rejects_non_finite_time_budget(budget, monkeypatch):
    monkeypatch.setattr(train_mod, "run", lambda *a, **k: None)  # reaching run() at all is the bug
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["toy2d-mlp", "--time-budget", budget])
    assert exit_info.value.code == 2


def test_train_cli_passes_time_budget_to_run(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(train_mod, "run", lambda recipe, **kwargs: seen.update(recipe=recipe, **kwargs))
    train_mod.main(["shapes64-latent-t2i", "--time-budget", "300", "--out", str(tmp_path), "--device", "cpu"])
    assert seen["recipe"] is RECIPES["shapes64-latent-t2i"] and seen["time_budget"] == 300.0
    assert seen["command"] == f"python -m course_lib.train shapes64-latent-t2i --time-budget 300 --out {tmp_path} " \
                              f"--device cpu"
    assert seen["steps"] is None and seen["out"] == str(tmp_path)


def test_train_cli_knows_the_vae_trainer(monkeypatch, tmp_path, capsys):
    assert train_mod._other_trainers()["shapes64-vae"] is latent.train_vae_recipe
    seen = {}
    monkeypatch.setattr(latent, "train_vae_recipe", lambda out, **kwargs: seen.update(out=out, **kwargs))
    train_mod.main(["shapes64-vae", "--out", str(tmp_path), "--steps", "3", "--batch-size", "2", "--device", "cpu"])
    assert seen == {"out": str(tmp_path), "device": "cpu", "steps": 3, "batch_size": 2,
                    "command": f"python -m course_lib.train shapes64-vae --out {tmp_path} --steps 3 --batch-size 2 "
                               f"--device cpu"}
    with pytest.raises(SystemExit) as exit_info:
        train_mod.main(["shapes128-vae"])
    assert exit_info.value.code == 2 and "shapes64-vae" in capsys.readouterr().err


# ----- latent recipes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shapes64-t2i", "shapes64-latent-t2i"])
def test_64px_recipes_match_their_shipped_checkpoints(name):
    recipe, meta = RECIPES[name], shipped_json(name)
    config = json.loads(json.dumps(dataclasses.asdict(recipe.build_model().config)))  # tuples -> lists
    assert config == meta["config"]
    assert meta["data"] == dataclasses.asdict(recipe.data) and meta["vae"] == recipe.vae
    assert meta["text_encoder"] == recipe.text_encoder == "shapes-clip"
    assert meta["train_config"] == dataclasses.asdict(dataclasses.replace(recipe.train, steps=meta["steps"]))
    assert meta["command"] == f"python -m course_lib.train {name} --steps {meta['steps']}"
    assert meta["schedule"]["name"] == recipe.schedule


def test_latent_recipe_shapes():
    pixel, lat = RECIPES["shapes64-t2i"], RECIPES["shapes64-latent-t2i"]
    assert pixel.vae is None and lat.vae == latent.VAE_NAME == "shapes64-vae"
    assert (lat.build_model().config.in_channels, lat.build_model().config.image_size) == (4, 8)
    assert (pixel.build_model().config.in_channels, pixel.build_model().config.image_size) == (3, 64)
    assert lat.data.size == pixel.data.size == 64


def test_shapes64_t2i_initialises_from_shapes32_unet():
    added = train_mod.init_from_checkpoint(RECIPES["shapes64-t2i"].build_model(), "shapes32-unet")
    assert added and all("attn" in k or "cross" in k or "cond" in k for k in added), added[:5]


@pytest.fixture(scope="module")
def tiny_latent_run(tmp_path_factory):
    """`run` on a copy of the shapes64-latent-t2i recipe: 8 images through the shipped VAE, 2 steps of batch 2."""
    out = tmp_path_factory.mktemp("latent-run")
    recipe = RECIPES[LATENT]
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, n=8),
                                 train=dataclasses.replace(recipe.train, steps=2, batch_size=2, warmup=0,
                                                           ckpt_every=0, log_every=1), sample_steps=2)
    path = train_mod.run(recipe, out=out, device="cpu", command="python -m course_lib.train shapes64-latent-t2i",
                         progress=False)
    return out, path


def test_latent_run_writes_checkpoint_json_and_decoded_preview(tiny_latent_run):
    out, path = tiny_latent_run
    assert path == out / f"{LATENT}.safetensors" and path.exists()
    assert not (out / f"{LATENT}.train.safetensors").exists()
    meta = json.loads((out / f"{LATENT}.json").read_text())
    assert meta["vae"] == "shapes64-vae" and meta["text_encoder"] == "shapes-clip"
    assert meta["steps"] == 2 and np.isfinite(meta["final_loss"])
    assert (meta["config"]["in_channels"], meta["config"]["image_size"]) == (4, 8)  # trained on latents
    assert meta["schedule"]["name"] == "scaled_linear"
    # 16 decoded 64x64 samples, 4 per row, 2 px apart, x4: the preview shows images, not 8x8 latents
    preview = png_array((out / f"{LATENT}.png").read_bytes())
    assert preview.shape == (4 * (4 * 64 + 3 * 2), 4 * (4 * 64 + 3 * 2), 3)


def test_freshly_trained_latent_checkpoint_generates(tiny_latent_run):
    out, _ = tiny_latent_run
    p = pretrained.load(LATENT, device="cpu", directory=out)
    assert pipeline.sample_shape(p) == (4, 8, 8) and pipeline.image_shape(p) == (3, 64, 64)
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes-clip"):
        pipeline.generate(PROMPT, steps=1, n=1, model=LATENT, device="cpu", directory=out)
    (out / "shapes-clip.json").symlink_to(CKPT / "shapes-clip.json")
    (out / "shapes-clip.safetensors").symlink_to(CKPT / "shapes-clip.safetensors")
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes64-vae"):
        pipeline.generate(PROMPT, steps=1, n=1, model=LATENT, device="cpu", directory=out)
    (out / "shapes64-vae.json").symlink_to(CKPT / "shapes64-vae.json")
    (out / "shapes64-vae.safetensors").symlink_to(CKPT / "shapes64-vae.safetensors")
    g = pipeline.generate(PROMPT, steps=1, n=1, model=LATENT, device="cpu", directory=out)
    assert g.images.shape == (1, 3, 64, 64) and g.latents.shape == (1, 4, 8, 8)


# ----- generate() with a latent checkpoint -----------------------------------------------------------------
def test_sample_and_image_shapes():
    lat = pipeline.load_checkpoint(LATENT, device="cpu")
    pix = pipeline.load_checkpoint("shapes64-t2i", device="cpu")
    small = pipeline.load_checkpoint("shapes32-t2i", device="cpu")
    assert pipeline.sample_shape(lat) == (4, 8, 8) and pipeline.image_shape(lat) == (3, 64, 64)
    assert pipeline.sample_shape(pix) == pipeline.image_shape(pix) == (3, 64, 64)
    assert pipeline.sample_shape(small) == pipeline.image_shape(small) == (3, 32, 32)
    assert pipeline.load_decoder(pix) is None and pipeline.load_decoder(small) is None
    decode = pipeline.load_decoder(lat)
    assert decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 64, 64)


def test_generate_latent_model(latent_gen):
    g = latent_gen
    assert g.images.shape == (2, 3, 64, 64) and g.images.dtype == torch.float32 and torch.isfinite(g.images).all()
    assert g.latents.shape == (2, 4, 8, 8) and g.latents.device.type == "cpu"
    assert len(g.records) == 3
    assert all(r.x_t.shape == r.x0.shape == (2, 4, 8, 8) for r in g.records)  # the records hold latents
    assert torch.equal(g.records[-1].x_t, g.latents)
    assert callable(g.decode) and torch.equal(g.decode(g.latents), g.images)
    vae = latent.load_vae(device="cpu")
    assert torch.equal(latent.decode_latents(vae, g.latents), g.images)


def test_generate_latent_model_is_seeded(latent_gen):
    again = pipeline.generate(PROMPT, steps=3, n=2, seed=0, model=LATENT, device="cpu")
    assert torch.equal(again.images, latent_gen.images) and torch.equal(again.latents, latent_gen.latents)
    other = pipeline.generate(PROMPT, steps=3, n=2, seed=1, model=LATENT, device="cpu")
    assert not torch.allclose(other.latents, latent_gen.latents, atol=1e-3)


def test_generate_pixel_model_has_no_latents(t2i_checkpoints):
    g = pipeline.generate(PROMPT, steps=1, n=1, device="cpu", directory=t2i_checkpoints)
    assert g.latents is None and g.decode is None and g.images.shape == (1, 3, 32, 32)


def test_save_gif_decodes_latent_records(latent_gen, tmp_path):
    path = pipeline.save_gif(latent_gen.records, tmp_path / "latent.gif", scale=2, decode=latent_gen.decode)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
        assert gif.size == (GUTTER + 2 * (2 * 64 + 2), 2 * (2 * 64 + 2))  # 2 decoded 64x64 images per row, 2 rows
    raw = pipeline.save_gif(latent_gen.records, tmp_path / "raw.gif", scale=2)  # no decode: 8x8 latent tiles
    with Image.open(raw) as gif:
        assert gif.size == (GUTTER + 2 * (2 * 8 + 2), 2 * (2 * 8 + 2))


def test_generate_cli_with_latent_model(tmp_path, capsys):
    out = tmp_path / "star.png"
    pipeline.main([PROMPT, "--model", LATENT, "--steps", "2", "-n", "1", "-o", str(out), "--gif", "--device", "cpu",
                   "--scale", "1"])
    assert "wrote" in capsys.readouterr().out
    png = png_array(out.read_bytes())
    assert png.shape == (64, 64, 3)
    expected = pipeline.generate(PROMPT, steps=2, n=1, model=LATENT, device="cpu").images
    assert np.array_equal(png, grid(expected, nrow=1))
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.n_frames == 2 and gif.size == (GUTTER + 64, 2 * 64 + 2)


# ----- the player with a latent checkpoint -------------------------------------------------------------------
def test_player_from_pretrained_latent_decodes_frames():
    player = DenoisingPlayer.from_pretrained(LATENT, device="cpu", steps=2, n=1, autorun=True, prompt=PROMPT)
    assert isinstance(player.model, UNet)
    assert (player.channels, player.image_size) == (4, 8) and player.decode is not None
    assert player.text_encoder is not None
    assert len(player.frames) == 2 and player.image.value == player.frames[-1]
    assert player.last_images.shape == (1, 4, 8, 8)
    frame = png_array(player.frames[-1])
    assert frame.shape == (3 * (2 * 64 + 2), GUTTER + 3 * 64, 3)  # x_t over predicted x0, decoded, x3
    decoded = player.decode(player.last_images)
    assert decoded.shape == (1, 3, 64, 64)
    assert np.array_equal(frame[:3 * 64, GUTTER:], upscale(to_uint8(decoded[0]), 3))
    # the same run as generate(): same seed, prompt, guidance and steps -> the same latents
    g = pipeline.generate(PROMPT, steps=2, n=1, seed=0, model=LATENT, device="cpu")
    torch.testing.assert_close(player.last_images.cpu(), g.latents, rtol=1e-5, atol=1e-5)


def test_player_from_pretrained_decode_can_be_overridden():
    player = DenoisingPlayer.from_pretrained(LATENT, device="cpu", steps=1, n=1, decode=None)
    assert player.decode is None and (player.channels, player.image_size) == (4, 8)
    assert png_array(player.frames[-1]).shape == (3 * (2 * 8 + 2), GUTTER + 3 * 8, 3)  # raw latent channels
