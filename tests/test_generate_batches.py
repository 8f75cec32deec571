"""course_lib.generate at any count: batches (memory flat in n), per-image seeds, numbered PNGs, clear errors.

Uses the throwaway random-weight checkpoints (the `t2i_checkpoints` fixture in conftest.py). A "spy" sampler stands
in for a registered one to see what the pipeline hands it: the largest batch, and each x_T.
"""
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib import pretrained, samplers
from course_lib.generate import SEED_RULE, default_batch_size, generate, generate_batches, main, step_noise_generator
from course_lib.guidance import GuidedModel
from course_lib.images import to_uint8, upscale
from course_lib.samplers import SAMPLERS, make_timesteps

PROMPT = "a red circle"
ALLOCATOR_ERROR = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you tried to "
                   "allocate 26214400000 bytes.")


@pytest.fixture
def run(t2i_checkpoints):
    """generate() on the throwaway checkpoints, 2 steps on the CPU."""
    def run(prompt=PROMPT, **kwargs):
        return generate(prompt, **{"steps": 2, "device": "cpu", "directory": t2i_checkpoints, **kwargs})
    return run


class Spy:
    """Registered as a sampler: records each call's batch size and x_T and the largest batch the eps_model is asked
    for, then runs the real sampler (or, with fast=True, returns x_T itself: no network, and no x_T kept)."""

    def __init__(self, real=samplers.ddim, fast=False):
        self.real, self.fast, self.sizes, self.x_T, self.largest_eps_batch = real, fast, [], [], 0

    def __call__(self, eps_model, x, schedule, timesteps, **kwargs):
        self.sizes.append(len(x))
        if self.fast:
            return x.clone()
        self.x_T.append(x.clone())

        def watched(x_t, t):
            self.largest_eps_batch = max(self.largest_eps_batch, len(x_t))
            return eps_model(x_t, t)
        return self.real(watched, x, schedule, timesteps, **kwargs)


@pytest.fixture
def spy(monkeypatch):
    spy = Spy()
    monkeypatch.setitem(SAMPLERS, "ddim", spy)
    return spy


# ----- batches: memory holds one batch, whatever n -------------------------------------------------
def test_generate_samples_in_batches_and_joins_them(run, spy):
    steps_seen = []
    out = run(n=10, batch_size=4, callback=steps_seen.append)
    assert spy.sizes == [4, 4, 2] and spy.largest_eps_batch == 4
    assert out.images.shape == (10, 3, 32, 32) and out.first == 0
    assert len(out.records) == 2 and all(r.x_t.shape == (10, 3, 32, 32) for r in out.records)
    assert torch.equal(out.records[-1].x_t, out.images)  # each batch's rows, in order
    assert [(r.step, r.nfe) for r in out.records] == [(0, 1), (1, 2)]  # the sampler's fields kept
    assert [r.step for r in steps_seen] == [0, 1] * 3  # the callback sees every batch's steps


def test_a_large_run_never_holds_more_than_one_batch(t2i_checkpoints, monkeypatch):
    spy = Spy(fast=True)  # 20000 images: the sampler returns x_T, so only the pipeline's own memory is on trial
    monkeypatch.setitem(SAMPLERS, "ddim", spy)
    largest_draw, randn = [0], torch.randn

    def watched_randn(*args, **kwargs):  # every x_T draw (and every skipped one) goes through torch.randn
        noise = randn(*args, **kwargs)
        largest_draw[0] = max(largest_draw[0], noise.numel())
        return noise
    monkeypatch.setattr(torch, "randn", watched_randn)
    batches = generate_batches(PROMPT, steps=1, n=20_000, batch_size=16, device="cpu", directory=t2i_checkpoints)
    assert spy.sizes == []  # nothing is sampled before the loop asks
    first = next(batches)
    assert spy.sizes == [16] and first.images.shape == (16, 3, 32, 32) and first.first == 0
    count, starts = len(first.images), [0]
    for batch in batches:
        count += len(batch.images)
        starts.append(batch.first)
    assert count == 20_000 and starts == list(range(0, 20_000, 16))
    assert max(spy.sizes) == 16 and len(spy.sizes) == 1250
    assert largest_draw[0] <= 16 * 3 * 32 * 32  # never all x_T at once


def test_default_batch_size_follows_image_size_and_device(t2i_checkpoints):
    p = pretrained.load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    assert default_batch_size(p, "cpu") == 64 and default_batch_size(p, "cuda") == 512
    big = pretrained.Pretrained(None, None, {"data": {"size": 64}, "config": {}})  # 64x64 RGB: a quarter as many
    assert default_batch_size(big, "cpu") == 16
    latent = pretrained.Pretrained(None, None, {"vae": "shapes64-vae", "data": {"size": 64}, "config": {}})
    assert default_batch_size(latent, "cpu") == 16  # counted at the decoded size, not the 8x8 latents


# ----- seeds: image k is the same alone and in a batch -----------------------------------------------
def test_image_k_alone_is_image_k_of_a_batch_of_64(run, spy):
    """The x_T are equal to the bit (SEED_RULE); the images up to float round-off (batched convolutions)."""
    batch = run(n=64)  # the default batch on a CPU: one sampler call of 64
    assert spy.sizes == [64]
    everyone = torch.randn((64, 3, 32, 32), generator=torch.Generator().manual_seed(0))  # one draw, as the player
    assert torch.equal(spy.x_T[0], everyone)
    for k in (1, 37, 63):
        alone = run(n=1, first=k)
        assert alone.first == k and torch.equal(spy.x_T[-1][0], everyone[k])
        distance = (batch.images - alone.images).flatten(1).abs().amax(dim=1)  # (64,) to every image of the batch
        assert distance[k] < 5e-3 and distance.argmin() == k, distance[k]


def test_batch_size_does_not_change_a_ddim_image(run, spy):
    one_batch, small_batches = run(n=10, batch_size=10), run(n=10, batch_size=3)
    assert torch.equal(spy.x_T[0], torch.cat(spy.x_T[1:]))
    torch.testing.assert_close(small_batches.images, one_batch.images, rtol=0, atol=5e-3)
    later = run(n=4, first=6, batch_size=3)
    assert torch.equal(torch.cat(spy.x_T[-2:]), spy.x_T[0][6:])
    torch.testing.assert_close(later.images, one_batch.images[6:], rtol=0, atol=5e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "lcm"])
def test_a_noisy_samplers_image_has_its_own_noise_whatever_the_batch(run, t2i_checkpoints, sampler):
    """SEED_RULE for a sampler that draws noise at every step, by hand: image k's noise is its own
    step_noise_generator(3, k)."""
    p = pretrained.load_checkpoint("shapes32-t2i", device="cpu", directory=t2i_checkpoints)
    encoder = pretrained.load_text_encoder(p, directory=t2i_checkpoints)
    eps_model = GuidedModel(p.model, *encoder(PROMPT), *encoder(""), 5.0)
    x_T = torch.randn((4, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    expected = SAMPLERS[sampler](eps_model, x_T, p.schedule, make_timesteps(p.schedule, 2),
                                 generator=[step_noise_generator(3, k) for k in range(4)])
    got = run(sampler=sampler, seed=3, n=4, batch_size=2)
    torch.testing.assert_close(got.images, expected, rtol=0, atol=5e-3)
    alone = run(sampler=sampler, seed=3, n=1, first=2)  # image 2 by itself: the same image, not just the same x_T
    torch.testing.assert_close(alone.images[0], got.images[2], rtol=0, atol=5e-3)
    other = run(sampler=sampler, seed=3, n=1, first=3)
    assert (other.images[0] - alone.images[0]).abs().max() > 0.1  # each image gets its own noise
    assert torch.equal(run(sampler=sampler, seed=3, n=4, batch_size=2).images, got.images)


# ----- memory errors and bad input -------------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError(ALLOCATOR_ERROR),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.41 GiB")])
def test_a_batch_that_does_not_fit_names_batch_size(run, monkeypatch, error):
    def out_of_memory(*args, **kwargs):
        raise error
    monkeypatch.setitem(SAMPLERS, "ddim", out_of_memory)
    with pytest.raises(MemoryError, match=r"a batch of 64 images of 3x32x32 does not fit .* batch_size=16"):
        run(n=100)
    with pytest.raises(MemoryError, match="one image .* even at batch_size=1"):
        run(n=1)


def test_other_runtime_errors_are_not_called_memory_errors(run, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setitem(SAMPLERS, "ddim", broken)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        run()


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(batch_size=-4), "batch_size must be an int >= 1"),
    (dict(batch_size=2.5), "batch_size must be an int >= 1"),
    (dict(batch_size=True), "batch_size must be an int >= 1"),
    (dict(first=-1), "first must be an int >= 0"),
])
def test_bad_batch_arguments(run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(**kwargs)
    with pytest.raises(ValueError, match=message):  # at the call, not at the first batch
        generate_batches(PROMPT, **kwargs)


# ----- command line: numbered PNGs in a directory, the -o rules --------------------------------------
def cli(t2i_checkpoints, *args):
    main([PROMPT, "--steps", "1", "--device", "cpu", "--checkpoint-dir", str(t2i_checkpoints), *map(str, args)])


def test_cli_streams_many_images_to_numbered_pngs(t2i_checkpoints, tmp_path, capsys, spy):
    out = tmp_path / "new" / "circles"
    cli(t2i_checkpoints, "-n", 70, "--batch-size", 32, "--seed", 5, "--scale", 1, "-o", f"{out}/")
    assert spy.sizes == [32, 32, 6] and spy.largest_eps_batch == 32
    assert sorted(p.name for p in out.iterdir()) == [f"{k:06d}.png" for k in range(70)] + ["generation.json"]
    record = json.loads((out / "generation.json").read_text())
    assert {k: record[k] for k in ("prompt", "seed", "count", "batch_size", "first", "model", "sampler")} == \
        {"prompt": PROMPT, "seed": 5, "count": 70, "batch_size": 32, "first": 0, "model": "shapes32-t2i",
         "sampler": "ddim"}
    assert record["seed_rule"] == SEED_RULE and record["steps"] == 1
    streams = capsys.readouterr()
    assert "70/70" in streams.err and "wrote 70 PNGs" in streams.out  # the progress bar counts images
    expected = generate(PROMPT, steps=1, seed=5, n=70, batch_size=32, device="cpu", directory=t2i_checkpoints)
    for k in (0, 69):
        png = Image.open(io.BytesIO((out / f"{k:06d}.png").read_bytes()))
        assert np.array_equal(np.asarray(png.convert("RGB")), upscale(to_uint8(expected.images[k]), 1))


def test_cli_directory_for_a_few_images_and_first(t2i_checkpoints, tmp_path):
    cli(t2i_checkpoints, "-n", 2, "--first", 9, "-o", f"{tmp_path / 'few'}/")
    assert sorted(p.name for p in (tmp_path / "few").iterdir()) == ["000009.png", "000010.png", "generation.json"]


@pytest.mark.parametrize("out, args, message", [
    ("missing/x.png", [], "directory .*missing does not exist: create it, or pass a directory ending in '/'"),
    ("x.png", ["-n", 65], "-n 65 is more than one grid \\(64 images\\): pass a directory ending in '/'"),
    ("existing", [], "is a directory: end it with '/'"),
    ("dir/", ["--gif"], "--gif animates one grid"),
    ("dir/", ["--batch-size", 0], "batch_size must be an int >= 1"),
    ("dir/", ["--first", -1], "first must be an int >= 0"),
])
def test_cli_out_and_batch_errors_are_usage_errors(t2i_checkpoints, tmp_path, capsys, out, args, message):
    (tmp_path / "existing").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli(t2i_checkpoints, "-o", f"{tmp_path}/{out}", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # nothing created, no directory made


def test_cli_memory_error_names_batch_size(t2i_checkpoints, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError(ALLOCATOR_ERROR)
    monkeypatch.setitem(SAMPLERS, "ddim", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        cli(t2i_checkpoints, "-n", 100, "-o", f"{tmp_path}/many/")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--batch-size 16" in err and "Traceback" not in err
    assert not (tmp_path / "many" / "generation.json").exists()  # an unfinished run has no JSON


def test_cli_sampler_help_lists_the_registry(monkeypatch, capsys):
    monkeypatch.setitem(SAMPLERS, "my_new_sampler", samplers.ddim)
    with pytest.raises(SystemExit):
        main(["--help"])
    words = capsys.readouterr().out.replace(",", " ").split()
    assert all(name in words for name in SAMPLERS) and "my_new_sampler" in words
