"""Chapter 8's measurements: the training-FLOP bookkeeping, inpainting by forced tokens and by KnownRegion on the
shipped models, and data/ar_vs_diffusion.json holding what notebook 08 reads, consistent with the checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from course_lib import pretrained
from course_lib.data import ShapesDataset
from course_lib.evaluation import AR_PATH
from course_lib.evaluation.ar_vs_diffusion import METHODS, ar_complete, diffusion_complete, half_mask, training_flops


def test_training_flops_are_three_forward_passes_per_image_seen_plus_the_initialising_run():
    ar = json.loads((pretrained.CHECKPOINT_DIR / "shapes32-ar.json").read_text())
    got = training_flops("shapes32-ar")
    images = ar["steps"] * ar["train_config"]["batch_size"]
    assert got["images_seen"] == images and got["init_from"] is None
    assert got["flops"] == pytest.approx(3 * ar["metrics"]["forward_gflops_per_image"] * 1e9 * images)
    t2i, unet = training_flops("shapes32-t2i"), training_flops("shapes32-unet")
    assert t2i["init_from"] == "shapes32-unet"
    assert t2i["flops"] == pytest.approx(3 * t2i["forward_gflops_per_image"] * 1e9 * t2i["images_seen"] + unet["flops"])


def test_forced_tokens_keep_the_known_half_exactly_and_known_region_keeps_it_closely():
    truth = ShapesDataset(size=32, n=2, seed=11).images()
    mask = half_mask(32, "top")
    assert mask.shape == (1, 1, 32, 32) and mask[..., :16, :].all() and not mask[..., 16:, :].any()
    pixels = ar_complete("shapes32-ar", truth, mask, seed=0)  # palette tokens are lossless: the top half exactly
    assert (pixels - truth)[..., :16, :].abs().max() <= 0.5 / 127.5 + 1e-6
    assert (pixels - truth)[..., 16:, :].abs().max() > 0.1  # the bottom half is the model's own
    diffused = diffusion_complete(truth, mask, seed=0, steps=10)
    assert (diffused - truth)[..., :16, :].abs().max() < 0.05


def test_the_shipped_measurements_cover_every_method_and_match_the_checkpoints():
    record = json.loads(AR_PATH.read_text())
    assert [row["method"] for row in record["cost"]] == [label for label, *_ in METHODS]
    calls = {row["method"]: row["sequential_calls"] for row in record["cost"]}
    assert calls["pixel AR"] == 1024 and calls["token AR"] == 64 and calls["diffusion DDIM 50"] == 50
    for row in record["quality"]:
        assert 0 <= row["prompt_accuracy"] <= 1 and row["prompt_accuracy_se"] >= 0 and row["frechet_distance"] > 0
    for name, value in record["training"].items():
        stated = json.loads((pretrained.CHECKPOINT_DIR / f"{name}.json").read_text())["training_flops"]
        assert stated["flops"] == pytest.approx(value["flops"]), name  # each checkpoint's JSON says the same
        assert value["flops"] == pytest.approx(training_flops(name)["flops"]), name
    assert {(r["method"], r["known"]) for r in record["completion"]["rows"]} == \
        {(m, k) for m in ("pixel AR", "token AR", "diffusion") for k in ("top", "bottom")}
    assert {r["position"] for r in record["by_position"]["rows"]} == {"left", "right", "top", "bottom", "center"}
    assert len(record["early_wrong_token"]["rows"]) == 8
    assert torch.get_num_threads() >= 1 and record["command"].startswith("python -m course_lib.evaluation ar-vs-")


def test_the_shipped_palette_is_lossless_on_fresh_renders():
    meta = json.loads((pretrained.CHECKPOINT_DIR / "shapes32-ar.json").read_text())
    assert meta["metrics"]["tokenizer_max_error_0_255"] <= 0.5  # only the rounding to 0..255
    assert meta["metrics"]["vocab_size"] == len(meta["config"]["palette"]) < 256
