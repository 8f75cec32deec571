"""Matplotlib helpers for the notebooks: show image tensors in [-1, 1] without boilerplate."""
from __future__ import annotations

import matplotlib.pyplot as plt

from .images import to_uint8


def show_images(images, titles=None, ncols=None, scale=1.6, suptitle=None) -> None:
    """Show a batch (B, C, H, W) or a list of (C, H, W) images in a grid.

    Returns nothing: a returned figure, as the last line of a notebook cell, would be drawn a second time.
    """
    images = list(images)
    n = len(images)
    ncols = ncols or min(n, 8)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.3 if titles else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = to_uint8(images[i])  # (H, W, C)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    plt.show()
