"""course_lib: the workshop behind the notebooks of "Generate an image by erasing noise".

Layers, imports only downward (README.md draws the whole order; tests/test_layers.py enforces it):
data -> schedules -> models -> pretrained -> losses + training, samplers -> pipelines (generate, latent)
-> widgets -> measurement (metrics, recipes + train, evaluation, bench). This file only picks the device.
"""
import os
import platform

import torch

__version__ = "0.1.0"

_DEVICE_ENV = "COURSE_DEVICE"


def device(name=None) -> torch.device:
    """The one place a device is chosen: `name` if given, else $COURSE_DEVICE if set, else cuda -> mps -> cpu.

    A name this machine cannot use ("cuda" without CUDA, a typo) is a ValueError saying what to use instead.
    """
    if name is not None:
        return _usable(name, f"device {str(name)!r}", "use 'cpu'")
    name = os.environ.get(_DEVICE_ENV, "").strip()
    if name:
        return _usable(name, f"{_DEVICE_ENV}={name!r}", "unset it or use 'cpu'")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _usable(name, what: str, fix: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what} is not a device; use one of 'cpu', 'cuda', 'cuda:0', 'mps'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} but CUDA is not available here; {fix}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} but MPS is not available here; {fix}")
    return dev


def device_of(model) -> torch.device:
    """Where a model's weights live; `device()` for a callable without parameters."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return device()


def device_name(device) -> str:
    """A human-readable name of the hardware behind `device`, for the JSON a training run or a sweep writes."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
