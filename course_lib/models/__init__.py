"""The course's networks: eps_theta(x_t, t) denoisers (a U-Net for images, an MLP for 2-D points), the shapes
classifier behind course_lib.metrics, and a KL autoencoder (VAE) for latent diffusion."""
from __future__ import annotations

import dataclasses

import torch.nn as nn

from .classifier import ClassifierConfig, ShapesClassifier, shapes_classifier
from .mlp import MLPConfig, MLPDenoiser, mlp_2d
from .unet import UNet, UNetConfig, timestep_embedding, unet_latent_cond, unet_small, unet_small_cond, unet_tiny
from .vae import VAE, VAEConfig, vae_f8

# Model classes by `kind`, the name checkpoints store next to the config dict.
MODELS = {"unet": UNet, "mlp": MLPDenoiser, "classifier": ShapesClassifier, "vae": VAE}

# Preset factories by name, used by training recipes.
FACTORIES = {"unet_tiny": unet_tiny, "unet_small": unet_small, "unet_small_cond": unet_small_cond,
             "unet_latent_cond": unet_latent_cond, "mlp_2d": mlp_2d,
             "shapes_classifier": shapes_classifier, "vae_f8": vae_f8}


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a model from its kind and a JSON-able config dict (`dataclasses.asdict(model.config)`)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {sorted(MODELS)}")
    cls = MODELS[kind]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.config_class.__name__} fields {unknown}; valid fields: {sorted(fields)}")
    return cls(cls.config_class(**config))  # the config's __post_init__ turns JSON lists back into tuples


__all__ = ["MODELS", "FACTORIES", "build_model", "UNet", "UNetConfig", "MLPDenoiser", "MLPConfig",
           "timestep_embedding", "unet_tiny", "unet_small", "unet_small_cond", "unet_latent_cond", "mlp_2d",
           "ShapesClassifier", "ClassifierConfig", "shapes_classifier", "VAE", "VAEConfig", "vae_f8"]
