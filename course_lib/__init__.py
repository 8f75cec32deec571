"""course_lib: the workshop behind the notebooks of "Generate an image by erasing noise".

Four layers, one direction: data -> schedules -> models -> samplers -> widgets.
"""
import os

import torch

__version__ = "0.1.0"

_DEVICE_ENV = "COURSE_DEVICE"


def device() -> torch.device:
    """The one place a device is chosen: $COURSE_DEVICE if set, else cuda -> mps -> cpu."""
    name = os.environ.get(_DEVICE_ENV, "").strip()
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ValueError(f"{_DEVICE_ENV}={name!r} is not a device; use one of 'cpu', 'cuda', 'cuda:0', 'mps'") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{_DEVICE_ENV}={name!r} but CUDA is not available here; unset it or use 'cpu'")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"{_DEVICE_ENV}={name!r} but MPS is not available here; unset it or use 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
