"""The files `python -m course_lib.generate` writes: a PNG grid, a GIF of the sampling (one frame per step, or per
scan line / code of an autoregressive model), numbered PNGs for many images."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from course_lib.images import grid, label_rows, png_bytes, upscale
from course_lib.samplers import StepRecord
from course_lib.tokens import FillFrame


def save_png(images: torch.Tensor, path, scale: int = 4) -> Path:
    """The images (n, C, H, W) in [-1, 1] side by side, nearest-upscaled by `scale`, as a PNG file."""
    path = Path(path)
    path.write_bytes(png_bytes(grid(images, nrow=len(images)), scale=scale))
    return path


def save_gif(records: list[StepRecord], path, scale: int = 4, frame_ms: int = 150, decode=None) -> Path:
    """One GIF frame per sampler step: the samples x_t on top, the predicted x0 below; the last frame lingers.

    decode: latents -> images for the records of a latent model (`Generation.decode`)."""
    from PIL import Image

    frames = []
    for r in records:
        if isinstance(r, FillFrame):  # an autoregressive model: one row, the image as written so far
            label = f"token {r.step}/{r.calls}"
            frames.append(Image.fromarray(label_rows(upscale(grid(r.images, nrow=len(r.images)), scale), [label])))
            continue
        x_t, x0 = (r.x_t, r.x0) if decode is None else (decode(r.x_t), decode(r.x0))
        tiles = grid(torch.cat([x_t[:, :3], x0[:, :3]]), nrow=len(r.x_t))  # (2 rows, n columns) of images
        # the step number in the label also keeps Pillow from merging two look-alike frames into one
        labels = [f"x_t {r.step + 1}/{len(records)}", "predicted x0"]
        frames.append(Image.fromarray(label_rows(upscale(tiles, scale), labels)))
    durations = [frame_ms] * (len(frames) - 1) + [2000]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def save_numbered_pngs(batches, directory, n: int, scale: int = 4, progress: bool = True) -> int:
    """Each image of each batch (Generations) as directory/<k>.png, k its index in the seed's sequence (zero-padded
    to sort), with a progress bar over the n images expected; returns how many were written."""
    directory, written, digits = Path(directory), 0, None
    with tqdm(total=n, unit="image", disable=not progress) as bar:
        for batch in batches:
            digits = digits or max(6, len(str(batch.first + n - 1)))  # one width for the whole run: names sort
            for i, image in enumerate(batch.images):
                (directory / f"{batch.first + i:0{digits}d}.png").write_bytes(png_bytes(image, scale=scale))
            written += len(batch.images)
            bar.update(len(batch.images))
            del batch  # free this batch (and its step records) before the next one is sampled: one batch at a time
    return written
