"""Numbers from the shapes classifier: does a sample show what its prompt asked for, and do samples look like data?

The shapes classifier (`course_lib.models.ShapesClassifier`, checkpoint "shapes-classifier") turns the first
question into `prompt_accuracy` / `attribute_accuracy`, and the second into `frechet_distance` (FID's formula in
the classifier's feature space). `classifier_accuracy` is how well the classifier itself reads labelled renders.
`classifier` below is anything with `predict(images) -> list[Attributes]` and `features(images) -> (B, F)`:
normally the shipped classifier from `load_classifier()`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from course_lib import pretrained
from course_lib.data import VOCAB, Attributes, attribute_indices
from course_lib.models import ShapesClassifier

from .pixels import _check_rgb_batch

CLASSIFIER_NAME = "shapes-classifier"  # the shipped checkpoint
PROMPT_KEYS = ("shape", "color", "size", "position")  # what a prompt asks for (the background is optional)


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


def prompt_matches(images: torch.Tensor, attributes, classifier, *, keys=PROMPT_KEYS) -> list[bool]:
    """Per image: do its predicted attributes match the requested ones on *all* `keys` at once?"""
    _check_rgb_batch(images)
    keys = _check_keys(keys)
    targets = _targets(attributes, images.shape[0], keys)
    predicted = classifier.predict(images)
    return [all(getattr(p, k) == t[k] for k in keys) for p, t in zip(predicted, targets)]


def prompt_accuracy(images: torch.Tensor, attributes, classifier, *, keys=PROMPT_KEYS) -> float:
    """Fraction of images whose predicted attributes match the requested ones on *all* `keys` at once."""
    matches = prompt_matches(images, attributes, classifier, keys=keys)
    return sum(matches) / len(matches)


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


def frechet_distance_se(images_a: torch.Tensor, images_b: torch.Tensor, classifier, *, resamples: int = 20,
                        seed: int = 0) -> tuple[float, float]:
    """(Fréchet distance, its bootstrap standard error): the std of the distance over `resamples` redraws of
    images_a with replacement (images_b, the reference, held fixed). Differences far below the error are noise."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise ValueError(f"resamples must be an int >= 2 (e.g. 20), got {resamples!r}")
    fd = frechet_distance(images_a, images_b, classifier)
    features_a = classifier_features(images_a, classifier)
    mu_b, s_b = feature_stats(classifier_features(images_b, classifier))
    g = torch.Generator().manual_seed(seed)
    draws = [frechet_distance_from_stats(*feature_stats(features_a[torch.randint(0, len(features_a),
                                                                                   (len(features_a),), generator=g)]),
                                         mu_b, s_b) for _ in range(resamples)]
    return fd, float(torch.tensor(draws).std())


def classifier_accuracy(model: ShapesClassifier, images: torch.Tensor, attrs: list[Attributes],
                        batch_size: int = 256) -> dict[str, float]:
    """How well a classifier reads labelled images: accuracy per attribute, plus "all" (every attribute right)."""
    _check_rgb_batch(images)
    pred = model.predict_indices(images, batch_size)
    target = attribute_indices(attrs)
    correct = {key: pred[key] == target[key] for key in VOCAB}  # (B,) bool each
    acc = {key: c.float().mean().item() for key, c in correct.items()}
    acc["all"] = torch.stack(list(correct.values())).all(0).float().mean().item()
    return acc


def load_classifier(name: str = CLASSIFIER_NAME, device=None, directory=None) -> ShapesClassifier:
    """The shipped shapes classifier (eval mode), loaded once per device (`pretrained.load_model`)."""
    return pretrained.load_model(name, ShapesClassifier, device, directory)
