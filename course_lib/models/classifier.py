"""A small CNN that reads the five attributes of a shapes image, to score generated images automatically.

Diffusion samples are judged by what they show: `course_lib.metrics` asks this classifier whether a sample
has the prompt's shape / color / size / position, and uses its penultimate features for a Fréchet distance.
It must judge *any* image, so it is trained on every attribute combination (held-out pairs included).
The features are the last map's max over space ("what") next to a thin copy of its 4x4 cells ("where":
position needs to know where things are). GroupNorm, not BatchNorm, so train and eval mode compute the same
thing and no prediction depends on the rest of the batch. Its loss (with the augmentation that makes clean
renders look more like samples) is `course_lib.losses.ClassifierLoss`; its accuracy, `metrics.classifier_accuracy`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.data import VOCAB, Attributes  # one head per VOCAB key; logit i <-> VOCAB[key][i]


@dataclass
class ClassifierConfig:
    """Shape of a ShapesClassifier; `asdict(config)` is what checkpoints store."""

    image_size: int = 32  # input resolution; other sizes are resized to this (area-averaged down, bilinear up)
    width: int = 16  # channels at full resolution; the 1/2 stage uses 2x this, the 1/4 and 1/8 stages 4x
    groups: int = 8  # GroupNorm groups in every conv block

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 16, e.g. 32 (got {self.image_size})")
        if self.width < 2 or self.groups < 1 or self.width % self.groups:
            raise ValueError(f"width must be a multiple of groups ({self.groups}) and >= 2, e.g. 16 "
                             f"(got width={self.width})")


def _block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    """conv3x3 -> GroupNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True))


class ShapesClassifier(nn.Module):
    """CNN with one linear head per attribute: images (B, 3, H, W) in [-1, 1] -> dict attribute -> logits."""

    kind = "classifier"  # key in course_lib.models.MODELS, stored in checkpoints
    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else ClassifierConfig()
        w, g = cfg.width, cfg.groups
        # Max-pooling, not strided convs, to downsample: a small shape's strongest edge/corner responses
        # survive (with strided convs the shape head learned several times slower in our runs).
        self.body = nn.Sequential(
            _block(3, w, g), nn.MaxPool2d(2),  # full resolution: colors and edges of small shapes
            _block(w, 2 * w, g), nn.MaxPool2d(2),  # 1/2
            _block(2 * w, 4 * w, g), nn.MaxPool2d(2),  # 1/4
            _block(4 * w, 4 * w, g),  # 1/8: a 4x4 grid of cells at 32 px
        )
        # Two summaries of the last map: the max over space ("what": the same wherever the object is) and a
        # thin per-cell map ("where": pooling alone would throw the position away). The heads read them
        # directly: an extra hidden layer made the shape head learn several times slower in our runs.
        self.where = nn.Sequential(nn.Conv2d(4 * w, w // 2, 1), nn.ReLU(inplace=True), nn.Flatten())
        self.feature_dim = 4 * w + w // 2 * (cfg.image_size // 8) ** 2  # what + where
        self.heads = nn.ModuleDict({key: nn.Linear(self.feature_dim, len(values)) for key, values in VOCAB.items()})

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or not len(images):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a batch (B>=1, 3, H, W) in [-1, 1]; got {shape} "
                             f"(use images[None] for a single image)")
        p = next(self.parameters())
        x = images.to(p.device, p.dtype)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):  # other sizes: box-average down (like render's supersampling) / up
            down = x.shape[-2] >= size and x.shape[-1] >= size
            x = F.interpolate(x, size=(size, size), mode="area" if down else "bilinear",
                              align_corners=None if down else False)
        return x

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim): what the heads read; with gradients (the training path)."""
        h = self.body(self._prepare(images))  # (B, 4w, H/8, W/8)
        return torch.cat([h.amax(dim=(2, 3)), self.where(h)], dim=1)  # (B, 4w + w/2 * H/8 * W/8)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: dict key -> (B, len(VOCAB[key]))."""
        h = self.features_of(images)
        return {key: head(h) for key, head in self.heads.items()}

    @torch.no_grad()
    def _batched(self, fn, images: torch.Tensor, batch_size: int):
        was_training = self.training
        self.eval()
        try:
            return [fn(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        finally:
            self.train(was_training)

    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate features (B, feature_dim) on the CPU, float32, in eval mode without gradients."""
        self._prepare(images[:1] if isinstance(images, torch.Tensor) else images)  # validate once, up front
        return torch.cat(self._batched(lambda x: self.features_of(x).float().cpu(), images, batch_size))

    def predict_indices(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Arg-max class index per attribute: dict key -> LongTensor (B,) on the CPU (index into VOCAB[key])."""
        self._prepare(images[:1] if isinstance(images, torch.Tensor) else images)
        chunks = self._batched(lambda x: {k: v.argmax(1).cpu() for k, v in self(x).items()}, images, batch_size)
        return {key: torch.cat([c[key] for c in chunks]) for key in VOCAB}

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> list[Attributes]:
        """The most likely Attributes of every image."""
        idx = self.predict_indices(images, batch_size)
        return [Attributes(**{key: VOCAB[key][int(idx[key][i])] for key in VOCAB}) for i in range(images.shape[0])]


def shapes_classifier(**overrides) -> ShapesClassifier:
    """The `shapes-classifier` model: ~65k parameters; ~1 ms per 32x32 image on one CPU thread."""
    return ShapesClassifier(ClassifierConfig(**overrides))
