"""course_lib.pretrained: fp16 safetensors round trip, and clear errors for missing / corrupted / mismatched files."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import course_lib
from course_lib import pretrained
from course_lib.models import UNet, unet_tiny
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError, list_checkpoints, load, save

REPO = Path(__file__).resolve().parents[1]


def trained_looking_unet(seed: int = 0) -> UNet:
    """unet_tiny with every weight random (as after training), so the round trip checks every tensor."""
    model = unet_tiny(attn_resolutions=(16,))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = trained_looking_unet()
    meta = {"data": {"dataset": "shapes", "size": 32, "n": 100, "seed": 0}, "steps": 7, "final_loss": 0.1,
            "metrics": {"train_images_per_s": 12.5}, "command": "python -m course_lib.train tiny"}
    save("tiny", model, schedule_name="cosine", meta=meta, directory=tmp_path, num_train_timesteps=500)
    return model, tmp_path


def test_checkpoint_dir_is_in_the_repo():
    assert pretrained.CHECKPOINT_DIR == REPO / "data" / "checkpoints"


def test_round_trip_fp16_on_disk_float32_in_memory(saved):
    model, directory = saved
    with safe_open(str(directory / "tiny.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = load("tiny", device="cpu", directory=directory)
    assert isinstance(loaded.model, UNet) and not loaded.model.training
    assert loaded.model.config == model.config
    assert loaded.schedule.name == "cosine" and loaded.schedule.num_train_timesteps == 500
    for (name, p), q in zip(loaded.model.state_dict().items(), model.state_dict().values()):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)  # fp16 keeps ~3 decimal digits
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, 40), model(x, 40), rtol=0.02, atol=0.02)
    meta = loaded.meta
    assert meta["name"] == "tiny" and meta["kind"] == "unet" and meta["steps"] == 7
    assert meta["data"] == {"dataset": "shapes", "size": 32, "n": 100, "seed": 0}
    assert meta["metrics"] == {"train_images_per_s": 12.5} and meta["final_loss"] == 0.1
    assert meta["command"] == "python -m course_lib.train tiny"
    assert meta["library_version"] == course_lib.__version__
    assert re.match(r"\d{4}-\d\d-\d\dT", meta["created"])
    assert meta["schedule"] == {"name": "cosine", "num_train_timesteps": 500}
    assert list_checkpoints(directory) == ["tiny"]
    assert not list(directory.glob("*.tmp"))  # atomic writes leave no temp files behind


def test_missing_checkpoint_says_how_to_retrain(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as err:
        load("shapes32-unet", directory=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert "retrain it with: python -m course_lib.train shapes32-unet" in message
    assert str(tmp_path / "shapes32-unet.safetensors") in message


def test_missing_weights_file_alone_is_reported(saved):
    _, directory = saved
    (directory / "tiny.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"tiny\.safetensors.*python -m course_lib.train tiny"):
        load("tiny", directory=directory)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights_name_the_file(saved, damage):
    _, directory = saved
    path = directory / "tiny.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x13\x37" * 500)
    with pytest.raises(CheckpointError, match="corrupted") as err:
        load("tiny", directory=directory)
    assert str(path) in str(err.value) and "python -m course_lib.train tiny" in str(err.value)


def test_corrupted_json_names_the_file(saved):
    _, directory = saved
    (directory / "tiny.json").write_text('{"name": "tiny", "kind": ')
    with pytest.raises(CheckpointError, match=re.escape(str(directory / "tiny.json"))):
        load("tiny", directory=directory)


@pytest.mark.parametrize("change, fragment", [({"base_channels": 32}, "shape mismatches"),
                                              ({"num_res_blocks": 2}, "missing keys"),
                                              ({"attn_resolutions": []}, "unexpected keys")])
def test_weights_not_matching_the_config_list_offending_keys(saved, change, fragment):
    _, directory = saved
    info = json.loads((directory / "tiny.json").read_text())
    info["config"].update(change)
    (directory / "tiny.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not match the model config") as err:
        load("tiny", directory=directory)
    assert fragment in str(err.value) and str(directory / "tiny.safetensors") in str(err.value)
    assert re.search(r"'(down|up|mid|time_embed|conv_in)\.", str(err.value))  # names actual keys


def test_unknown_config_field_is_a_checkpoint_error(saved):
    _, directory = saved
    info = json.loads((directory / "tiny.json").read_text())
    info["config"]["width"] = 3
    (directory / "tiny.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="width"):
        load("tiny", directory=directory)


def test_bad_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="checkpoint name"):
        save("../evil", unet_tiny(), schedule_name="linear", directory=tmp_path)


def test_library_never_unpickles():
    """Weights come only through safetensors: no torch.load, no pickle anywhere in course_lib."""
    offenders = [f"{path.relative_to(REPO)}: {line.strip()}"
                 for path in (REPO / "course_lib").rglob("*.py")
                 for line in path.read_text().splitlines()
                 if re.search(r"torch\.load\(|\bimport pickle\b|\bpickle\.|\bdill\b|weights_only", line)]
    assert offenders == []


def test_init_from_checkpoint_copies_every_weight_and_leaves_added_layers_at_zero(tmp_path, monkeypatch):
    from course_lib.train import init_from_checkpoint

    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", tmp_path)
    torch.manual_seed(0)
    base = unet_tiny()
    save("base", base, schedule_name="linear", directory=tmp_path)
    torch.manual_seed(1)
    cond = unet_tiny(cond_dim=8)  # the same U-Net plus cross-attention layers
    added = init_from_checkpoint(cond, "base")
    assert added and all(".cross." in k for k in added)
    for k, v in base.state_dict().items():  # fp16 on disk: equal to the saved weights' half precision
        torch.testing.assert_close(cond.state_dict()[k], v.half().float())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    tokens, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    # Cross-attention starts as a zero map, so the fine-tuned model begins exactly where the base model was.
    with torch.no_grad():
        torch.testing.assert_close(cond.eval()(x, t, cond=tokens, cond_mask=mask), load("base", device="cpu",
                                   directory=tmp_path).model(x, t), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit this model"):
        init_from_checkpoint(unet_tiny(base_channels=8), "base")


def test_load_checkpoint_is_cached_until_the_checkpoint_is_retrained(tmp_path):
    torch.manual_seed(0)
    save("tiny", unet_tiny(), schedule_name="linear", directory=tmp_path)
    first = pretrained.load_checkpoint("tiny", device="cpu", directory=tmp_path)
    assert pretrained.load_checkpoint("tiny", device="cpu", directory=str(tmp_path)) is first  # loaded once
    torch.manual_seed(1)
    retrained = unet_tiny()
    save("tiny", retrained, schedule_name="linear", directory=tmp_path)  # e.g. train.run in the same kernel
    second = pretrained.load_checkpoint("tiny", device="cpu", directory=tmp_path)
    assert second is not first
    for key, value in retrained.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value.half().float())


def test_annotate_adds_fields_and_names_the_retrain_command_when_it_cannot(tmp_path):
    save("tiny", unet_tiny(), schedule_name="linear", directory=tmp_path)
    pretrained.annotate("tiny", {"quality_floor": {"measured": 1.0}}, directory=tmp_path)
    assert load("tiny", device="cpu", directory=tmp_path).meta["quality_floor"] == {"measured": 1.0}
    with pytest.raises(CheckpointNotFoundError, match="python -m course_lib.train other"):
        pretrained.annotate("other", {}, directory=tmp_path)
    (tmp_path / "tiny.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*tiny.json.*python -m course_lib.train tiny"):
        pretrained.annotate("tiny", {}, directory=tmp_path)


def test_the_default_directory_and_its_path_share_one_cache_entry():
    assert pretrained.load_checkpoint("shapes32-unet", device="cpu") is \
        pretrained.load_checkpoint("shapes32-unet", device="cpu", directory=pretrained.CHECKPOINT_DIR)
