"""Shipped checkpoints: `data/checkpoints/<name>.safetensors` (fp16 weights) + `<name>.json` (how to rebuild them).

`save` / `load` write and read one checkpoint of any kind (U-Net, MLP, classifier, VAE, CLIP). On top of them,
the loaders that pipelines, widgets and sweeps share: `load_checkpoint` (loaded once per device, and again when
the files change, e.g. after retraining in the same kernel), `load_text_encoder` and `load_vae` (the CLIP and the
VAE a checkpoint's JSON names), `sample_shape` / `image_shape`.

Weights are only ever read with safetensors (no pickle, so loading cannot run code). Every failure names the
file and the command that recreates it: `python -m course_lib.train <name>`.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import course_lib
from course_lib.models import VAE, build_model
from course_lib.schedules import NoiseSchedule

CHECKPOINT_DIR = Path(__file__).parents[1] / "data" / "checkpoints"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupted file, or weights that do not fit the config)."""


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint's weights or JSON file is missing."""


@dataclass
class Pretrained:
    """A loaded checkpoint: the model (eval mode, on its device), its noise schedule and the JSON metadata."""

    model: nn.Module  # eps_theta(x_t, t[, cond, cond_mask]), or a helper model (classifier, VAE, CLIP)
    schedule: NoiseSchedule | None  # the schedule a denoiser was trained with; None for models without one
    meta: dict  # the checkpoint's JSON: name, kind, config, data, steps, final_loss, metrics, command, ...


def _retrain(name: str) -> str:
    return f"retrain it with: python -m course_lib.train {name}"


def _paths(name: str, directory) -> tuple[Path, Path]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"checkpoint name must be letters, digits, '-', '_' or '.' (e.g. 'shapes32-unet'); "
                         f"got {name!r}")
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) then rename over path, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(name: str, model: nn.Module, *, kind: str | None = None, config=None, schedule_name: str | None,
         meta: dict | None = None, directory=None, num_train_timesteps: int = 1000) -> Path:
    """Write `<name>.safetensors` (fp16) and `<name>.json`; kind/config default to the model's own.

    schedule_name is the denoiser's noise schedule; None for models that have none (classifier, CLIP).
    """
    weights_path, json_path = _paths(name, directory)
    kind = kind if kind is not None else model.kind  # e.g. "unet"; open_clip models carry "open_clip"
    config = config if config is not None else model.config
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    meta = dict(meta or {})
    info = {
        "name": name, "kind": kind, "config": config,
        "schedule": None if schedule_name is None else {"name": schedule_name,
                                                        "num_train_timesteps": num_train_timesteps},
        "data": meta.pop("data", None), "steps": meta.pop("steps", None), "final_loss": meta.pop("final_loss", None),
        "metrics": meta.pop("metrics", {}), "command": meta.pop("command", None),
        "library_version": course_lib.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,  # anything else the caller wants to keep
    }
    # fp16 halves the files; every weight of these small nets is far inside fp16's range.
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"name": name}))
    write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return weights_path


def annotate(name: str, fields: dict, directory=None) -> Path:
    """Add (or replace) top-level fields of checkpoint `name`'s JSON, e.g. a measurement made after saving."""
    _, json_path = _paths(name, directory)
    if not json_path.exists():
        raise CheckpointNotFoundError(f"checkpoint {name!r} has no {json_path}; {_retrain(name)}")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {json_path} ({type(e).__name__}: {e}); {_retrain(name)}") from e
    write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps({**meta, **fields}, indent=2) + "\n"))
    return json_path


def load(name: str, device=None, directory=None) -> Pretrained:
    """Rebuild the model from `<name>.json`, load the fp16 weights as float32, move to device, eval mode."""
    weights_path, json_path = _paths(name, directory)
    missing = [str(p) for p in (json_path, weights_path) if not p.exists()]
    if missing:
        raise CheckpointNotFoundError(f"checkpoint {name!r} not found: missing {', '.join(missing)}; {_retrain(name)}"
                                      f" (available here: {list_checkpoints(weights_path.parent) or 'none'})")
    try:
        meta = json.loads(json_path.read_text())
        kind, config, schedule_info = meta["kind"], meta["config"], meta["schedule"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read {json_path} ({type(e).__name__}: {e}); {_retrain(name)}") from e
    try:
        model = build_model(kind, config)
        schedule = None if schedule_info is None else NoiseSchedule.from_name(schedule_info["name"],
                                                                              schedule_info["num_train_timesteps"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{json_path} describes no valid model/schedule ({e}); {_retrain(name)}") from e
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {weights_path} ({type(e).__name__}: {e}); "
                              f"the file is corrupted or truncated; {_retrain(name)}") from e
    check_state_matches(weights_path, model, state, _retrain(name))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    device = torch.device(device) if device is not None else course_lib.device()
    return Pretrained(model.to(device).eval(), schedule, meta)


def list_checkpoints(directory=None) -> list[str]:
    """Names of the checkpoints (both files present) in directory (default CHECKPOINT_DIR)."""
    directory = Path(directory) if directory is not None else CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.safetensors") if p.with_suffix(".json").exists())


def check_state_matches(path, model: nn.Module, state: dict, hint: str) -> None:
    """CheckpointError naming a few missing / unexpected / mis-shaped keys if `state` does not fit `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"{label} {keys[:5]}" + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                        ("shape mismatches", shapes)) if keys]
        raise CheckpointError(f"weights in {path} do not match the model config: {'; '.join(problems)}; {hint}")


#################################################################################
#          Loaders the pipelines share: cached, and what a JSON names           #
#################################################################################

@functools.lru_cache(maxsize=8)
def _load_cached(name: str, directory: Path, device: torch.device, stamp: tuple) -> Pretrained:
    return load(name, device=device, directory=directory)  # stamp: only part of the cache key


def _stamp(name: str, directory: Path) -> tuple:
    """Which version of the checkpoint's two files is on disk: `save` replaces each file by a new one (a new inode,
    a new modification time), so a retrained checkpoint gets a new cache entry."""
    try:
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in (p.stat() for p in _paths(name, directory)))
    except OSError:
        return ()  # missing: `load` raises the error that names the retrain command


def _cache_device(device) -> torch.device:
    """One spelling per device, so "cuda" and "cuda:0" share a cache entry."""
    device = course_lib.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def load_checkpoint(model="shapes32-t2i", device=None, directory=None) -> Pretrained:
    """A checkpoint name -> `load(...)`, loaded once per (name, directory, device, file version); a Pretrained passes.

    The returned model is shared by every caller that asks for the same checkpoint: do not train it in place
    (use `load` for a private copy).
    """
    if isinstance(model, Pretrained):
        return model
    directory = (Path(directory) if directory is not None else CHECKPOINT_DIR).resolve()
    return _load_cached(model, directory, _cache_device(device), _stamp(model, directory))


def load_model(p, cls: type, device=None, directory=None, *, key: str | None = None):
    """The model of checkpoint `p` (eval mode), loaded once and checked to be a `cls`.

    p: a checkpoint name, or a loaded Pretrained whose JSON names the checkpoint under `key` (its "text_encoder",
    its "vae"), loaded from the same `directory` onto that model's device; None if its JSON names none.
    """
    name = p.meta.get(key) if isinstance(p, Pretrained) else p
    if name is None:
        return None
    if device is None and isinstance(p, Pretrained):
        device = course_lib.device_of(p.model)  # the helper goes where the model that names it is
    model = load_checkpoint(name, device, directory).model
    if not isinstance(model, cls):
        raise CheckpointError(f"checkpoint {name!r} holds a {type(model).__name__}, not a {cls.__name__}; pick a "
                              f"{cls.__name__} checkpoint")
    return model


def load_text_encoder(p="shapes-clip", device=None, directory=None):
    """The frozen text encoder (models.clip.TextEncoder) of a CLIP checkpoint, or of the one `p`'s JSON names."""
    from open_clip import CLIP  # open_clip is slow to import: only text models need it

    clip = load_model(p, CLIP, device, directory, key="text_encoder")
    return None if clip is None else _text_encoder_of(clip)


@functools.lru_cache(maxsize=4)
def _text_encoder_of(clip: nn.Module):
    from course_lib.models.clip import TextEncoder

    return TextEncoder(clip)


def load_vae(p="shapes64-vae", device=None, directory=None):
    """The VAE (eval mode) of a VAE checkpoint, or of the one a latent model's JSON names; None for pixel models."""
    return load_model(p, VAE, device, directory, key="vae")


def sample_shape(p: Pretrained) -> tuple[int, int, int]:
    """(C, H, W) of what a denoiser checkpoint's sampler produces: latents for a latent model, else images."""
    config = p.meta.get("config") or {}
    if p.meta.get("vae") is not None:
        return int(config["in_channels"]), int(config["image_size"]), int(config["image_size"])
    return image_shape(p)


def image_shape(p: Pretrained) -> tuple[int, int, int]:
    """(C, H, W) of the images a denoiser checkpoint makes: its training data size, else its config's image_size."""
    config = p.meta.get("config") or {}
    size = (p.meta.get("data") or {}).get("size") or config.get("image_size")
    if size is None:
        raise ValueError(f"checkpoint {p.meta.get('name')!r} records no image size (data.size or config.image_size)")
    return (3 if p.meta.get("vae") is not None else int(config.get("in_channels", 3))), int(size), int(size)
