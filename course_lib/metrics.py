"""Quality numbers for generated images, measured instead of eyeballed.

`high_frequency_energy` answers the chapter-2 question "is this sample grainy?": leftover sampling noise is
white, so it puts power at the highest spatial frequencies, where clean renders (flat colours, smooth edges)
have little. Comparing a batch's high-frequency power with that of real renders gives a ratio that is ~1 for
clean samples, >1 for grainy ones and <1 for blurry ones.

The shapes classifier (`course_lib.models.classifier`, checkpoint "shapes-classifier") turns "does the sample
show what the prompt asked for?" into `prompt_accuracy` / `attribute_accuracy`, and "do samples look like the
data?" into `frechet_distance` (FID's formula in the classifier's feature space). `saturation` measures what
too-high guidance scales do to colours.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from course_lib import pretrained
from course_lib.data import Attributes
from course_lib.models.classifier import VOCAB, ClassifierTrainConfig, ShapesClassifier, shapes_classifier, \
    train_classifier


def _check_batch(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a batch of images (B, C, H, W), got {shape}")


def high_frequency_energy(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Mean power per pixel at spatial frequencies above `cutoff` cycles/pixel (Nyquist is 0.5); shape (B,)."""
    _check_batch(images, "images")
    if not 0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    x = images.detach().float().cpu().clamp(-1, 1)
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # the mean colour is not "detail"
    power = torch.fft.fft2(x).abs().pow(2) / (x.shape[-2] * x.shape[-1])  # (B, C, H, W), Parseval-normalised
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]  # (H, 1) cycles per pixel
    fx = torch.fft.fftfreq(x.shape[-1])[None, :]  # (1, W)
    high = (fy.pow(2) + fx.pow(2)).sqrt() > cutoff  # (H, W) mask of the high band
    return (power * high).sum(dim=(-3, -2, -1)) / (x.shape[-3] * x.shape[-2] * x.shape[-1])


def graininess(samples: torch.Tensor, reference: torch.Tensor, cutoff: float = 0.25) -> float:
    """High-frequency energy of `samples` relative to `reference` renders: ~1 clean, >1 grainy, <1 blurry.

    Medians, not means: one badly failed sample can hold more high-frequency power than ten good ones, and
    the question is what a typical sample looks like.
    """
    _check_batch(reference, "reference")
    return float(high_frequency_energy(samples, cutoff).median() / high_frequency_energy(reference, cutoff).median())


# ---- metrics built on the shapes classifier -------------------------------------------------------------
# `classifier` below is anything with `predict(images) -> list[Attributes]` and `features(images) -> (B, F)`:
# normally a trained `ShapesClassifier` from `load_classifier()`.

CLASSIFIER_NAME = "shapes-classifier"  # the shipped checkpoint
PROMPT_KEYS = ("shape", "color", "size", "position")  # what a prompt asks for (the background is optional)
CLIP_LEVEL = 0.98  # |pixel| at or beyond this counts as clipped to an end of [-1, 1]


def _check_rgb_batch(images, name: str = "images") -> None:
    _check_batch(images, name)
    if images.shape[1] != 3 or images.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of RGB images (B>=1, 3, H, W), got {tuple(images.shape)}")


def _check_keys(keys) -> tuple[str, ...]:
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    unknown = [k for k in keys if k not in VOCAB]
    if not keys or unknown:
        raise ValueError(f"keys must be a non-empty subset of {', '.join(VOCAB)}; got {keys!r}")
    return keys


def _target(obj, keys: tuple[str, ...]) -> dict:
    """One image's requested attributes as a dict over `keys`, validated against the vocabulary."""
    if isinstance(obj, Attributes):
        return {k: getattr(obj, k) for k in keys}
    if not isinstance(obj, Mapping):
        raise ValueError(f"attributes must be an Attributes, a dict, or a list with one of those per image "
                         f"(one object per image); got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(VOCAB))
    missing = [k for k in keys if k not in obj]
    if unknown or missing:
        raise ValueError(f"attribute dict has unknown keys {unknown} / lacks requested keys {missing}; "
                         f"valid keys: {', '.join(VOCAB)} (or pass keys=... to check fewer attributes)")
    for k in keys:
        if obj[k] not in VOCAB[k]:
            raise ValueError(f"unknown {k} {obj[k]!r}; valid {k}s: {', '.join(VOCAB[k])}")
    return {k: obj[k] for k in keys}


def _targets(attributes, n: int, keys: tuple[str, ...]) -> list[dict]:
    if isinstance(attributes, (Attributes, Mapping)):
        return [_target(attributes, keys)] * n  # one prompt for the whole batch
    if not isinstance(attributes, (list, tuple)):
        raise ValueError(f"attributes must be an Attributes, a dict, or a list of them; "
                         f"got {type(attributes).__name__}")
    if len(attributes) != n:
        raise ValueError(f"got {len(attributes)} attributes for {n} images; pass one per image, or a single "
                         f"Attributes / dict for all of them")
    return [_target(a, keys) for a in attributes]


def attribute_accuracy(images: torch.Tensor, attributes, classifier, *, keys=PROMPT_KEYS) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the requested one, per key in `keys`."""
    _check_rgb_batch(images)
    keys = _check_keys(keys)
    targets = _targets(attributes, images.shape[0], keys)
    predicted = classifier.predict(images)
    return {k: sum(getattr(p, k) == t[k] for p, t in zip(predicted, targets)) / len(targets) for k in keys}


def prompt_accuracy(images: torch.Tensor, attributes, classifier, *, keys=PROMPT_KEYS) -> float:
    """Fraction of images whose predicted attributes match the requested ones on *all* `keys` at once."""
    _check_rgb_batch(images)
    keys = _check_keys(keys)
    targets = _targets(attributes, images.shape[0], keys)
    predicted = classifier.predict(images)
    return sum(all(getattr(p, k) == t[k] for k in keys) for p, t in zip(predicted, targets)) / len(targets)


def classifier_features(images: torch.Tensor, classifier) -> torch.Tensor:
    """The classifier's penultimate features of every image: (B, F) float32 on the CPU."""
    _check_rgb_batch(images)
    return classifier.features(images).detach().float().cpu()


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix by eigendecomposition (round-off negative eigenvalues -> 0)."""
    eigvals, eigvecs = torch.linalg.eigh(s)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T  # V diag(sqrt(lambda)) V^T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; the FID formula).

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), in float64. Tr (S1 S2)^{1/2} is computed as the sum of
    singular values (nuclear norm) of S1^{1/2} S2^{1/2}, since (S1^{1/2} S2^{1/2})(...)^T = S1^{1/2} S2 S1^{1/2}
    has the eigenvalues of S1 S2: no non-symmetric matrix square root, and exactly 0 for identical inputs.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).cpu() for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64).cpu() for s in (sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need mu1, mu2 of shape (F,) and sigma1, sigma2 of shape (F, F) with the same F; got "
                         f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # exact symmetry for eigh
    cross = torch.linalg.matrix_norm(_sqrtm_psd(s1) @ _sqrtm_psd(s2), ord="nuc")  # Tr (S1 S2)^{1/2}
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features (N, F) with N >= 2 to estimate a covariance; got {tuple(features.shape)}")
    f = features.to(torch.float64)
    return f.mean(0), torch.cov(f.T)  # torch.cov wants variables in rows: (F, N)


def frechet_distance(images_a: torch.Tensor, images_b: torch.Tensor, classifier) -> float:
    """Fréchet distance between Gaussians fitted to classifier features of two image sets (lower = closer).

    Fréchet distance in our classifier's feature space — not Inception FID, numbers are not comparable to
    published FIDs. Use a few hundred images per set or more: with few images the covariances are noisy and
    the distance is biased upwards (compare sets of equal size only).
    """
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        _check_rgb_batch(images, name)
        if images.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 images to fit a Gaussian (a few hundred are better)")
    mu_a, s_a = feature_stats(classifier_features(images_a, classifier))
    mu_b, s_b = feature_stats(classifier_features(images_b, classifier))
    return frechet_distance_from_stats(mu_a, s_a, mu_b, s_b)


def saturation(images: torch.Tensor) -> dict[str, float]:
    """How washed-out or oversaturated images are (high guidance scales push colours to the ends of [-1, 1]).

    clipped_fraction: share of pixel values with |x| >= CLIP_LEVEL (0.98). mean_chroma: mean over pixels of
    max(R, G, B) - min(R, G, B) in [0, 1] units (0 = gray, 1 = a pure primary/secondary colour).
    """
    _check_rgb_batch(images)
    x = images.detach().float().cpu()
    clipped = (x.abs() >= CLIP_LEVEL).float().mean()
    rgb = (x.clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1]
    chroma = rgb.amax(dim=1) - rgb.amin(dim=1)  # (B, H, W)
    return {"clipped_fraction": float(clipped), "mean_chroma": float(chroma.mean())}


def save_classifier(model, *, name: str = CLASSIFIER_NAME, meta: dict | None = None, directory=None):
    """Save a ShapesClassifier with `course_lib.pretrained.save` (no noise schedule); returns the weights path."""
    return pretrained.save(name, model, schedule_name=None, meta=meta, directory=directory)


def load_classifier(name: str = CLASSIFIER_NAME, device=None, directory=None):
    """Load a ShapesClassifier checkpoint (eval mode) with `course_lib.pretrained.load`."""
    loaded = pretrained.load(name, device=device, directory=directory)
    if not isinstance(loaded.model, ShapesClassifier):
        raise ValueError(f"checkpoint {name!r} holds a {type(loaded.model).__name__}, not a ShapesClassifier")
    return loaded.model


def train_classifier_recipe(out=None, *, device=None, command=None, progress=True, **overrides):
    """Recreate the shipped shapes-classifier (`python -m course_lib.train shapes-classifier`); returns its path.

    overrides: ClassifierTrainConfig fields (None = keep the default), e.g. steps=..., batch_size=...
    """
    config = dataclasses.replace(ClassifierTrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    torch.manual_seed(config.seed)  # the initial weights
    model = shapes_classifier()
    result = train_classifier(model, config, device=device, progress=progress)
    tail = result["history"][-100:]  # one step's loss is noisy: keep the mean of the last 100
    meta = {"data": {"dataset": "shapes", "size": config.image_size, "n": config.n_images, "seed": config.seed},
            "steps": config.steps, "final_loss": sum(tail) / len(tail),
            "metrics": {"accuracy": {k: round(v, 4) for k, v in result["accuracy"].items()},
                        "eval": f"{config.eval_images} fresh renders, seed {config.eval_seed}",
                        "train_images_per_s": round(result["images_per_s"], 1)},
            "command": command or f"python -m course_lib.train {CLASSIFIER_NAME}",
            "train_config": dataclasses.asdict(config)}
    path = save_classifier(model, meta=meta, directory=out)
    print(f"saved {path} (+ .json); accuracy on fresh renders {meta['metrics']['accuracy']}")
    return path
