"""Images as people see them: tensors in [-1, 1] -> uint8 arrays -> grids -> PNG bytes.

Pure display code, with no diffusion math, at the bottom of the library so that anything that writes a PNG
(the widgets, `generate`, the training previews) uses the same few functions.
"""
import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def read_image(source, size: tuple[int, int]) -> torch.Tensor:
    """A PNG/JPEG file (path) or its bytes as a (3, H, W) tensor in [-1, 1] at size (H, W), box-filtered: a PNG
    written k times larger comes back exactly. ValueError naming the source if it is not an image."""
    from PIL import UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
        picture = picture.convert("RGB").resize((size[1], size[0]), Image.BOX)
    except (OSError, UnidentifiedImageError) as e:
        what = "these bytes" if isinstance(source, (bytes, bytearray, memoryview)) else repr(str(source))
        raise ValueError(f"cannot read {what} as an image ({e})") from None
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)


def image_batch(image, shape: tuple[int, int, int], n: int, whose: str) -> torch.Tensor:
    """An img2img input as a float CPU batch (1 or n, C, H, W): `image` may be (C, H, W) or (1 or n, C, H, W) of
    `shape`; ValueError naming `whose` size it must have (e.g. "this model's size") otherwise."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or tuple(image.shape[-3:]) != tuple(shape) \
            or (image.dim() == 4 and image.shape[0] not in (1, n)):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor (3, H, W) or (1 or {n}, 3, H, W) in [-1, 1] of {whose} "
                         f"{tuple(shape)}, got {got}")
    return (image[None] if image.dim() == 3 else image).detach().float().cpu()  # (1 or n, C, H, W)


def to_uint8(images) -> np.ndarray:
    """Map a [-1, 1] float image (C, H, W) or batch (B, C, H, W) to uint8 HWC numpy (batch: (B, H, W, C))."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim not in (3, 4):
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float32).numpy()
    # Clamp first: samplers may overshoot [-1, 1] slightly, and uint8 wraps around otherwise.
    # (numpy, not torch: torch.round on CPU is oddly slow and this runs once per widget frame)
    x = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(x, -3, -1))  # (..., C, H, W) -> (..., H, W, C)


def grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile a batch (B, C, H, W) in [-1, 1] (or uint8 (B, H, W, C)) into one uint8 (H', W', C) image, nrow per row."""
    arr = images if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8(images)
    if arr.ndim == 3:
        arr = arr[None]  # (1, H, W, C): a single image is a grid of one
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    b, h, w, c = arr.shape
    ncol = min(nrow, b)
    nrows = -(-b // ncol)  # ceil division
    # padding only *between* tiles, so a grid of one is exactly the image
    out = np.full((nrows * (h + padding) - padding, ncol * (w + padding) - padding, c), pad_value, np.uint8)
    for i in range(b):
        r, col = divmod(i, ncol)
        y, x = r * (h + padding), col * (w + padding)
        out[y:y + h, x:x + w] = arr[i]
    return out


def png_bytes(array, scale: int = 1) -> bytes:
    """Encode a uint8 (H, W, C) array (or a [-1, 1] tensor) as PNG, upscaled with nearest so 32 px stays crisp."""
    if not (isinstance(array, np.ndarray) and array.dtype == np.uint8):
        array = to_uint8(array)
    if array.ndim != 3:
        raise ValueError(f"png_bytes needs one (H, W, C) image, got shape {array.shape}; use grid() for a batch")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if array.shape[-1] == 1:
        array = array[..., 0]  # (H, W): PIL wants 2-D for grayscale
    img = Image.fromarray(np.ascontiguousarray(array))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: noisy frames barely compress anyway
    return buf.getvalue()


def upscale(array: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of a uint8 (H, W, C) array by an integer factor (pixels stay square)."""
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return array.repeat(scale, axis=0).repeat(scale, axis=1)  # (H*s, W*s, C)


def label_rows(array: np.ndarray, labels, gutter: int = 110, font_size: int = 14) -> np.ndarray:
    """Add a white left gutter with one text label per equal-height row band (e.g. "x_t" / "predicted x0")."""
    h, w, c = array.shape
    img = Image.new("RGB", (w + gutter, h), "white")
    img.paste(Image.fromarray(array if c == 3 else array[..., :1].repeat(3, axis=2)), (gutter, 0))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    anchor = "lm" if isinstance(font, ImageFont.FreeTypeFont) else None  # bitmap fonts cannot anchor
    band = h / max(len(labels), 1)
    for i, text in enumerate(labels):
        draw.text((6, int(band * (i + 0.5))), text, fill="black", font=font, anchor=anchor)
    return np.asarray(img)
