"""A small CNN that reads the five attributes of a shapes image, to score generated images automatically.

Diffusion samples are judged by what they show: `course_lib.metrics` asks this classifier whether a sample
has the prompt's shape / color / size / position, and uses its penultimate features for a Fréchet distance.
It must judge *any* image, so it is trained on every attribute combination (held-out pairs included).
The features are the last map's max over space ("what") next to a thin copy of its 4x4 cells ("where":
position needs to know where things are). GroupNorm, not BatchNorm, so train and eval mode compute the same
thing and no prediction depends on the rest of the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import course_lib
from course_lib.data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Attributes, ShapesDataset

# The classifier's heads, one per attribute, in Attributes' field order; logit i <-> VOCAB[key][i].
VOCAB = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS,
         "background": BACKGROUNDS}


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


def attribute_targets(attrs: list[Attributes]) -> dict[str, torch.Tensor]:
    """Class indices per attribute for a list of Attributes: dict key -> LongTensor (B,)."""
    return {key: torch.tensor([values.index(getattr(a, key)) for a in attrs]) for key, values in VOCAB.items()}


# ---- training ----------------------------------------------------------------------------------------

@dataclass
class ClassifierTrainConfig:
    """Hyper-parameters of `train_classifier` (data are rendered fresh from ShapesDataset)."""

    steps: int = 1500  # optimizer steps (every head is at ~100% on fresh renders after ~750)
    batch_size: int = 64  # images per step, drawn with replacement from the rendered training set
    lr: float = 3e-3  # peak AdamW learning rate (linear warm-up, then cosine decay to 0)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    warmup: int = 50  # steps of linear warm-up
    lr_schedule: str = "cosine"  # after warm-up (course_lib.training.learning_rate)
    seed: int = 0  # seeds the training data (ShapesDataset seed), batch order and augmentation
    n_images: int = 20000  # training renders, every attribute combination allowed (no held-out pairs)
    image_size: int = 32  # render size of the training images
    noise_std: float = 0.1  # augmentation: add N(0, s^2) noise, s ~ U(0, noise_std) per image (0 = off)
    blur_prob: float = 0.5  # augmentation: share of images softened by a 3x3 binomial blur (0 = off)
    eval_images: int = 1000  # fresh renders for the accuracy reported at the end (0 = skip)
    eval_seed: int = 999  # ShapesDataset seed of those renders (must differ from seed: unseen images)
    log_every: int = 50  # progress-bar update period, in steps

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.n_images, self.log_every) < 1 or self.warmup < 0:
            raise ValueError("steps, batch_size, n_images and log_every must be >= 1 and warmup >= 0")
        if self.lr <= 0 or self.noise_std < 0 or self.eval_images < 0 or not 0 <= self.blur_prob <= 1:
            raise ValueError("lr must be > 0; noise_std and eval_images >= 0; blur_prob in [0, 1]")
        if self.eval_images and self.eval_seed == self.seed:
            raise ValueError(f"eval_seed must differ from seed ({self.seed}): accuracy is measured on unseen renders")


def blur3x3(images: torch.Tensor) -> torch.Tensor:
    """Soften images (B, C, H, W) with the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 (edges replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (k[:, None] * k[None, :] / 16).expand(images.shape[1], 1, 3, 3)  # (C, 1, 3, 3): one per channel
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


def augment(x: torch.Tensor, config: ClassifierTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Make clean renders look a bit more like diffusion samples: some blurred, all with a little noise."""
    if config.blur_prob > 0:
        soft = torch.rand(len(x), generator=gen) < config.blur_prob  # (B,) which images to blur
        x = torch.where(soft[:, None, None, None], blur3x3(x), x)
    if config.noise_std > 0:
        sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * config.noise_std  # a different level per image
        x = x + sigma * torch.randn(x.shape, generator=gen)
    return x


def classification_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy summed over the attribute heads (each head is its own softmax)."""
    return sum(F.cross_entropy(logits[key], targets[key]) for key in VOCAB)


def evaluate(model: ShapesClassifier, images: torch.Tensor, attrs: list[Attributes],
             batch_size: int = 256) -> dict[str, float]:
    """Accuracy per attribute plus "all" (every attribute right) on labelled images."""
    pred = model.predict_indices(images, batch_size)
    target = attribute_targets(attrs)
    correct = {key: pred[key] == target[key] for key in VOCAB}  # (B,) bool each
    acc = {key: c.float().mean().item() for key, c in correct.items()}
    acc["all"] = torch.stack(list(correct.values())).all(0).float().mean().item()
    return acc


def train_classifier(model: ShapesClassifier, config: ClassifierTrainConfig | None = None, *, device=None,
                     progress: bool = True) -> dict:
    """Train on fresh ShapesDataset renders (AdamW, summed cross-entropy); returns history and accuracy."""
    from course_lib.training import learning_rate  # not at import time: training -> pretrained -> models

    config = config if config is not None else ClassifierTrainConfig()
    device = torch.device(device) if device is not None else course_lib.device()
    ds = ShapesDataset(size=config.image_size, n=config.n_images, seed=config.seed)
    images = ds.images()  # (N, 3, H, W) on the CPU; batches are moved to the device
    targets = attribute_targets(ds.attributes())
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history, start = [], time.perf_counter()
    bar = tqdm(total=config.steps, disable=not progress, desc="classifier")
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config)
        idx = torch.randint(len(images), (config.batch_size,), generator=gen)
        x = augment(images[idx], config, gen)  # (B, 3, H, W)
        loss = classification_loss(model(x.to(device)), {k: v[idx].to(device) for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            bar.set_postfix(loss=f"{np.mean(history[-config.log_every:]):.4f}")
            bar.update((step + 1) - bar.n)
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = {}
    if config.eval_images:
        test = ShapesDataset(size=config.image_size, n=config.eval_images, seed=config.eval_seed)
        accuracy = evaluate(model, test.images(), test.attributes())
    return {"history": history, "accuracy": accuracy, "steps": config.steps, "seconds": seconds,
            "images_per_s": config.steps * config.batch_size / seconds}
