"""Toy 2D point clouds for the first diffusion experiments (every point is a 2-vector, easy to plot).

Each set is scaled to roughly unit standard deviation, the same scale as the Gaussian noise a
diffusion model adds, so one noise schedule works for all of them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

TOY2D = ("moons", "swiss_roll", "8gaussians")


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    # Two interleaving half circles (as in scikit-learn's make_moons).
    t = rng.uniform(0.0, math.pi, n)
    upper = rng.integers(0, 2, n).astype(bool)  # which moon each point belongs to
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + rng.normal(0.0, 0.05, (n, 2))  # (n, 2)
    # Mean (0.5, 0.25) and std 0.71 measured on 2M points; fixed numbers keep every n on one scale.
    return (pts - np.array([0.5, 0.25])) / 0.71


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
    # An Archimedean spiral, 1.5 turns: radius grows with the angle t.
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.normal(0.0, 0.5, (n, 2))  # (n, 2)
    return (pts - np.array([2.0, 0.2])) / 6.8  # mean and std measured on 2M points


def _eight_gaussians(rng: np.random.Generator, n: int, std: float = 0.1) -> np.ndarray:
    # 8 small blobs on a circle. Per coordinate the variance is radius^2 / 2 + std^2, so this radius
    # gives exactly unit variance.
    radius = math.sqrt(2.0 * (1.0 - std ** 2))
    angle = rng.integers(0, 8, n) * (2.0 * math.pi / 8)
    centers = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (n, 2)
    return centers + rng.normal(0.0, std, (n, 2))


_MAKERS = {"moons": _moons, "swiss_roll": _swiss_roll, "8gaussians": _eight_gaussians}


def toy2d(name: str, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """n points of a toy 2D distribution as a float32 (n, 2) tensor, deterministic per seed."""
    if name not in _MAKERS:
        raise ValueError(f"unknown toy2d dataset {name!r}; valid names: {', '.join(TOY2D)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (got {n!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, e.g. 0 (got {seed!r})")
    pts = _MAKERS[name](np.random.default_rng(int(seed)), int(n))
    return torch.from_numpy(pts).float()
