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


def dit_flops(cfg) -> int:
    """A DiT's forward FLOPs (one image, class-conditional), layer by layer on paper."""
    d, T, p = cfg.hidden_size, cfg.num_tokens, cfg.patch_size
    block = (2 * T * d * 3 * d  # qkv
             + 2 * 2 * T * T * d  # Q K^T and softmax(.) V over all heads
             + 2 * T * d * d  # attention's output projection
             + 2 * 2 * T * d * int(cfg.mlp_ratio * d)  # the MLP's two linear maps
             + 2 * d * 6 * d)  # adaLN: one linear map of c per image, not per token
    patches = 2 * T * (p * p * cfg.in_channels) * d  # the patch embedding (a strided conv)
    timestep = 2 * (cfg.freq_dim * d + d * d)  # the timestep MLP
    head = 2 * d * 2 * d + 2 * T * d * p * p * cfg.out_channels  # final adaLN and linear map
    return cfg.depth * block + patches + timestep + head


def test_dit_flops_equal_the_count_on_paper_and_the_papers_dit_s2():
    """DiT-S/2 on 32x32x4 latents: the paper's Table 4 gives 6.06 GFLOPs, counting one multiply-add as one FLOP
    (fvcore), i.e. 12.1 of our FLOPs. The course formula N T (12 d^2 + 2 T d) multiply-adds is its main term."""
    from course_lib.models import dit

    model = dit("DiT-S/2")
    cfg = model.config
    counted = count_flops(lambda: model(torch.zeros(1, 4, 32, 32), torch.tensor([10]), torch.tensor([3])))
    assert counted == dit_flops(cfg)
    assert counted == pytest.approx(2 * 6.06e9, rel=0.02)
    d, T = cfg.hidden_size, cfg.num_tokens
    assert counted == pytest.approx(2 * cfg.depth * T * (12 * d * d + 2 * T * d), rel=0.01)
    # patch 4 on the same network: 4x fewer tokens, about 4x fewer FLOPs, the same parameters up to the head
    coarse = dit("DiT-S/4")
    assert count_flops(lambda: coarse(torch.zeros(1, 4, 32, 32), torch.tensor([10]), torch.tensor([3]))) \
        == dit_flops(coarse.config) < counted / 3.5


def test_unet_flops_equal_the_count_on_paper():
    """A two-level U-Net, every convolution, linear map and attention product written out."""
    from course_lib.models import UNet, UNetConfig

    b, C, R = 8, 3, 8  # base channels, image channels, resolution
    model = UNet(UNetConfig(in_channels=C, base_channels=b, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(), image_size=R, num_heads=2, groups=4))
    temb = 4 * b

    def conv(cin, cout, res, k=3):
        return 2 * cin * cout * k * k * res * res

    def res_block(cin, cout, res):
        return conv(cin, cout, res) + 2 * temb * cout + conv(cout, cout, res) + (conv(cin, cout, res, 1)
                                                                                 if cin != cout else 0)

    def attention(c, res):
        n = res * res
        return 2 * n * c * 3 * c + 2 * 2 * n * n * c + 2 * n * c * c

    r2 = R // 2
    expected = (2 * (b * temb + temb * temb)  # timestep MLP
                + conv(C, b, R)  # conv_in
                + res_block(b, b, R) + 2 * b * b * 9 * r2 * r2  # level 0, then the strided downsampling conv
                + res_block(b, 2 * b, r2)  # level 1
                + res_block(2 * b, 2 * b, r2) + attention(2 * b, r2) + res_block(2 * b, 2 * b, r2)  # middle
                + res_block(4 * b, 2 * b, r2) + res_block(3 * b, 2 * b, r2)  # up, level 1 (skips concatenated)
                + conv(2 * b, 2 * b, R)  # upsample: nearest, then a 3x3 conv at the new size
                + res_block(3 * b, b, R) + res_block(2 * b, b, R)  # up, level 0
                + conv(b, C, R))  # conv_out
    assert count_flops(lambda: model(torch.zeros(1, C, R, R), torch.tensor([5]))) == expected
