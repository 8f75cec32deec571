"""generate() and the command line with the shipped autoregressive checkpoints: they follow the prompt, image k
is the same alone or in a batch, diffusion-only options are refused (and AR-only ones for diffusion models)."""
from __future__ import annotations

import pytest
import torch

from course_lib.generate import generate, main
from course_lib.metrics import attribute_accuracy, load_classifier
from course_lib.data import Attributes
from course_lib.tokens import FillFrame


@pytest.fixture(scope="module")
def red_circles():
    return generate("a large red circle", model="shapes32-ar", n=4, seed=0, device="cpu")


def test_the_pixel_transformer_follows_the_colour_it_is_asked_for(red_circles):
    assert red_circles.images.shape == (4, 3, 32, 32)
    accuracy = attribute_accuracy(red_circles.images, Attributes("circle", "red", "large"), load_classifier(),
                                  keys=("color",))
    assert accuracy["color"] >= 0.75


def test_records_are_the_image_written_scan_line_by_scan_line(red_circles):
    frames = red_circles.records
    assert len(frames) == 32 and all(isinstance(f, FillFrame) for f in frames)
    assert [f.step for f in frames[:2]] == [32, 64] and frames[-1].calls == 1024
    assert frames[0].images[:, :, 1:].abs().max() == 0  # after one scan line the rest is still grey
    assert torch.equal(frames[-1].images, red_circles.images)


def test_image_k_is_the_same_alone_and_in_a_batch(red_circles):
    alone = generate("a large red circle", model="shapes32-ar", n=1, first=2, seed=0, device="cpu")
    assert torch.equal(alone.images[0], red_circles.images[2])


def test_the_token_transformer_writes_64_codes():
    out = generate("a small yellow star on the left", model="shapes32-ar-tokens", n=2, seed=0, device="cpu")
    assert out.images.shape == (2, 3, 32, 32) and len(out.records) == 64 and out.records[-1].calls == 64


@pytest.mark.parametrize("option, match", [({"steps": 20}, "steps and sampler"), ({"sampler": "ddim"}, "steps and "),
                                           ({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k")])
def test_options_that_do_not_apply_are_refused(option, match):
    with pytest.raises(ValueError, match=match):
        generate("a red circle", model="shapes32-ar", n=1, **option)


def test_diffusion_models_refuse_temperature_and_the_cli_says_so_in_one_line(capsys):
    with pytest.raises(ValueError, match="autoregressive models"):
        generate("a red circle", model="shapes32-t2i", n=1, temperature=0.5)
    with pytest.raises(SystemExit) as exit_info:
        main(["a red circle", "--model", "shapes32-ar", "--steps", "20"])
    assert exit_info.value.code == 2
    assert "do not apply" in capsys.readouterr().err


def test_the_fill_player_shows_every_frame_it_is_handed_and_replays_a_setting_from_its_cache():
    from course_lib.widgets import FillPlayer

    player = FillPlayer("shapes32-ar-tokens", prompt="a red circle", n=2, seed=0)
    assert len(player.frames) == 64 and player.frame_slider.max == 63
    assert player.status.value.startswith("model call 64/64")
    first = player.trajectory
    player.seed_box.value = 1  # a new setting samples again
    assert player.trajectory is not first and len(player.frames) == 64
    player.seed_box.value = 0  # back: the kept run, no model calls
    assert player.trajectory is first
    player.frame_slider.value = 0
    assert player.image.value == first.frames[0] and player.status.value.startswith("model call 1/64")
    with pytest.raises(TypeError, match="prompt must be a str"):
        FillPlayer("shapes32-ar-tokens", prompt=3, autorun=False)
