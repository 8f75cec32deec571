"""Where training batches come from: anything with `sample(batch_size, generator) -> batch` and `to(device)`.

TensorBatches    random rows (with replacement) of tensors that share their first dimension: the images (and
                 caption tokens) of the denoisers, the VAE and the classifier.
CaptionBatches   image-caption pairs for CLIP, one per *distinct* attribute combination, so that no caption in a
                 batch also describes another image of the batch (no false negatives for the contrastive loss).

The training loop draws every batch with a seeded generator on the training device; `batch_size` is the global
batch (under torchrun each rank then takes its slice, see course_lib.distributed.shard).
"""
from __future__ import annotations

import torch

from course_lib.data import TEMPLATES, ShapesDataset, caption


class TensorBatches:
    """Batches of rows drawn uniformly with replacement from tensors (N, ...) that line up row by row."""

    def __init__(self, *tensors: torch.Tensor):
        if not tensors or any(not isinstance(t, torch.Tensor) or t.ndim < 1 for t in tensors):
            raise ValueError("training data must be one or more tensors (N, ...), e.g. ShapesDataset(...).images(); "
                             f"got {', '.join(type(t).__name__ for t in tensors) or 'nothing'}")
        lengths = {len(t) for t in tensors}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"training tensors must be non-empty and have one row per example; got lengths "
                             f"{[len(t) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def to(self, device) -> "TensorBatches":
        """The same data on `device` (moved once, before training)."""
        return TensorBatches(*(t.to(device) for t in self.tensors))

    def sample(self, batch_size: int, generator: torch.Generator):
        """A batch of rows: one tensor (B, ...), or a tuple of them when there are several tensors."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator, device=generator.device)
        idx = idx.to(self.tensors[0].device)  # (B,)
        rows = tuple(t[idx] for t in self.tensors)
        return rows[0] if len(rows) == 1 else rows


class CaptionBatches:
    """(images (B, 3, H, W), tokens (B, L)) of B distinct attribute combinations, each with a random template.

    Images are grouped by attribute combination and every combination's caption is tokenized once per template;
    a batch picks B combinations, a random image of each and a random template for each, as
    `caption(attrs, rng=rng)` does.
    """

    def __init__(self, dataset: ShapesDataset):
        from course_lib.models.clip import tokenize  # open_clip is slow to import: only CLIP training needs it

        attrs = dataset.attributes()
        combos = sorted(set(attrs), key=lambda a: tuple(a.as_dict().values()))
        index = {a: i for i, a in enumerate(combos)}
        combo_id = torch.tensor([index[a] for a in attrs])  # (N,)
        self.order = torch.argsort(combo_id, stable=True)  # image indices grouped by combination
        self.counts = torch.bincount(combo_id, minlength=len(combos))  # images per combination
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # where each group starts in `order`
        captions = [caption(a, t) for a in combos for t in range(len(TEMPLATES))]
        self.tokens = tokenize(captions).view(len(combos), len(TEMPLATES), -1)  # (C, T, L)
        self.images = dataset.images()  # (N, 3, H, W) in [-1, 1]

    def __len__(self) -> int:
        """The number of distinct combinations: the largest batch this source can draw."""
        return len(self.counts)

    def to(self, device) -> "CaptionBatches":
        """The same data on `device` (moved once, before training)."""
        moved = object.__new__(CaptionBatches)
        for name in ("order", "counts", "starts", "tokens", "images"):
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, H, W), tokens (B, L)); the generator lives on the data's device."""
        if batch_size > len(self):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(self)} distinct attribute "
                             f"combinations in the data; use batch_size <= {len(self)} (or more images)")
        device = self.images.device
        c = torch.randperm(len(self.counts), generator=generator, device=device)[:batch_size]  # (B,) combinations
        u = torch.rand(batch_size, generator=generator, device=device)
        idx = self.order[self.starts[c] + (u * self.counts[c]).long()]  # a random image of each combination
        t = torch.randint(0, len(TEMPLATES), (batch_size,), generator=generator, device=device)  # its template
        return self.images[idx], self.tokens[c, t]
