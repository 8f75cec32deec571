"""Widgets without a browser: frames come from the library, are cached, and react to control changes."""
import io

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import samplers
from course_lib.models import unet_tiny
from course_lib.schedules import NoiseSchedule
from course_lib.images import grid, png_bytes, to_uint8
from course_lib.widgets import DenoisingPlayer, NoisingExplorer

SIZE = 16  # small images keep the sampler tests at a fraction of a second


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3) array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture
def images():
    """Two smooth test images in [-1, 1], (2, 3, 16, 16)."""
    ramp = torch.linspace(-1, 1, SIZE)
    a = torch.stack([ramp[None, :].expand(SIZE, SIZE), ramp[:, None].expand(SIZE, SIZE), -ramp[None, :].expand(SIZE, SIZE)])
    return torch.stack([a, a.flip(-1) * 0.5])  # (2, 3, H, W)


# ----- display helpers --------------------------------------------------------------------------
def test_to_uint8_maps_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 4).expand(3, 1, 4)  # (C, H, W), 3.0 must clamp
    out = to_uint8(x)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 255]
    assert to_uint8(torch.zeros(5, 3, 2, 4)).shape == (5, 2, 4, 3)
    with pytest.raises(ValueError, match="C, H, W"):
        to_uint8(torch.zeros(4, 4))


def test_grid_and_png_bytes(images):
    g = grid(images, nrow=2, padding=2)
    assert g.shape == (SIZE, 2 * SIZE + 2, 3)
    assert np.array_equal(g[:, :SIZE], to_uint8(images[0]))
    assert grid(images, nrow=1, padding=0).shape == (2 * SIZE, SIZE, 3)
    png = decode_png(png_bytes(g, scale=4))
    assert png.shape == (4 * SIZE, 4 * (2 * SIZE + 2), 3)
    assert np.array_equal(png[::4, ::4], g)  # nearest upscale: every 4th pixel is the original
    with pytest.raises(ValueError, match="scale"):
        png_bytes(g, scale=0)


# ----- NoisingExplorer ---------------------------------------------------------------------------
def test_explorer_structure(images):
    ex = NoisingExplorer(images, seed=0, scale=2)
    assert isinstance(ex, widgets.VBox) and "course-noising-explorer" in ex._dom_classes
    assert (ex.t_slider.min, ex.t_slider.max, ex.t_slider.description) == (0, 999, "t")
    assert list(ex.schedule_dropdown.options) == ["linear", "cosine", "scaled_linear"]
    assert ex.play.step == 10 and ex.play.max == ex.t_slider.max
    assert ex.play_link.source == (ex.play, "value") and ex.play_link.target == (ex.t_slider, "value")
    assert ex.image.format == "png"
    # N images side by side at `scale`
    assert decode_png(ex.image.value).shape == (2 * SIZE, 2 * (2 * SIZE + 2), 3)


def test_explorer_t_changes_frame_and_caption(images):
    ex = NoisingExplorer(images, seed=0)
    first = ex.image.value
    ex.t_slider.value = 400
    assert ex.image.value != first
    s = NoiseSchedule.linear()
    assert "t = 400" in ex.caption.value
    assert f"{float(s.alphas_cumprod[400]):.4f}" in ex.caption.value
    assert f"{float(s.snr(400)):.4g}" in ex.caption.value


def test_explorer_frames_are_schedule_add_noise(images):
    ex = NoisingExplorer(images, seed=3, scale=1)
    ex.schedule_dropdown.value = "cosine"
    ex.t_slider.value = 250
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    expected = grid(to_uint8(NoiseSchedule.cosine().add_noise(images, noise, 250)), nrow=2)
    assert np.array_equal(decode_png(ex.image.value), expected)


def test_explorer_caches_frames(images):
    ex = NoisingExplorer(images)
    ex.t_slider.value = 123
    frame = ex.frame("linear", 123)
    misses, hits = ex.cache_misses, ex.cache_hits
    ex.t_slider.value = 500
    ex.t_slider.value = 123
    assert ex.frame("linear", 123) is frame  # the very same bytes object: served from the cache
    assert bytes(ex.image.value) == frame
    assert ex.cache_misses == misses + 1  # only t=500 was new
    assert ex.cache_hits == hits + 2  # the slider's return to 123 and the frame() call above


def test_explorer_schedule_changes_frame_at_same_t(images):
    ex = NoisingExplorer(images)
    ex.t_slider.value = 600
    linear = ex.image.value
    ex.schedule_dropdown.value = "cosine"
    assert ex.image.value != linear
    assert "t = 600" in ex.caption.value


def test_explorer_t0_is_the_image_and_t999_is_noise(images):
    ex = NoisingExplorer(images, scale=1)
    clean = grid(to_uint8(images), nrow=2).astype(int)
    diff0 = np.abs(decode_png(ex.image.value).astype(int) - clean).mean()
    ex.t_slider.value = 999
    diff999 = np.abs(decode_png(ex.image.value).astype(int) - clean).mean()
    assert diff0 < 2.0  # sqrt(1 - alpha_bar_0) = 0.01: about one gray level of noise
    assert diff999 > 40


def test_explorer_same_noise_for_every_t(images):
    a, b = NoisingExplorer(images, seed=1), NoisingExplorer(images, seed=1)
    c = NoisingExplorer(images, seed=2)
    for ex in (a, b, c):
        ex.t_slider.value = 700
    assert a.image.value == b.image.value and a.image.value != c.image.value


def test_explorer_prerender_fills_cache(images):
    ex = NoisingExplorer(images, schedules=("linear",))
    rendered = ex.prerender(stride=100)
    assert rendered == 10  # t = 100..900 and 999 (t = 0 was shown at construction)
    misses = ex.cache_misses
    ex.t_slider.value = 300
    ex.t_slider.value = 999
    assert ex.cache_misses == misses


def test_explorer_single_image_and_schedule_objects():
    img = torch.zeros(3, 8, 8)
    ex = NoisingExplorer(img, schedules=(NoiseSchedule.linear(num_train_timesteps=50),), scale=1)
    assert ex.t_slider.max == 49 and decode_png(ex.image.value).shape == (8, 8, 3)


@pytest.mark.parametrize("bad", [torch.zeros(8, 8), torch.zeros(2, 4, 8, 8), torch.zeros(1, 1, 3, 8, 8)])
def test_explorer_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        NoisingExplorer(bad)


def test_explorer_rejects_bad_input(images):
    with pytest.raises(ValueError, match="linear, cosine, scaled_linear"):
        NoisingExplorer(images, schedules=("linear", "sigmoid"))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        NoisingExplorer(images * 255)
    with pytest.raises(ValueError, match="float tensor"):
        NoisingExplorer([[1, 2]])
    with pytest.raises(ValueError, match="at least one of: linear"):
        NoisingExplorer(images, schedules=())


# ----- DenoisingPlayer -----------------------------------------------------------------------------
class CountingModel(torch.nn.Module):
    """Wraps an eps-model and counts forward calls, to tell a fresh run from a cache hit."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.fixture(scope="module")
def tiny_unet():
    """unet_tiny with random weights everywhere: its init zeroes the output (and residual) layers, which would
    make eps = 0 and every trajectory end in the same image, so those layers get small random weights too."""
    torch.manual_seed(0)
    model = unet_tiny(image_size=SIZE).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture
def player(tiny_unet):
    return DenoisingPlayer(CountingModel(tiny_unet), NoiseSchedule.linear(), n=2, image_size=SIZE, steps=4, seed=0)


def test_player_structure(player):
    assert isinstance(player, widgets.VBox) and "course-denoising-player" in player._dom_classes
    assert (player.steps_slider.min, player.steps_slider.max) == (1, 100)
    assert set(player.sampler_dropdown.options) == set(samplers.SAMPLERS)
    assert player.frame_slider.max == 3 and player.play.max == 3
    link = player.play_link
    assert link.source == (player.play, "value") and link.target == (player.frame_slider, "value")
    assert not player.model.training
    # one frame: x_t row over predicted-x0 row, n=2 tiles per row, at scale 3, plus the label gutter
    frame = decode_png(player.image.value)
    assert frame.shape[0] == 3 * (2 * SIZE + 2)
    assert player.status.value.startswith("step 4/4 · NFE 4 · t=")


def test_player_shows_model_calls_for_every_sampler(player):
    assert list(player.sampler_dropdown.options) == list(samplers.SAMPLERS)  # one registry, all six
    calls = player.model.calls
    player.sampler_dropdown.value = "heun"  # 4 steps: 3 Heun steps of 2 calls, then a final Euler step
    assert player.model.calls - calls == 7
    assert player.status.value.startswith("step 4/4 · NFE 7 · t=")
    assert [c.split(" · ")[1] for c in player.trajectory.captions] == ["NFE 2", "NFE 4", "NFE 6", "NFE 7"]


def test_player_initial_run_frames_and_calls(player):
    assert player.model.calls == 4
    assert len(player.frames) == 4
    assert player.image.value == player.frames[-1]
    assert player.last_images.shape == (2, 3, SIZE, SIZE)


def test_player_steps_change_reruns_and_pushes_each_frame(player):
    before = player.image.value
    pushed = []
    player.image.observe(lambda c: pushed.append(c["new"]), names="value")
    player.steps_slider.value = 6
    assert player.model.calls == 4 + 6
    assert len(player.frames) == 6 and player.frame_slider.max == 5 and player.frame_slider.value == 5
    assert player.image.value != before
    assert pushed[:6] == player.frames  # every step reached the Image while sampling: the animation is live
    assert player.status.value.startswith("step 6/6")


def test_player_cache_hit_makes_no_model_calls(player):
    first_frames, first_images = player.frames, player.last_images
    player.steps_slider.value = 3
    calls = player.model.calls
    player.steps_slider.value = 4
    assert player.model.calls == calls  # cached: no model calls at all
    assert player.frames is first_frames and player.image.value == first_frames[-1]
    assert torch.equal(player.last_images, first_images)


def test_player_sampler_and_seed_changes_rerun(player):
    ddim_images = player.last_images
    player.sampler_dropdown.value = "ddpm"
    assert player.model.calls == 8
    assert not torch.allclose(player.last_images, ddim_images)
    player.seed_box.value = 1
    assert player.model.calls == 12
    assert player.cache_key() == (4, "ddpm", 1)


def test_player_frame_slider_scrubs_without_model_calls(player):
    calls = player.model.calls
    player.frame_slider.value = 0
    assert player.image.value == player.frames[0] != player.frames[-1]
    assert player.status.value.startswith("step 1/4")
    player.frame_slider.value = 2
    assert player.image.value == player.frames[2]
    assert player.model.calls == calls


def test_player_final_images_equal_direct_ddim(player, tiny_unet):
    schedule = NoiseSchedule.linear()
    x_T = torch.randn((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    direct = samplers.ddim(lambda x, t: tiny_unet(x, t), x_T, schedule, samplers.make_timesteps(schedule, 4))
    assert torch.allclose(player.last_images, direct, atol=1e-6)
    assert torch.equal(player.run(), player.last_images)


def test_player_ddpm_reproduces_with_one_seeded_generator(player, tiny_unet):
    """x_T and DDPM's per-step noise come from one CPU generator seeded with the seed box (as in diffusers)."""
    player.sampler_dropdown.value = "ddpm"
    player.seed_box.value = 7
    schedule = NoiseSchedule.linear()
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn((2, 3, SIZE, SIZE), generator=gen)
    direct = samplers.ddpm(tiny_unet, x_T, schedule, samplers.make_timesteps(schedule, 4), generator=gen)
    assert torch.allclose(player.last_images, direct, atol=1e-6)


def test_player_decode_and_eps_model_hooks(tiny_unet):
    decoded = []

    def decode(z):  # stands in for a VAE decoder: 4 latent channels -> 3 image channels
        decoded.append(z.shape)
        return z[:, :3]

    calls = []

    def eps_model(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    p = DenoisingPlayer(None, NoiseSchedule.linear(), n=1, image_size=8, channels=4, steps=2,
                        decode=decode, eps_model=eps_model)
    assert len(calls) == 2 and calls[0].shape == (1,) and calls[0].dtype == torch.long
    assert decoded and all(s == (1, 4, 8, 8) for s in decoded)
    assert p.last_images.shape == (1, 4, 8, 8)  # the raw sampler output, before decode


def test_player_rejects_bad_input(tiny_unet):
    schedule = NoiseSchedule.linear()
    with pytest.raises(ValueError, match="ddpm, ddim, euler, heun, dpmpp_2m, lcm"):
        DenoisingPlayer(tiny_unet, schedule, sampler="euler_a", autorun=False)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 100\]"):
        DenoisingPlayer(tiny_unet, schedule, steps=0, autorun=False)
    with pytest.raises(ValueError, match="eps_model"):
        DenoisingPlayer(None, schedule, autorun=False)
    with pytest.raises(ValueError, match="seed"):
        DenoisingPlayer(tiny_unet, schedule, seed=-1, autorun=False)


# ----- DenoisingPlayer with a text encoder: prompt box and guidance_scale slider -----------------------------------
class CountingEncoder:
    """Wraps a TextEncoder and records every prompt it encodes, to check each prompt is encoded once."""

    def __init__(self, encoder):
        self.encoder, self.prompts = encoder, []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.encoder(prompt)


class CountingCondModel(torch.nn.Module):
    """Wraps a text-conditional eps-model(x_t, t, cond=, cond_mask=) and counts forward calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t, cond=None, cond_mask=None):
        self.calls += 1
        return self.model(x, t, cond=cond, cond_mask=cond_mask)


@pytest.fixture
def t2i_player(t2i_checkpoints):
    """A text-to-image player on the throwaway checkpoints (conftest.py), 2 images, 3 steps."""
    return DenoisingPlayer.from_pretrained("shapes32-t2i", directory=t2i_checkpoints, device="cpu", n=2, steps=3,
                                           prompt="a red circle")


def _descendants(widget):
    children = getattr(widget, "children", ())
    return [widget, *(d for c in children for d in _descendants(c))]


def test_from_pretrained_sets_up_a_text_player(t2i_player):
    p = t2i_player
    assert p.text_encoder is not None and (p.image_size, p.channels) == (32, 3)
    assert p.prompt_box in _descendants(p) and p.guidance_slider in _descendants(p)
    assert p.prompt_box.value == "a red circle" and not p.prompt_box.continuous_update  # sent on Enter
    s = p.guidance_slider
    assert (s.min, s.max, s.step, s.value, s.continuous_update) == (0.0, 20.0, 0.5, 5.0, False)
    assert p.cache_key() == (3, "ddim", 0, "a red circle", 5.0)
    assert p.last_images.shape == (2, 3, 32, 32) and len(p.frames) == 3


def test_text_player_matches_generate(t2i_player, t2i_checkpoints):
    from course_lib.generate import generate

    expected = generate("a red circle", steps=3, n=2, guidance_scale=5.0, device="cpu", directory=t2i_checkpoints)
    torch.testing.assert_close(t2i_player.last_images, expected.images, rtol=0, atol=1e-5)


def test_prompt_and_guidance_scale_rerun_with_new_cache_keys(t2i_player):
    p = t2i_player
    first_image, first_key = p.image.value, p.cache_key()
    p.prompt_box.value = "a large blue star at the top"
    second_image, second_key = p.image.value, p.cache_key()
    assert second_image != first_image and second_key != first_key
    assert second_key[3] == "a large blue star at the top" and p.status.value.startswith("step 3/3")
    p.guidance_slider.value = 9.5
    assert p.image.value not in (first_image, second_image)
    assert p.cache_key() == (3, "ddim", 0, "a large blue star at the top", 9.5)
    p.guidance_slider.value = 5.0
    p.prompt_box.value = "a red circle"  # back to the first settings: the cached trajectory, byte for byte
    assert p.image.value == first_image and p.cache_key() == first_key


def test_each_prompt_is_encoded_once_and_cache_hits_skip_the_model(t2i_checkpoints):
    from course_lib import generate as pipeline

    pre = pipeline.load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    encoder = CountingEncoder(pipeline.load_text_encoder(pre, directory=t2i_checkpoints))
    model = CountingCondModel(pre.model)
    p = DenoisingPlayer(model, pre.schedule, n=1, steps=2, text_encoder=encoder, prompt="a green square")
    assert sorted(encoder.prompts) == ["", "a green square"] and model.calls == 2  # one batched pass per step
    p.guidance_slider.value = 1.0  # (green, 1)
    p.prompt_box.value = "a tiny heart"  # (heart, 1)
    p.guidance_slider.value = 5.0  # (heart, 5)
    p.prompt_box.value = "a green square"  # (green, 5) again: cached, no model call
    assert sorted(encoder.prompts) == ["", "a green square", "a tiny heart"]
    assert model.calls == 2 + 2 + 2 + 2
    p.guidance_slider.value = 0.0  # a new trajectory, but no new encoding
    assert model.calls == 10 and sorted(encoder.prompts) == ["", "a green square", "a tiny heart"]


def test_bad_prompt_in_the_box_shows_an_error_instead_of_raising(t2i_player):
    p = t2i_player
    image, key = p.image.value, p.cache_key()
    p.prompt_box.value = " ".join(["red"] * 31)  # one token too many
    assert p.status.value.startswith("prompt error:") and "maximum is 30 tokens" in p.status.value
    assert p.image.value == image  # the last good picture stays
    p.steps_slider.value = 4  # other controls report the same error until the prompt is fixed
    assert p.status.value.startswith("prompt error:") and p.image.value == image
    p.prompt_box.value = "a red circle"
    assert p.status.value.startswith("step 4/4") and p.cache_key() == (4, *key[1:])


def test_from_pretrained_unconditional_has_no_prompt_box(t2i_checkpoints):
    p = DenoisingPlayer.from_pretrained("shapes32-unet", directory=t2i_checkpoints, device="cpu", n=1, steps=2)
    assert p.text_encoder is None and p.prompt_box not in _descendants(p)
    assert p.guidance_slider not in _descendants(p) and p.cache_key() == (2, "ddim", 0)


def test_text_player_rejects_bad_input(t2i_player, tiny_unet):
    model, schedule, encoder = t2i_player.model, t2i_player.schedule, t2i_player.text_encoder
    with pytest.raises(TypeError, match="prompt must be a str"):
        DenoisingPlayer(model, schedule, text_encoder=encoder, prompt=None, autorun=False)
    with pytest.raises(ValueError, match="maximum is 30 tokens"):
        DenoisingPlayer(model, schedule, text_encoder=encoder, prompt=" ".join(["red"] * 31), autorun=False)
    with pytest.raises(ValueError, match=r"guidance_scale must be a number in \[0, 20\]"):
        DenoisingPlayer(model, schedule, text_encoder=encoder, guidance_scale=25, autorun=False)
    with pytest.raises(ValueError, match="no eps_model"):
        DenoisingPlayer(model, schedule, text_encoder=encoder, eps_model=lambda x, t: x, autorun=False)


# ----- img2img in the player ---------------------------------------------------------------------------------
def _red_circle(size: int = 32) -> torch.Tensor:
    from course_lib.data import Attributes
    from course_lib.data.shapes import render

    return render(Attributes("circle", "red", "large", "left", "black"), size)  # (3, size, size)


def test_player_img2img_matches_generate_and_strength_picks_the_steps(t2i_player, t2i_checkpoints):
    from course_lib.generate import generate

    p, red = t2i_player, _red_circle()
    assert p.strength_slider.disabled and p.clear_button.disabled  # no input image yet
    p.steps_slider.value = 10
    p.set_image(red)
    assert not p.strength_slider.disabled and p.cache_key() == (10, "ddim", 0, "a red circle", 5.0, 1, 0.6)
    assert len(p.frames) == 6  # int(10 * 0.6) steps run
    want = generate("a red circle", image=red, strength=0.6, steps=10, n=2, guidance_scale=5.0, device="cpu",
                    directory=t2i_checkpoints).images
    torch.testing.assert_close(p.last_images, want, rtol=0, atol=1e-5)
    p.strength_slider.value = 0.0  # nothing redrawn: the input comes back as the one frame
    assert torch.equal(p.last_images, red.expand(2, -1, -1, -1)) and len(p.frames) == 1
    p.clear_button.click()  # back to plain text-to-image from noise, cached
    assert p.input_image is None and p.strength_slider.disabled and p.cache_key() == (10, "ddim", 0, "a red circle",
                                                                                       5.0)


def test_player_edits_its_own_samples_and_reads_an_uploaded_png(t2i_player):
    import datetime

    from course_lib.images import png_bytes, to_uint8

    p = t2i_player
    before = p.last_images.clone()
    p.edit_button.click()  # the samples on screen become the input
    assert torch.equal(p.input_image, before) and p.cache_key()[-1] == 0.6
    red = _red_circle()
    upload = png_bytes(to_uint8(red), scale=4)  # a 128 x 128 PNG: boxed back to 32 x 32 exactly
    p.image_upload.value = ({"name": "red.png", "type": "image/png", "size": len(upload), "content": memoryview(upload),
                             "last_modified": datetime.datetime(2026, 1, 1)},)
    assert torch.equal(p.input_image[0], ((red + 1) * 127.5).round() / 127.5 - 1)
    p.image_upload.value = ({"name": "x.png", "type": "image/png", "size": 3, "content": memoryview(b"abc"),
                             "last_modified": datetime.datetime(2026, 1, 1)},)
    assert p.status.value.startswith("image error: cannot read these bytes as an image")


def test_player_img2img_rejects_bad_input(t2i_player):
    with pytest.raises(ValueError, match=r"player's image shape \(3, 32, 32\)"):
        t2i_player.set_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        DenoisingPlayer(t2i_player.model, t2i_player.schedule, strength=1.5, autorun=False)


def test_latent_player_encodes_the_input_with_its_vae():
    from course_lib.latent import encode_latents

    p = DenoisingPlayer.from_pretrained("shapes64-latent-t2i", device="cpu", n=1, steps=4, prompt="a red circle",
                                        autorun=False)
    assert p.pixel_shape() == (3, 64, 64)
    red = _red_circle(64)
    p.strength_slider.value = 0.0
    p.set_image(red)
    vae = __import__("course_lib").pretrained.load_vae("shapes64-vae", "cpu")
    torch.testing.assert_close(p.last_images, encode_latents(vae, red[None]), rtol=0, atol=1e-6)
    p.strength_slider.value = 0.5
    assert len(p.frames) == 2 and p.last_images.shape == (1, 4, 8, 8)
