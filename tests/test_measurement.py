"""Measurement: the FLOP counter against analytic counts, chapter 4's pixels-vs-latents table
(`evaluation.pixel_vs_latent`) and `python -m course_lib.bench`, on the shipped 64x64 checkpoints.

Only counts and shapes are asserted; speed is for the benchmarks themselves.
"""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from course_lib import bench, evaluation, pretrained
from course_lib.metrics import count_flops, decode_gflops, gflops_per_step
from course_lib.models.layers import SelfAttention

PIXEL, LATENT = "shapes64-t2i", "shapes64-latent-t2i"


@pytest.fixture(scope="module")
def flops():
    """GFLOPs per step (guided and not) and per decode of both shipped 64x64 models."""
    return {name: {"guided": gflops_per_step(name), "single": gflops_per_step(name, guided=False),
                   "decode": decode_gflops(name)} for name in (PIXEL, LATENT)}


def test_flop_counter_counts_two_per_multiply_add():
    layer = nn.Linear(10, 20, bias=False)
    assert count_flops(lambda: layer(torch.zeros(3, 10))) == 2 * 3 * 10 * 20


def test_flop_counter_matches_the_analytic_count_of_attention():
    B, C, H, W, heads = 2, 32, 8, 8, 4
    N, d = H * W, C // heads  # 64 tokens of 8 channels per head
    attention = SelfAttention(C, num_heads=heads, groups=8)
    qkv = 2 * B * N * C * (3 * C)  # one linear layer C -> 3C per token
    scores = 2 * B * heads * N * N * d  # Q K^T
    mix = 2 * B * heads * N * N * d  # softmax(.) V
    out = 2 * B * N * C * C  # proj_out
    x = torch.randn(B, C, H, W)
    assert count_flops(lambda: attention(x)) == qkv + scores + mix + out
    # Without the MATH backend the CPU's fused attention kernel counts 0: the bug count_flops exists to avoid.
    plain = FlopCounterMode(display=False)
    with plain, torch.no_grad():
        attention(x)
    assert plain.get_total_flops() == qkv + out


def test_flop_counter_matches_the_analytic_count_of_a_conv_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    B = 2
    conv1 = 2 * B * 16 * 16 * 8 * (3 * 3 * 3)  # output pixels x out channels x (k x k x in channels)
    conv2 = 2 * B * 8 * 8 * 16 * (3 * 3 * 8)  # stride 2: an 8x8 output
    linear = 2 * B * (16 * 8 * 8) * 10
    assert count_flops(lambda: net(torch.zeros(B, 3, 16, 16))) == conv1 + conv2 + linear


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
    p = pretrained.load_checkpoint(LATENT, device="cpu")
    assert gflops_per_step(p) == flops[LATENT]["guided"]
    assert decode_gflops(p) == flops[LATENT]["decode"]
    assert gflops_per_step("shapes32-t2i", directory=t2i_checkpoints) > 0
    assert decode_gflops("shapes32-t2i", directory=t2i_checkpoints) == 0.0


def test_an_unconditional_model_has_nothing_to_guide_one_call_per_step(t2i_checkpoints):
    single = gflops_per_step("shapes32-unet", guided=False, directory=t2i_checkpoints)
    assert single > 0
    assert gflops_per_step("shapes32-unet", guided=True, directory=t2i_checkpoints) == single


def test_pixel_vs_latent_row(flops):
    rows = evaluation.pixel_vs_latent((LATENT,), prompts=evaluation.fresh_prompts(2), steps=1, n_per_prompt=1,
                                      repeats=1)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == LATENT and row["space"] == "8x8x4" and row["numbers_per_image"] == 256
    assert row["gflops_per_step"] == flops[LATENT]["guided"] and row["decode_gflops"] == flops[LATENT]["decode"]
    assert row["cpu_s_per_image"] > 0
    # the quality columns are cfg_sweep's numbers for the same prompts, seeds and scale
    quality = evaluation.cfg_sweep([5.0], evaluation.fresh_prompts(2), steps=1, n_per_prompt=1, model=LATENT,
                                   device="cpu")
    assert row["prompt_accuracy"] == quality.rows[0]["prompt_accuracy"]
    assert row["frechet_distance"] == quality.rows[0]["frechet_distance"]
    assert row["real_vs_real_fd"] == quality.baseline["frechet_distance"]
    assert row["attribute_accuracy"]["color"] == quality.rows[0]["color_accuracy"]


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


def test_bench_player_times_first_and_last_frame(capsys):
    r = bench.bench_player("shapes32-unet", steps=2, n=1, repeats=2, device="cpu")
    assert (r["model"], r["steps"], r["images"], r["device"]) == ("shapes32-unet", 2, 1, "cpu")
    assert 0 < r["first_frame_ms"] <= r["final_frame_ms"]
    bench.main(["player", "--steps", "2", "--repeats", "1", "--device", "cpu"])
    assert "player (shapes32-unet, 2 steps x 4 images, cpu" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["toy2d-mlp", "shapes-classifier"])
def test_bench_train_times_any_recipe_in_the_real_loop(recipe, capsys):
    r = bench.bench_train(recipe, steps=2, batch_size=8, device="cpu")
    assert (r["recipe"], r["batch_size"], r["steps"]) == (recipe, 8, 2) and r["images_per_s"] > 0
    bench.main(["train", "--recipe", recipe, "--steps", "2", "--batch-size", "8", "--device", "cpu"])
    assert f"train ({recipe}, batch 8, cpu):" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["train", "--recipe", "no-such-recipe"])
    assert exit_info.value.code == 2 and "valid recipes" in capsys.readouterr().err
