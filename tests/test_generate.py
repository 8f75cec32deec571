"""course_lib.generate: text -> images with classifier-free guidance, its checks, and the command line.

Uses throwaway random-weight checkpoints (the `t2i_checkpoints` fixture in conftest.py), not the shipped ones.
"""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import pretrained
from course_lib.generate import Generation, generate, main
from course_lib.pretrained import CheckpointNotFoundError
from course_lib.images import grid, upscale
from course_lib.samplers import SAMPLERS, ddim, make_timesteps

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a small blue star at the top"


@pytest.fixture
def run(t2i_checkpoints):
    """generate() on the throwaway checkpoints, small and on the CPU."""
    def run(prompt=PROMPT, **kwargs):
        kwargs = {"steps": 3, "n": 2, "device": "cpu", "directory": t2i_checkpoints, **kwargs}
        return generate(prompt, **kwargs)
    return run


# ----- results -------------------------------------------------------------------------------------
def test_generate_shapes_records_and_callback(run):
    seen = []
    out = run(steps=4, callback=seen.append)
    assert isinstance(out, Generation)
    assert out.images.shape == (2, 3, 32, 32) and out.images.dtype == torch.float32
    assert out.images.device.type == "cpu" and torch.isfinite(out.images).all()
    assert len(out.records) == 4 and seen == out.records
    assert [r.step for r in out.records] == [0, 1, 2, 3]
    assert all(r.x_t.device.type == "cpu" and r.x0.shape == (2, 3, 32, 32) for r in out.records)
    assert torch.equal(out.records[-1].x_t, out.images)  # the last step's sample is the result


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_images_other_seed_other_images(run, sampler):
    a, b, c = run(sampler=sampler, seed=1), run(sampler=sampler, seed=1), run(sampler=sampler, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images, atol=1e-3)


def test_every_random_number_comes_from_one_cpu_generator_so_every_device_agrees(run, t2i_checkpoints):
    """generate()'s promise "the same images on every device": x_T and DDPM's per-step noise are drawn by CPU
    generators seeded from `seed` (x_T by one, each image's step noise by its own), and only then moved."""
    from course_lib.generate import step_noise_generator
    from course_lib.guidance import GuidedModel
    from course_lib.samplers import ddpm

    p = pretrained.load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    encoder = pretrained.load_text_encoder(p, directory=t2i_checkpoints)
    x_T = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(5))  # by hand: the documented recipe
    expected = ddpm(GuidedModel(p.model, *encoder(PROMPT), *encoder(""), 5.0), x_T, p.schedule,
                    make_timesteps(p.schedule, 3), generator=[step_noise_generator(5, k) for k in (0, 1)])
    cpu = run(sampler="ddpm", seed=5)
    torch.testing.assert_close(cpu.images, expected, rtol=0, atol=1e-6)
    accelerators = [d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()))
                    if ok]
    for device in accelerators:  # where there is one: the same noise, so the same images up to float round-off
        torch.testing.assert_close(run(sampler="ddpm", seed=5, device=device).images, cpu.images, rtol=0, atol=1e-3)


def test_prompt_and_guidance_scale_change_the_images(run):
    base = run()
    assert not torch.allclose(base.images, run("a large red circle on the left").images, atol=1e-4)
    assert not torch.allclose(base.images, run(guidance_scale=2.0).images, atol=1e-4)


def test_guidance_scale_1_is_the_plain_conditional_model(run, t2i_checkpoints):
    p = pretrained.load("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    cond, cond_mask = pretrained.load_text_encoder("shapes-clip", device="cpu", directory=t2i_checkpoints)(PROMPT)  # (1, L, D), (1, L)
    x_T = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    expected = ddim(lambda x, t: p.model(x, t, cond=cond.expand(2, -1, -1), cond_mask=cond_mask.expand(2, -1)),
                    x_T, p.schedule, make_timesteps(p.schedule, 3))
    torch.testing.assert_close(run(guidance_scale=1.0).images, expected, rtol=0, atol=1e-5)


def test_empty_prompt_is_unconditional(run):
    uncond = run("", guidance_scale=1.0).images
    # cond == uncond; only float round-off differs (batch 4 vs batch 2 convolutions)
    torch.testing.assert_close(run("", guidance_scale=7.0).images, uncond, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(run(PROMPT, guidance_scale=0.0).images, uncond, rtol=0, atol=1e-5)  # s = 0


def test_loaded_pretrained_and_cache(run, t2i_checkpoints):
    first = pretrained.load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    assert pretrained.load_checkpoint("shapes32-t2i", device="cpu", directory=str(t2i_checkpoints)) is first
    assert pretrained.load_text_encoder(first, directory=t2i_checkpoints) is \
        pretrained.load_text_encoder(first, directory=t2i_checkpoints)
    assert pretrained.image_shape(first) == (3, 32, 32)
    from_object = generate(PROMPT, steps=3, n=2, model=first, directory=t2i_checkpoints)
    assert torch.equal(from_object.images, run().images)


# ----- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt=3), TypeError, "prompt must be a str"),
    (dict(prompt=["a red circle"]), TypeError, "prompt must be a str"),
    (dict(prompt=" ".join(["red"] * 31)), ValueError, "maximum is 30 tokens"),
    (dict(steps=0), ValueError, "steps must be an int >= 1"),
    (dict(steps=2.5), ValueError, "steps must be an int >= 1"),
    (dict(steps=5000), ValueError, r"steps must be in \[1, 1000\]"),
    (dict(n=0), ValueError, "n must be an int >= 1"),
    (dict(seed=-1), ValueError, "seed must be an int >= 0"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale must be a number >= 0"),
    (dict(guidance_scale="5"), ValueError, "guidance_scale must be a number >= 0"),
    (dict(sampler="nope"), ValueError, f"unknown sampler 'nope'; valid names: {', '.join(SAMPLERS)}"),
    (dict(device="gpu0"), ValueError, "is not a device"),
])
def test_bad_arguments(run, kwargs, error, message):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(error, match=message):
        run(kwargs.pop("prompt"), **kwargs)


def test_unconditional_checkpoint_is_refused(run):
    with pytest.raises(ValueError, match="not text-conditional .* needs a text-conditional checkpoint"):
        run(model="shapes32-unet")


def test_missing_checkpoints_name_the_retrain_command(run, t2i_checkpoints, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes32-t2i"):
        run(directory=tmp_path)
    for suffix in (".safetensors", ".json"):  # the model without its text encoder
        (tmp_path / f"shapes32-t2i{suffix}").write_bytes((t2i_checkpoints / f"shapes32-t2i{suffix}").read_bytes())
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train shapes-clip"):
        run(directory=tmp_path)


# ----- command line --------------------------------------------------------------------------------
def test_cli_writes_png_grid_and_gif(t2i_checkpoints, tmp_path, capsys):
    out = tmp_path / "star.png"
    main([PROMPT, "--steps", "3", "--guidance-scale", "5", "-n", "2", "-o", str(out), "--gif", "--device", "cpu",
          "--model", "shapes32-t2i", "--checkpoint-dir", str(t2i_checkpoints)])
    assert "wrote" in capsys.readouterr().out
    png = Image.open(io.BytesIO(out.read_bytes()))
    assert png.format == "PNG" and png.size == (4 * (2 * 32 + 2), 4 * 32)  # 2 images, 2 px apart, upscaled x4
    expected = generate(PROMPT, steps=3, n=2, device="cpu", directory=t2i_checkpoints).images
    assert np.array_equal(np.asarray(png.convert("RGB")), upscale(grid(expected, nrow=2), 4))
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3  # one frame per step


def test_cli_without_gif_writes_only_the_png(t2i_checkpoints, tmp_path):
    main(["", "--steps", "1", "-n", "1", "-o", str(tmp_path / "u.png"), "--checkpoint-dir", str(t2i_checkpoints)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.png"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be an int >= 1"),
    (["--guidance-scale", "-2"], "guidance_scale must be a number >= 0"),
    (["--sampler", "nope"], f"valid names: {', '.join(SAMPLERS)}"),
    (["--model", "nope"], "python -m course_lib.train nope"),
    (["-o", "star.jpg"], "must name a .png file"),
])
def test_cli_errors_are_one_line_usage_errors(t2i_checkpoints, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([PROMPT, "-o", str(tmp_path / "x.png"), "--checkpoint-dir", str(t2i_checkpoints), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_runs_as_a_module(tmp_path):
    """`python -m course_lib.generate`: a missing checkpoint is an argparse error naming the retrain command."""
    result = subprocess.run([sys.executable, "-m", "course_lib.generate", PROMPT, "-o", str(tmp_path / "x.png"),
                             "--checkpoint-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "retrain it with: python -m course_lib.train shapes32-t2i" in result.stderr
    assert "Traceback" not in result.stderr
