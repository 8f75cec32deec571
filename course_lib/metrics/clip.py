"""Measuring a CLIP: zero-shot labels and retrieval (Radford et al. 2021, sec. 3.1), plus the embeddings behind them.

`encode_images` / `encode_texts` give L2-normalised embeddings in the shared space; `similarity_matrix` their
cosine similarities. Zero-shot classification labels an image with the value whose prompt is closest; the
caption ensemble scores full training-style captions instead of short prompts. `retrieval_top1`: does a caption
find its own image?
"""
from __future__ import annotations

import functools
import itertools

import torch
import torch.nn as nn

from course_lib import device_of
from course_lib.data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, TEMPLATES, Attributes, ShapesDataset, \
    caption


def _tokenize(prompts) -> torch.Tensor:
    from course_lib.models.clip import tokenize  # open_clip is slow to import: only CLIP metrics need it

    return tokenize(prompts)

_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
# attribute -> (its values, value -> the prompt naming only that attribute)
ZERO_SHOT = {
    "shape": (SHAPES, lambda v: f"a {v}"),
    "color": (tuple(COLORS), lambda v: f"something {v}"),
    "size": (SIZES, lambda v: f"a {v} shape"),
    "position": (POSITIONS, lambda v: f"a shape {_WHERE[v]}"),
    "background": (BACKGROUNDS, lambda v: f"a shape on a {v} background"),
}


@torch.no_grad()
def encode_images(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings (N, embed_dim) of images (N, 3, H, W) in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (N, 3, H, W) in [-1, 1]; got {getattr(images, 'shape', images)}")
    device = device_of(model)
    return torch.cat([model.encode_image(chunk.to(device), normalize=True).float()
                      for chunk in images.split(batch_size)])  # (N, E)


@torch.no_grad()
def _encode_tokens(model: nn.Module, tokens: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    tokens = tokens.to(device_of(model))  # (B, L)
    return torch.cat([model.encode_text(chunk, normalize=True).float() for chunk in tokens.split(batch_size)])


def encode_texts(model: nn.Module, prompts) -> torch.Tensor:
    """L2-normalised text embeddings (B, embed_dim) of a str or list of str."""
    return _encode_tokens(model, _tokenize(prompts))


def zero_shot_prompts(attribute: str) -> tuple[tuple[str, ...], list[str]]:
    """(values, one short prompt per value) used to classify `attribute` zero-shot."""
    if attribute not in ZERO_SHOT:
        raise ValueError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(ZERO_SHOT)}")
    values, prompt = ZERO_SHOT[attribute]
    return values, [prompt(v) for v in values]


@functools.lru_cache(maxsize=1)
def _ensemble_scenes() -> tuple[list, torch.Tensor]:
    """Every scene (all 840 attribute combinations) as a training-style caption naming all its attributes.

    Only the templates that mention the background are used (cycled): a caption without it would score both
    backgrounds alike and blur that attribute's vote.
    """
    every_value = [values for values, _ in ZERO_SHOT.values()]
    scenes = [Attributes(**dict(zip(ZERO_SHOT, combo))) for combo in itertools.product(*every_value)]
    full = [i for i, template in enumerate(TEMPLATES) if "{background}" in template]
    return scenes, _tokenize([caption(a, full[i % len(full)]) for i, a in enumerate(scenes)])  # (S, L)


def _value_scores(model, images: torch.Tensor, attribute: str, ensemble: bool, scene_embeddings=None):
    """(values, scores (N, V)): cosine similarity to a short prompt, or p(value | image) from full captions.

    The ensemble (after Radford et al. 2021, sec. 3.1.4) scores every scene (all attribute combinations, each
    as a training-style caption), p(scene | image) = softmax(s · img · scene^T), and sums the probabilities of
    the scenes that show each value: the text encoder only reads the kind of sentence it was trained on.
    """
    values, prompts = zero_shot_prompts(attribute)
    if not ensemble:
        return values, images @ encode_texts(model, prompts).T  # (N, V)
    scenes, tokens = _ensemble_scenes()
    if scene_embeddings is None:
        scene_embeddings = _encode_tokens(model, tokens)  # (S, E)
    probs = (model.logit_scale.exp().float() * images @ scene_embeddings.T).softmax(dim=1)  # (N, S)
    value_of = torch.tensor([values.index(getattr(a, attribute)) for a in scenes], device=probs.device)  # (S,)
    return values, probs.new_zeros(len(probs), len(values)).index_add_(1, value_of, probs)  # (N, V)


def _best(values: tuple, scores: torch.Tensor) -> list[str]:
    return [values[i] for i in scores.argmax(dim=1).tolist()]


def zero_shot_predict(model: nn.Module, images: torch.Tensor, attribute: str, *,
                      ensemble: bool = False) -> list[str]:
    """Label each image with its best-scoring value (CLIP zero-shot classification, Radford et al. sec. 3.1)."""
    return _best(*_value_scores(model, encode_images(model, images), attribute, ensemble))


def zero_shot_accuracy(model: nn.Module, dataset: ShapesDataset, *, ensemble: bool = False) -> dict[str, float]:
    """Fraction of dataset images whose zero-shot label is right, per attribute."""
    images, attrs = encode_images(model, dataset.images()), dataset.attributes()
    scenes = _encode_tokens(model, _ensemble_scenes()[1]) if ensemble else None  # shared by all attributes
    accuracy = {}
    for name in ZERO_SHOT:
        labels = _best(*_value_scores(model, images, name, ensemble, scenes))
        accuracy[name] = sum(label == getattr(a, name) for label, a in zip(labels, attrs)) / len(attrs)
    return accuracy


def similarity_matrix(model: nn.Module, images: torch.Tensor, captions) -> torch.Tensor:
    """Cosine similarities (B_images, B_captions) on the CPU, e.g. for a heat map."""
    return (encode_images(model, images) @ encode_texts(model, captions).T).cpu()


def retrieval_top1(model: nn.Module, images: torch.Tensor, captions, attributes=None) -> float:
    """Text -> image top-1: fraction of captions whose own image is the most similar one of `images`.

    With `attributes` (one per image), retrieving another image with the same attributes also counts: the
    caption cannot tell such images apart.
    """
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) != len(images):
        raise ValueError(f"need one caption per image; got {len(captions)} captions for {len(images)} images")
    best = similarity_matrix(model, images, captions).argmax(dim=0)  # (B,): best image for each caption
    hits = [j == i or (attributes is not None and attributes[j] == attributes[i]) for i, j in enumerate(best.tolist())]
    return sum(hits) / len(hits)
