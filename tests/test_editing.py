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


# ----- img2img (SDEdit) ------------------------------------------------------------------------------------------
def red_circle_on_the_left() -> torch.Tensor:
    from course_lib.data import Attributes
    from course_lib.data.shapes import render

    return render(Attributes("circle", "red", "large", "left", "black"), 32)  # (3, 32, 32)


def test_img2img_strength_0_returns_the_image_and_strength_picks_the_last_steps():
    from course_lib.latent import encode_latents, latent_decoder

    red = red_circle_on_the_left()
    assert torch.equal(generate("a blue circle", image=red, strength=0.0, n=2, device="cpu").images[1], red)
    p = pretrained.load_checkpoint("shapes32-t2i", "cpu")
    half = generate("a blue circle", image=red, strength=0.6, steps=10, n=1, device="cpu")
    assert [r.t for r in half.records] == make_timesteps(p.schedule, 10)[4:].tolist()  # the last 6 of 10
    latent = pretrained.load_checkpoint("shapes64-latent-t2i", "cpu")
    big = torch.nn.functional.interpolate(red[None], size=64, mode="nearest")[0]  # (3, 64, 64)
    vae = pretrained.load_vae(latent, "cpu")
    round_trip = latent_decoder(latent, "cpu")(encode_latents(vae, big[None]))
    got = generate("a blue circle", image=big, strength=0.0, n=1, model="shapes64-latent-t2i", device="cpu").images
    assert torch.allclose(got, round_trip, atol=1e-5)  # through the VAE and back


def test_img2img_trades_the_new_prompt_against_the_old_layout():
    classifier = load_classifier()
    red = red_circle_on_the_left()
    seen = {}
    for strength in (0.4, 1.0):
        images = generate("a large blue circle", image=red, strength=strength, n=16, seed=0, device="cpu").images
        predicted = classifier.predict(images)
        seen[strength] = (sum(a.color == "blue" for a in predicted), sum(a.position == "left" for a in predicted))
    assert seen[0.4][0] >= 14 and seen[0.4][1] >= 14  # measured: 16 blue, 16 still on the left
    assert seen[1.0][0] >= 14 and seen[1.0][1] <= 4  # measured: 16 blue, 0 on the left: the layout is redrawn


def test_img2img_refuses_what_it_cannot_use(tmp_path, capsys):
    from PIL import Image

    from course_lib.generate import main
    from course_lib.outputs import save_png

    red = red_circle_on_the_left()
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        generate("a blue circle", image=red, strength=1.5)
    with pytest.raises(ValueError, match=r"model's size \(3, 32, 32\)"):
        generate("a blue circle", image=torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="forcing the known tokens"):
        generate("a blue circle", image=red, model="shapes32-ar")
    start = save_png(red[None], tmp_path / "start.png", scale=4)  # 128 x 128: the CLI boxes it back to 32 x 32
    main(["a blue circle", "--image", str(start), "--strength", "0", "-n", "1", "--scale", "1",
          "-o", str(tmp_path / "out.png"), "--device", "cpu"])
    back = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "out.png")).copy())
    assert torch.equal(back.permute(2, 0, 1), ((red + 1) * 127.5).round().to(torch.uint8))
    (tmp_path / "not.png").write_text("no picture")
    with pytest.raises(SystemExit):
        main(["a blue circle", "--image", str(tmp_path / "not.png"), "-o", str(tmp_path / "x.png")])
    assert "--image: cannot read" in capsys.readouterr().err
