"""A tiny CLIP (Radford et al. 2021) for the shapes world, built with open_clip, and the text encoder it provides.

The architecture is open_clip's own `CLIP` (a ViT image tower + a causal text transformer), registered under the
name "shapes-clip" from `configs/shapes-clip.json`; the tokenizer is open_clip's BPE tokenizer, whose vocabulary
ships inside the package, so nothing is ever downloaded. Images go into the image tower exactly as the dataset
renders them, (B, 3, 32, 32) in [-1, 1]: the model is trained from scratch on that range, so no mean/std
normalisation transform is needed. The text-to-image U-Net cross-attends to `TextEncoder`'s per-token features.

Its contrastive loss is `course_lib.losses.ContrastiveLoss`; zero-shot labels and retrieval are measured in
`course_lib.metrics`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import open_clip
import torch
import torch.nn as nn

from course_lib import device_of

MODEL_NAME = "shapes-clip"  # open_clip derives a config's model name from its file name
CONFIG_PATH = Path(__file__).parents[1] / "configs" / f"{MODEL_NAME}.json"
KIND = "open_clip"  # the `kind` stored in checkpoint JSON files


#################################################################################
#                      The model and its tokenizer                              #
#################################################################################

@contextlib.contextmanager
def _quiet_open_clip():
    """Silence open_clip's expected INFO/WARNING logs ("No pretrained weights loaded ...").

    open_clip logs through the module-level `logging.info/warning`, which install a stderr handler on the root
    logger when it has none; a temporary NullHandler avoids that side effect on the caller's logging setup.
    """
    root, previous, null = logging.getLogger(), logging.root.manager.disable, logging.NullHandler()
    root.addHandler(null)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(null)


def register() -> None:
    """Make open_clip know the "shapes-clip" architecture (idempotent)."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def clip_config() -> dict:
    """A copy of the registered open_clip model config (embed_dim, vision_cfg, text_cfg)."""
    register()
    return open_clip.get_model_config(MODEL_NAME)


def create_clip(config: dict | None = None) -> open_clip.CLIP:
    """A freshly initialised shapes-clip (random weights, on the CPU); `config` replaces the registered one."""
    register()
    config = config if config is not None else clip_config()
    with _quiet_open_clip():
        # pretrained=None: random init, no download; keys of `config` override the registered config.
        model = open_clip.create_model(MODEL_NAME, pretrained=None, **config)
    # What course_lib.pretrained stores next to the weights, as for the course's own models (kind + config).
    model.kind, model.config = KIND, {"model_name": MODEL_NAME, "model_cfg": config}
    return model


def clip_from_config(config: dict) -> open_clip.CLIP:
    """Rebuild a CLIP from the config a checkpoint stored: {"model_name": "shapes-clip", "model_cfg": {...}}."""
    if not isinstance(config, dict) or config.get("model_name") != MODEL_NAME or "model_cfg" not in config:
        raise ValueError(f"a CLIP config must be {{'model_name': {MODEL_NAME!r}, 'model_cfg': {{...}}}}; "
                         f"got {config!r:.120}")
    return create_clip(config["model_cfg"])


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """open_clip's BPE tokenizer for shapes-clip (context_length 32), loaded once."""
    register()
    with _quiet_open_clip():
        return open_clip.get_tokenizer(MODEL_NAME)


def tokenize(prompts) -> torch.Tensor:
    """Prompt(s) -> LongTensor (B, context_length): SOT, BPE tokens, EOT, zero padding; too long -> ValueError."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list/tuple of str; got {type(prompts).__name__}")
    elif not prompts:
        raise ValueError("prompts must be a str or a non-empty list/tuple of str; got an empty list")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be a str or a list/tuple of str; got an element of type "
                            f"{type(p).__name__}: {p!r}")
    tokenizer = get_tokenizer()
    limit = tokenizer.context_length - 2  # room for the start- and end-of-text tokens
    for p in prompts:
        n = len(tokenizer.encode(p))
        if n > limit:  # open_clip would silently cut the prompt; we refuse instead
            raise ValueError(f"prompt {p!r} has {n} tokens; the maximum is {limit} tokens "
                             f"(context_length {tokenizer.context_length} minus start and end): shorten it")
    return tokenizer(list(prompts))  # (B, L)


def encode_text_tokens(model: open_clip.CLIP, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token text features (B, L, D) after ln_final: CLIP.encode_text without pooling and projection.

    Also returns mask (B, L), True up to and including the end-of-text token (the tokens worth attending to).
    """
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(f"model must be an open_clip.CLIP (e.g. create_clip()); got {type(model).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2 \
            or tokens.shape[1] != model.context_length:
        raise ValueError(f"tokens must be a LongTensor (B, {model.context_length}) from tokenize(); "
                         f"got {getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, L, D)
    x = x + model.positional_embedding.to(cast_dtype)  # (B, L, D) + (L, D)
    x = model.transformer(x, attn_mask=model.attn_mask)  # causal mask: token i only sees tokens 0..i
    x = model.ln_final(x)  # (B, L, D)
    eot = tokens.argmax(dim=-1)  # (B,): EOT has the largest id, as open_clip's "argmax" pooling assumes
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= eot[:, None]  # (B, L)
    return x, mask


class TextEncoder(nn.Module):
    """A frozen CLIP text tower: prompts -> (tokens (B, L, D), mask (B, L)) for U-Net cross-attention.

    The empty prompt "" is valid and means "unconditional": its tokens are just SOT, EOT.
    """

    def __init__(self, model: open_clip.CLIP):
        super().__init__()
        self.clip = model.eval().requires_grad_(False)
        self.width = model.transformer.width  # D, the U-Net's cond_dim
        self.context_length = model.context_length  # L

    def train(self, mode: bool = True) -> "TextEncoder":
        """Stays in eval mode whatever the caller's mode: the encoder is frozen."""
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def forward(self, prompts, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a str or list of str on the CLIP's device (in chunks, so a whole dataset's captions fit)."""
        tokens = tokenize(prompts).to(device_of(self.clip))  # (B, L)
        features, masks = zip(*(encode_text_tokens(self.clip, chunk) for chunk in tokens.split(batch_size)))
        return torch.cat(features), torch.cat(masks)  # (B, L, D), (B, L)
