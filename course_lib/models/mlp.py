"""A small MLP noise predictor eps_theta(x_t, t) for 2-D toy data (points, not images)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import TimestepEmbedder, broadcast_timesteps


@dataclass
class MLPConfig:
    """Shape of an MLPDenoiser; `asdict(config)` is what checkpoints store."""

    dim: int = 2  # dimension of a data point x0 (2 for the toy2d datasets)
    hidden: int = 128  # width of every hidden layer
    depth: int = 3  # number of residual hidden layers
    time_embed_dim: int = 32  # size of the sinusoidal timestep features


class MLPDenoiser(nn.Module):
    """eps-prediction MLP for points (the 2-D warm-up of Ho et al. 2020): residual SiLU layers + time embedding."""

    kind = "mlp"  # key in course_lib.models.MODELS, stored in checkpoints
    config_class = MLPConfig

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = cfg = config
        self.time_embed = TimestepEmbedder(cfg.time_embed_dim, cfg.hidden)  # the U-Net's: sinusoid -> 2-layer MLP
        self.inp = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(nn.Linear(cfg.hidden, cfg.hidden) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x_t: torch.Tensor, t, cond=None, cond_mask=None) -> torch.Tensor:
        """Predict eps for a batch of points x_t (B, dim) at timesteps t (int, scalar or (B,))."""
        if x_t.ndim != 2 or x_t.shape[1] != self.config.dim:
            raise ValueError(f"x_t must have shape (B, {self.config.dim}); got {tuple(x_t.shape)}")
        if cond is not None or cond_mask is not None:
            raise ValueError("MLPDenoiser is unconditional: it takes no cond / cond_mask")
        t = broadcast_timesteps(t, x_t.shape[0], x_t.device)
        temb = self.time_embed(t)  # (B, hidden)
        h = self.inp(x_t) + temb  # (B, hidden)
        for layer in self.blocks:
            h = h + layer(F.silu(h))  # residual: keeps a deep-ish MLP easy to optimise
        return self.out(F.silu(h))  # (B, dim)


def mlp_2d(**overrides) -> MLPDenoiser:
    """The `toy2d-mlp` model: ~0.07M parameters, trains in seconds on a CPU."""
    return MLPDenoiser(MLPConfig(**overrides))
