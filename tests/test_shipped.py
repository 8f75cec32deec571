"""The shipped checkpoints still do what their JSON promises: each one, loaded as users load it, meets the quality
floor its JSON states, measured now on small fresh data (seconds each on a CPU); a copy whose weights are noise
does not. (What the floors measure: course_lib.floors; how they were chosen: the comments in recipes.py.)"""
import json

import pytest
import torch

from course_lib import floors, pretrained
from course_lib.recipes import RECIPES

SHIPPED = [name for name, recipe in RECIPES.items() if recipe.floor is not None]


def stated_floor(name: str) -> floors.Floor:
    stated = json.loads((pretrained.CHECKPOINT_DIR / f"{name}.json").read_text())["quality_floor"]
    return floors.Floor(stated["metric"], stated["limit"], stated["settings"])


def test_every_shipped_checkpoint_states_its_recipes_floor():
    assert set(SHIPPED) == {"shapes32-unet", "shapes32-t2i", "shapes32-lcm", "shapes64-t2i", "shapes64-latent-t2i",
                            "shapes64-latent-dit", "shapes64-vae", "shapes-classifier", "shapes-clip", "shapes32-ar",
                            "shapes-vq", "shapes32-ar-tokens"}
    for name in SHIPPED:
        assert stated_floor(name) == RECIPES[name].floor, name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_meets_the_floor_its_json_states(name):
    floor = stated_floor(name)
    value = floors.measure(pretrained.load_checkpoint(name, device="cpu"), floor)
    assert floor.met_by(value), f"{name}: {floor.describe(value)}"


@pytest.mark.parametrize("name", SHIPPED)
def test_noise_weights_fall_below_the_floor(name):
    noisy = pretrained.load(name, device="cpu")  # a private copy (load_checkpoint's is shared)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the same shapes and per-tensor scale, nothing learned
        for weight in noisy.model.parameters():
            scale = weight.float().std() if weight.numel() > 1 else torch.tensor(1.0)
            weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    floor = stated_floor(name)
    value = floors.measure(noisy, floor)
    assert not floor.met_by(value), f"{name} with noise weights: {floor.describe(value)}"


def test_floor_names_missing_settings():
    from course_lib.models import ClassifierConfig, ShapesClassifier

    p = pretrained.Pretrained(ShapesClassifier(ClassifierConfig()), None, {})
    with pytest.raises(ValueError, match="needs the settings n, size, seed; size missing"):
        floors.measure(p, floors.Floor("accuracy", 0.9, dict(n=4, seed=1)))


def test_floor_describes_its_verdict_and_rejects_unknown_metrics():
    assert floors.Floor("psnr_db", 28.0).describe(30.0) == "psnr_db 30 meets its floor (>= 28)"
    assert floors.Floor("frechet_distance", 300.0).describe(400.0) == "frechet_distance 400 FAILS its floor (<= 300)"
    with pytest.raises(ValueError, match="valid metrics: prompt_accuracy"):
        floors.Floor("fid", 1.0)
