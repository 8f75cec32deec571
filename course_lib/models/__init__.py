"""The course's networks, and nothing else: nn.Modules and their size presets.

eps_theta(x_t, t) denoisers (a U-Net or a Diffusion Transformer for images, an MLP for 2-D points), the
shapes classifier behind course_lib.metrics, a KL autoencoder (VAE) for latent diffusion, and the tiny open_clip
CLIP whose text tower conditions the text-to-image models. Shared layers (timestep embedding, attention,
resampling) are in `layers`. Losses live in course_lib.losses, the training loop in course_lib.training.
"""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from .ar import ARConfig, ARTransformer, pixel_ar, token_ar
from .classifier import ClassifierConfig, ShapesClassifier, shapes_classifier
from .dit import DiT, DiTConfig, dit
from .layers import timestep_embedding
from .mlp import MLPConfig, MLPDenoiser, mlp_2d
from .unet import UNet, UNetConfig, unet_latent_cond, unet_small, unet_small_cond, unet_tiny
from .vae import VAE, VAEConfig, vae_f8
from .vq import VQConfig, VQModel, vq_f4

# Model classes by `kind`, the name checkpoints store next to the config dict. ("open_clip", the CLIP, is built
# by build_model too; it is not listed here because importing open_clip takes seconds and few users need it.)
MODELS = {"unet": UNet, "dit": DiT, "mlp": MLPDenoiser, "classifier": ShapesClassifier, "vae": VAE,
          "ar": ARTransformer, "vq": VQModel}
KINDS = (*MODELS, "open_clip")


def shapes_clip(**overrides) -> nn.Module:
    """The `shapes-clip` model (open_clip's CLIP at the size in configs/shapes-clip.json); overrides replace keys."""
    from .clip import clip_config, create_clip  # open_clip is slow to import: only when a CLIP is wanted

    return create_clip({**clip_config(), **overrides})


# Preset factories by name, used by training recipes.
FACTORIES = {"unet_tiny": unet_tiny, "unet_small": unet_small, "unet_small_cond": unet_small_cond,
             "unet_latent_cond": unet_latent_cond, "mlp_2d": mlp_2d, "shapes_classifier": shapes_classifier,
             "vae_f8": vae_f8, "shapes_clip": shapes_clip, "dit": dit,
             "pixel_ar": pixel_ar, "token_ar": token_ar, "vq_f4": vq_f4}


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a model from its kind and a JSON-able config dict (`dataclasses.asdict(model.config)`)."""
    if kind == "open_clip":
        from .clip import clip_from_config  # see MODELS

        return clip_from_config(config)
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {sorted(KINDS)}")
    cls = MODELS[kind]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.config_class.__name__} fields {unknown}; valid fields: {sorted(fields)}")
    return cls(cls.config_class(**config))  # the config's __post_init__ turns JSON lists back into tuples


__all__ = ["MODELS", "KINDS", "FACTORIES", "build_model", "UNet", "UNetConfig", "DiT", "DiTConfig", "dit",
           "MLPDenoiser", "MLPConfig",
           "timestep_embedding", "unet_tiny", "unet_small", "unet_small_cond", "unet_latent_cond", "mlp_2d",
           "ShapesClassifier", "ClassifierConfig", "shapes_classifier", "VAE", "VAEConfig", "vae_f8", "shapes_clip",
           "ARConfig", "ARTransformer", "pixel_ar", "token_ar", "VQConfig", "VQModel", "vq_f4"]
