"""Noise schedules: how much signal survives at each of the T training timesteps (Ho et al. 2020).

Legend, code name -> paper symbol (DDPM, Ho et al. 2020):
    betas[t]           beta_t       variance added by one forward step q(x_t | x_{t-1})
    alphas[t]          alpha_t      = 1 - beta_t
    alphas_cumprod[t]  alpha_bar_t  = prod_{s<=t} alpha_s, the signal power left after t+1 steps
    x0, x_t, eps       x_0, x_t, epsilon
    snr(t)             SNR(t)       = alpha_bar_t / (1 - alpha_bar_t)  (Kingma et al. 2021)
    sigmas[t]          sigma_t      = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise level of the same x_t seen
                                      in "sigma space" x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps (Karras et al. 2022)

Timesteps are 0-based like diffusers: t = 0 is the first (least noisy) step, t = T - 1 the last.
Everything is computed exactly as diffusers' DDPMScheduler does, so a model trained here can be
sampled with diffusers and vice versa.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NoiseSchedule:
    """A discrete forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4)."""

    name: str  # which recipe made it: "linear", "cosine" or "scaled_linear"
    betas: torch.Tensor  # (T,) float32 CPU, beta_t
    alphas: torch.Tensor  # (T,) float32 CPU, alpha_t = 1 - beta_t
    alphas_cumprod: torch.Tensor  # (T,) float32 CPU, alpha_bar_t

    # ----- constructors -------------------------------------------------------------------
    @classmethod
    def from_betas(cls, name: str, betas: torch.Tensor) -> "NoiseSchedule":
        """Build alphas and alpha_bar from betas (DDPM sec. 2: alpha_bar_t = prod_s (1 - beta_s))."""
        betas = betas.to(torch.float32).cpu()
        alphas = 1.0 - betas
        return cls(name, betas, alphas, torch.cumprod(alphas, dim=0))

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020, sec. 4)."""
        _check_num_train_timesteps(num_train_timesteps)
        return cls.from_betas("linear", torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32))

    @classmethod
    def scaled_linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> "NoiseSchedule":
        """sqrt(beta) evenly spaced, then squared: the Stable Diffusion (latent diffusion) schedule."""
        _check_num_train_timesteps(num_train_timesteps)
        sqrt_betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
        return cls.from_betas("scaled_linear", sqrt_betas**2)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, max_beta: float = 0.999) -> "NoiseSchedule":
        """alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2) (Nichol & Dhariwal 2021, eq. 17; diffusers "squaredcos_cap_v2")."""
        _check_num_train_timesteps(num_train_timesteps)

        def alpha_bar(s: float) -> float:  # s in [0, 1] is continuous time
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        # beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), capped so the last steps do not destroy everything at once
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
        return cls.from_betas("cosine", torch.tensor(betas, dtype=torch.float32))

    @classmethod
    def from_name(cls, name: str, num_train_timesteps: int = 1000) -> "NoiseSchedule":
        """The schedule called `name` (one of SCHEDULES) with its default betas."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
        return SCHEDULES[name](num_train_timesteps)

    # ----- queries ------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        """T, the number of discrete training timesteps."""
        return self.betas.shape[0]

    @property
    def sigmas(self) -> torch.Tensor:
        """(T,) float32 noise levels sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (diffusers' Euler `sigmas`)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    def sigma_at(self, t) -> torch.Tensor:
        """sigma at (possibly fractional) timesteps t, linearly interpolated between integer t as diffusers does.

        t: a number or a 1-D sequence in [0, T-1]; returns float32 of t's shape (a 0-dim tensor for a number).
        """
        t = np.asarray(t, dtype=np.float64)
        T = self.num_train_timesteps
        if t.ndim > 1 or t.size == 0 or not np.all(np.isfinite(t)) or t.min() < 0 or t.max() > T - 1:
            raise ValueError(f"t must be a number or a 1-D sequence in [0, {T - 1}], got {t!r}")
        sigmas = np.interp(t, np.arange(T), self.sigmas.numpy())
        return torch.from_numpy(np.asarray(sigmas)).to(torch.float32)

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, eq. 1); same shape as t."""
        t = self._check_t(t)
        alpha_bar = self.alphas_cumprod[t.cpu()].to(t.device)
        return alpha_bar / (1 - alpha_bar)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in one shot with the given eps (Ho et al. 2020, eq. 4); returns x_t."""
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim == 0:
            raise ValueError("x0 must be a floating-point tensor with a batch dimension, e.g. (B, C, H, W)")
        if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must have the same shape as x0 {tuple(x0.shape)}, got {got}")
        t = self._check_t(t)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x0.shape[0]):
            raise ValueError(f"t must be an int or a (B,) tensor with B = x0.shape[0] = {x0.shape[0]}, got shape {tuple(t.shape)}")
        # Gather on CPU (where the schedule lives), then move only B numbers to x0's device and dtype.
        alpha_bar = self.alphas_cumprod[t.cpu()].to(device=x0.device, dtype=x0.dtype)  # (B,) or ()
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1): broadcast over C, H, W
        eps = noise
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps  # DDPM eq. 4
        return x_t

    # ----- helpers ------------------------------------------------------------------------
    def _check_t(self, t: int | torch.Tensor) -> torch.Tensor:
        """t as an integer tensor, or a ValueError naming the valid range [0, T-1]."""
        T = self.num_train_timesteps
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise ValueError(f"t must be an int or an integer tensor in [0, {T - 1}], got {type(t).__name__}")
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps in [0, {T - 1}], got dtype {t.dtype}; use t.long()")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > T - 1):
            raise ValueError(f"t must be in [0, {T - 1}] (num_train_timesteps={T}), got values in [{int(t.min())}, {int(t.max())}]")
        return t.long()

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, num_train_timesteps={self.num_train_timesteps})"


# ----- conversions between what a network predicts and where the sample is (one place, used by every sampler) -----
def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """Invert DDPM eq. 4 for the clean image: x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (eq. 15)."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def to_sigma_space(x_t: torch.Tensor, sigma) -> torch.Tensor:
    """x_t (variance-preserving scale) as x0 + sigma eps: multiply by 1 / sqrt(alpha_bar) = sqrt(1 + sigma^2)."""
    return x_t * (sigma**2 + 1) ** 0.5


def from_sigma_space(x: torch.Tensor, sigma) -> torch.Tensor:
    """x0 + sigma eps back to the scale the network was trained on: divide by sqrt(1 + sigma^2)."""
    return x / ((sigma**2 + 1) ** 0.5)


def vp_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) with x_t = alpha_t x0 + sigma_t eps at noise level sigma: alpha_t = sqrt(alpha_bar)
    = 1 / sqrt(1 + sigma^2), sigma_t = sigma alpha_t = sqrt(1 - alpha_bar) (DPM-Solver's notation)."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def consistency_scalings(t, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) of a consistency model at timestep t, as diffusers' LCMScheduler applies them.

    f(x_t, t) = c_skip(t) x_t + c_out(t) x0_pred: c_skip(0) = 1 and c_out(0) = 0, so f is the identity on clean
    data (Song et al. 2023, eq. 7; Luo et al. 2023 use sigma_data = 0.5 and scale t by 10 to sharpen the switch).
    """
    scaled_t = t * timestep_scaling
    c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
    c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _check_num_train_timesteps(num_train_timesteps: int) -> None:
    """ValueError unless num_train_timesteps is a positive int."""
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int (e.g. 1000), got {num_train_timesteps!r}")


# name -> constructor; iterate it for the valid names.
SCHEDULES = {
    "linear": NoiseSchedule.linear,
    "cosine": NoiseSchedule.cosine,
    "scaled_linear": NoiseSchedule.scaled_linear,
}
