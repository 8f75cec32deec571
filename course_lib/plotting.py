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


def draw_dit_block(ax) -> None:
    """Chapter 6's picture of one adaLN-Zero block: c makes shift, scale and gate for each of the two halves."""
    boxes = [(0.5, 0.06, "tokens x (T × d)"), (0.5, 0.22, "LayerNorm → ×(1+scale₁) + shift₁"),
             (0.5, 0.36, "self-attention"), (0.5, 0.50, "×gate₁, add to x"),
             (0.5, 0.64, "LayerNorm → ×(1+scale₂) + shift₂"), (0.5, 0.78, "MLP"),
             (0.5, 0.92, "×gate₂, add to x")]
    for x, y, text in boxes:
        ax.text(x, y, text, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="#eef3fb" if "gate" not in text else "#fdf0e6"))
    for (_, y0, _), (_, y1, _) in zip(boxes, boxes[1:]):
        ax.annotate("", xy=(0.5, y1 - 0.045), xytext=(0.5, y0 + 0.045), arrowprops=dict(arrowstyle="->"))
    ax.text(-0.02, 0.57, "c = embed(t)\n + embed(caption)\n→ linear → six\n(B × d) vectors,\nzero at the start",
            fontsize=8, va="center", bbox=dict(boxstyle="round", facecolor="#f4f4f4"))
    for y, x_tip in ((0.22, 0.27), (0.50, 0.38), (0.64, 0.27), (0.92, 0.38)):  # to the two norms and two gates
        ax.annotate("", xy=(x_tip, y), xytext=(0.2, 0.57), arrowprops=dict(arrowstyle="->", color="grey"))
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
