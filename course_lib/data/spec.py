"""DataSpec: which procedural data a training recipe draws (so a recipe needs no downloads), and drawing it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .shapes import HELD_OUT_PAIRS, ShapesDataset
from .toy2d import toy2d

DATASETS = ("shapes", "toy2d")


@dataclass
class DataSpec:
    """The training data of a recipe: same spec, same data, on every machine."""

    dataset: str  # "shapes" (ShapesDataset images, captions, attributes) or "toy2d" (2-D points)
    n: int  # number of training examples
    seed: int = 0  # data seed: same seed, same data
    size: int | None = None  # image size for "shapes"; None for points
    name: str | None = None  # toy2d dataset name ("moons", "swiss_roll", "8gaussians"); None for images
    hold_out: bool = False  # leave data.HELD_OUT_PAIRS out, so prompts naming them are unseen combinations

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")

    def shapes(self) -> ShapesDataset:
        """The captioned shapes dataset of this spec (images render lazily)."""
        if self.dataset != "shapes":
            raise ValueError(f"a {self.dataset!r} spec has no captioned shapes dataset")
        return ShapesDataset(size=self.size, n=self.n, seed=self.seed, exclude=HELD_OUT_PAIRS if self.hold_out else ())

    def load(self) -> torch.Tensor:
        """The training tensor: images (n, 3, size, size) in [-1, 1] or points (n, 2)."""
        if self.dataset == "shapes":
            return self.shapes().images()
        return toy2d(self.name, n=self.n, seed=self.seed)
