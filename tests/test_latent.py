"""Latent diffusion: course_lib.latent (the shipped shapes64-vae, scaled latents), the latent recipes, and latent
checkpoints in generate() and the player. (Training runs of every recipe: test_train.py.)

Uses the shipped checkpoints in data/checkpoints (shapes64-vae, shapes64-latent-t2i, shapes64-t2i, shapes-clip);
everything trained here is tiny (a few steps on a handful of images) and written to tmp_path.
"""
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import generate as pipeline, latent, pretrained
from course_lib import train as train_mod
from course_lib.data import ShapesDataset
from course_lib.images import grid, to_uint8, upscale
from course_lib.metrics import psnr
from course_lib.models import UNet, VAE, unet_tiny, vae_f8
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError
from course_lib.recipes import RECIPES
from course_lib.tasks import Autoencoding
from course_lib.widgets import DenoisingPlayer

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
    return pretrained.load_vae(device="cpu")


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
    recipe = RECIPES["shapes64-vae"]
    assert meta["data"] == {"dataset": "shapes", "n": recipe.data.n, "seed": recipe.data.seed, "size": recipe.data.size}
    saved = meta["train_config"]
    for key in ("steps", "batch_size", "lr", "warmup", "lr_schedule", "seed", "weight_decay"):
        assert saved[key] == getattr(recipe.train, key), key
    assert saved["kl_weight"] == recipe.task.kl_weight  # written before the kl weight moved to the task
    assert recipe.train.ema_decay is None and recipe.train.grad_clip == 0  # as the VAE was trained: no EMA, no clip
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
    assert pretrained.load_vae(device="cpu") is vae
    assert pretrained.load_vae(device="cpu", directory=str(CKPT)) is pretrained.load_vae(device="cpu", directory=CKPT)
    z = latent.encode_latents(vae, renders[:2])
    decode = latent.latent_decoder(device="cpu")
    assert torch.equal(decode(z), latent.decode_latents(vae, z))


def test_load_vae_refuses_other_checkpoints():
    with pytest.raises(CheckpointError, match="'shapes-classifier' holds a ShapesClassifier, not a VAE"):
        pretrained.load_vae("shapes-classifier", device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes64-vae"):
        pretrained.load_vae(device="cpu", directory="/nonexistent/checkpoints")


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


def test_vae_record_reports_psnr_and_48x_compression(vae):
    task, recipe = Autoencoding(eval_n=8, eval_seed=7), RECIPES["shapes64-vae"]
    before = vae.config.scaling_factor
    prepared = type("Prepared", (), {"context": {"images": ShapesDataset(size=64, n=64, seed=0).images()}})
    try:
        metrics = task.record(vae, recipe.data, prepared)["metrics"]
        assert metrics["compression"] == 48  # 64*64*3 / (8*8*4), exactly
        assert metrics["psnr_db"] > 28
        assert metrics["eval"] == "8 fresh renders, seed 7"
        assert metrics["scaling_factor"] == pytest.approx(before, rel=0.1)  # re-measured on 64 training renders
    finally:
        vae.config.scaling_factor = before  # the fixture's VAE is the cached, shared one


# ----- latent recipes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shapes64-t2i", "shapes64-latent-t2i"])
def test_64px_recipes_match_their_shipped_checkpoints(name):
    recipe, meta = RECIPES[name], shipped_json(name)
    config = recipe.build_model().config
    # (read through the config class: fields added later, such as guidance_embed, take their defaults)
    assert type(config)(**meta["config"]) == config
    assert meta["data"] == dataclasses.asdict(recipe.data) and meta["vae"] == recipe.task.vae
    assert meta["text_encoder"] == recipe.task.text_encoder == "shapes-clip"
    saved = meta["train_config"]
    for key in ("batch_size", "lr", "warmup", "lr_schedule", "ema_decay", "grad_clip", "seed", "weight_decay"):
        assert saved[key] == getattr(recipe.train, key), key
    assert saved["cond_drop_prob"] == recipe.task.cond_drop_prob  # written before dropout moved to the task
    assert meta["command"] == f"python -m course_lib.train {name} --steps {meta['steps']}"
    assert meta["schedule"]["name"] == recipe.task.schedule


def test_latent_recipe_shapes():
    pixel, lat = RECIPES["shapes64-t2i"], RECIPES["shapes64-latent-t2i"]
    assert pixel.task.vae is None and lat.task.vae == "shapes64-vae"
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
                                                           ckpt_every=0, log_every=1),
                                 task=dataclasses.replace(recipe.task, sample_steps=2))
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
    assert pretrained.sample_shape(p) == (4, 8, 8) and pretrained.image_shape(p) == (3, 64, 64)
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
    lat = pretrained.load_checkpoint(LATENT, device="cpu")
    pix = pretrained.load_checkpoint("shapes64-t2i", device="cpu")
    small = pretrained.load_checkpoint("shapes32-t2i", device="cpu")
    assert pretrained.sample_shape(lat) == (4, 8, 8) and pretrained.image_shape(lat) == (3, 64, 64)
    assert pretrained.sample_shape(pix) == pretrained.image_shape(pix) == (3, 64, 64)
    assert pretrained.sample_shape(small) == pretrained.image_shape(small) == (3, 32, 32)
    assert latent.latent_decoder(pix) is None and latent.latent_decoder(small) is None
    assert pretrained.load_vae(pix) is None and pretrained.load_vae(lat) is pretrained.load_vae("shapes64-vae")
    decode = latent.latent_decoder(lat)
    assert decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 64, 64)


def test_generate_latent_model(latent_gen):
    g = latent_gen
    assert g.images.shape == (2, 3, 64, 64) and g.images.dtype == torch.float32 and torch.isfinite(g.images).all()
    assert g.latents.shape == (2, 4, 8, 8) and g.latents.device.type == "cpu"
    assert len(g.records) == 3
    assert all(r.x_t.shape == r.x0.shape == (2, 4, 8, 8) for r in g.records)  # the records hold latents
    assert torch.equal(g.records[-1].x_t, g.latents)
    assert callable(g.decode) and torch.equal(g.decode(g.latents), g.images)
    vae = pretrained.load_vae(device="cpu")
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
