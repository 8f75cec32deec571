"""One real photograph (Grace Hopper, shipped with matplotlib) to show noising on a natural image."""
from __future__ import annotations

import functools

import numpy as np
import torch
from matplotlib import cbook
from PIL import Image

MAX_PHOTO_SIZE = 1024


@functools.lru_cache(maxsize=1)
def _square_photo() -> Image.Image:
    # Read once; center-crop to a square so resizing never squashes the face.
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
        img.load()
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def photo(size: int = 64) -> torch.Tensor:
    """Matplotlib's sample photo, center-cropped and resized: float32 (3, size, size) in [-1, 1]."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= MAX_PHOTO_SIZE:
        raise ValueError(f"size must be an int in 8..{MAX_PHOTO_SIZE}, e.g. 32, 64 or 128 (got {size!r})")
    # LANCZOS low-pass filters while shrinking, so the small photo is not aliased.
    img = _square_photo().resize((int(size), int(size)), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, 3) in [0, 1]
    return pixels.permute(2, 0, 1).contiguous() * 2.0 - 1.0  # (3, H, W) in [-1, 1]
