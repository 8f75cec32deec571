"""Editing with the existing pieces: negative prompts (the unconditional branch of guidance replaced, as in
diffusers) and DDIM inversion (a real render run back to its noise, then regenerated)."""
from __future__ import annotations

import pytest
import torch

from course_lib import pretrained
from course_lib.data import ShapesDataset
from course_lib.generate import generate
from course_lib.guidance import GuidedModel
from course_lib.metrics import load_classifier
from course_lib.samplers import ddim, ddim_inversion, make_timesteps


def test_a_negative_prompt_is_the_unconditional_branch_of_guidance():
    p = pretrained.load_checkpoint("shapes32-t2i", "cpu")
    encoder = pretrained.load_text_encoder(p, "cpu")
    default = generate("a large circle", n=2, seed=0, steps=5, device="cpu").images
    assert torch.equal(generate("a large circle", n=2, seed=0, steps=5, device="cpu", negative_prompt="").images,
                       default)
    got = generate("a large circle", n=2, seed=0, steps=5, device="cpu", negative_prompt="red").images
    x_T = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    eps_model = GuidedModel(p.model, *encoder("a large circle"), *encoder("red"), 5.0)
    want = ddim(eps_model, x_T, p.schedule, make_timesteps(p.schedule, 5))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, default, atol=1e-2)
    with pytest.raises(TypeError, match="negative_prompt must be a str"):
        generate("a circle", negative_prompt=["red"])


def test_red_as_the_negative_prompt_keeps_red_away():
    classifier = load_classifier()
    colours = {neg: [a.color for a in classifier.predict(generate("a large circle", n=32, seed=0, device="cpu",
                                                                   negative_prompt=neg).images)]
               for neg in ("", "red")}
    assert colours[""].count("red") >= 3  # without it, red is one of the colours a "circle" comes in (5 of 32)
    assert colours["red"].count("red") == 0  # measured: 0 of 32


def test_ddim_inversion_then_ddim_gives_the_render_back_better_with_more_steps():
    p = pretrained.load_checkpoint("shapes32-unet", "cpu")
    x0 = ShapesDataset(size=32, n=4, seed=3).images()
    errors = {}
    for steps in (10, 50):
        timesteps = make_timesteps(p.schedule, steps)
        x_T = ddim_inversion(p.model, x0, p.schedule, timesteps)
        errors[steps] = (ddim(p.model, x_T, p.schedule, timesteps) - x0).abs().mean().item()
        assert 0.5 < x_T.std().item() < 1.5  # noise-like, not the image
    assert errors[50] < 0.1 < errors[10]  # measured: 0.058 at 50 steps, 0.90 at 10 (mean |error| in [-1, 1])
