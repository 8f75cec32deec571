"""course_lib.compare (pixel vs latent: FLOPs per step and per decode, CPU seconds, quality) and
`python -m course_lib.bench generate`, on the shipped shapes64-t2i / shapes64-latent-t2i checkpoints.

Only counts and shapes are asserted; speed is for the benchmarks themselves.
"""
import pytest
import torch

from course_lib import bench, compare, evaluation
from course_lib import generate as pipeline

PIXEL, LATENT = "shapes64-t2i", "shapes64-latent-t2i"


@pytest.fixture(scope="module")
def flops():
    """GFLOPs per step (guided and not) and per decode of both shipped 64x64 models."""
    return {name: {"guided": compare.gflops_per_step(name), "single": compare.gflops_per_step(name, guided=False),
                   "decode": compare.decode_gflops(name)} for name in (PIXEL, LATENT)}


def test_flop_counter_counts_two_per_multiply_add():
    layer = torch.nn.Linear(10, 20, bias=False)
    assert compare._flops(lambda: layer(torch.zeros(3, 10))) == 2 * 3 * 10 * 20


def test_latent_step_is_far_cheaper_than_pixel_step(flops):
    pixel, lat = flops[PIXEL]["guided"], flops[LATENT]["guided"]
    assert pixel > 0 and lat > 0
    assert lat < pixel / 10  # 8x8x4 latents vs 64x64x3 pixels


def test_unguided_step_is_half_the_guided_one(flops):
    for name in (PIXEL, LATENT):
        assert flops[name]["single"] > 0
        assert flops[name]["guided"] == pytest.approx(2 * flops[name]["single"], rel=0.01)


def test_decode_costs_nothing_for_pixels_and_something_for_latents(flops):
    assert flops[PIXEL]["decode"] == 0.0
    assert flops[LATENT]["decode"] > 0
    # a 20-step latent run, decode included, is still far cheaper than 20 pixel steps
    assert 20 * flops[LATENT]["guided"] + flops[LATENT]["decode"] < 20 * flops[PIXEL]["guided"] / 4


def test_flops_accept_a_loaded_checkpoint_and_a_directory(flops, t2i_checkpoints):
    p = pipeline.load_checkpoint(LATENT, device="cpu")
    assert compare.gflops_per_step(p) == flops[LATENT]["guided"]
    assert compare.decode_gflops(p) == flops[LATENT]["decode"]
    assert compare.gflops_per_step("shapes32-t2i", directory=t2i_checkpoints) > 0
    assert compare.decode_gflops("shapes32-t2i", directory=t2i_checkpoints) == 0.0


def test_gflops_of_an_unconditional_model_is_a_count_or_a_clear_error(t2i_checkpoints):
    try:
        assert compare.gflops_per_step("shapes32-unet", guided=False, directory=t2i_checkpoints) > 0
    except ValueError as e:
        assert "text" in str(e)


def test_pixel_vs_latent_row(flops):
    rows = compare.pixel_vs_latent((LATENT,), prompts=evaluation.fresh_prompts(2), steps=1, n_per_prompt=1,
                                   repeats=1)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == LATENT and row["space"] == "8x8x4" and row["numbers_per_image"] == 256
    assert row["gflops_per_step"] == flops[LATENT]["guided"] and row["decode_gflops"] == flops[LATENT]["decode"]
    assert row["cpu_s_per_image"] > 0
    assert 0 <= row["prompt_accuracy"] <= 1
    assert row["frechet_distance"] >= 0 and row["real_vs_real_fd"] >= 0


def test_bench_generate_latent(capsys):
    r = bench.bench_generate(LATENT, steps=1, n=1, repeats=1, device="cpu")
    assert r["model"] == LATENT and r["device"] == "cpu" and (r["steps"], r["images"]) == (1, 1)
    assert r["seconds"] > 0
    bench.main(["generate", "--model", LATENT, "--steps", "1", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith(f"generate ({LATENT}, 1 steps x 4 images incl. decode, cpu, ")
    assert "(median of 1)" in out


def test_bench_rejects_unknown_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["sample"])
    assert exit_info.value.code == 2 and "generate" in capsys.readouterr().err
