"""NoisingExplorer: scrub t and watch one fixed noise sample dissolve an image (forward process, chapter 1).

The widget only displays: every frame is `NoiseSchedule.add_noise(x0, eps, t)` from the library,
rendered once to PNG and cached, so scrubbing back and forth is instant.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from ..images import grid, png_bytes, to_uint8
from ..schedules import SCHEDULES, NoiseSchedule


def _as_batch(images) -> torch.Tensor:
    """Validate images: a (C, H, W) tensor or (N, C, H, W) batch in [-1, 1] -> float32 CPU (N, C, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a float tensor in [-1, 1] of shape (3, H, W) or (N, 3, H, W), "
                         f"e.g. course_lib.data.photo(64); got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]  # (1, C, H, W)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"images must have shape (3, H, W) or (N, 3, H, W) (1 channel also works); "
                         f"got {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.5 or hi > 1.5:  # a [0, 255] image would be silently saturated otherwise
        raise ValueError(f"images must be scaled to [-1, 1] (x * 2 - 1 for [0, 1] data); got values in [{lo:.3g}, {hi:.3g}]")
    return images.detach().to("cpu", torch.float32)


def _as_schedules(schedules) -> dict[str, NoiseSchedule]:
    """Names (from SCHEDULES) or NoiseSchedule objects -> ordered {name: schedule}; ValueError otherwise."""
    if isinstance(schedules, (str, NoiseSchedule)):
        schedules = (schedules,)
    out: dict[str, NoiseSchedule] = {}
    for s in schedules:
        if isinstance(s, NoiseSchedule):
            out[s.name] = s
        elif isinstance(s, str) and s in SCHEDULES:
            out[s] = NoiseSchedule.from_name(s)
        else:
            raise ValueError(f"unknown noise schedule {s!r}; valid names: {', '.join(SCHEDULES)} (or NoiseSchedule objects)")
    if not out:
        raise ValueError(f"schedules must name at least one of: {', '.join(SCHEDULES)}")
    if len({s.num_train_timesteps for s in out.values()}) != 1:
        raise ValueError("all schedules must have the same num_train_timesteps so one t slider fits them all")
    return out


class NoisingExplorer(widgets.VBox):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4) for a slider t and a schedule menu."""

    def __init__(self, images, *, schedules=("linear", "cosine", "scaled_linear"), seed: int = 0, scale: int = 4):
        self.x0 = _as_batch(images)  # (N, C, H, W)
        self.schedules = _as_schedules(schedules)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be an integer >= 1 (pixel upscale factor), got {scale!r}")
        self.scale = scale
        # One fixed eps for every t and schedule: scrubbing shows the *same* noise fading in.
        gen = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(self.x0.shape, generator=gen)  # (N, C, H, W)
        self._frames: dict[tuple[str, int], bytes] = {}  # (schedule name, t) -> PNG
        self.cache_hits = 0
        self.cache_misses = 0

        T = next(iter(self.schedules.values())).num_train_timesteps
        names = list(self.schedules)
        self.t_slider = widgets.IntSlider(value=0, min=0, max=T - 1, step=1, description="t",
                                          continuous_update=True, layout=widgets.Layout(width="420px"))
        self.schedule_dropdown = widgets.Dropdown(options=names, value=names[0], description="schedule")
        # Play runs in the browser; jslink moves the slider there, and the slider's sync asks us for frames.
        self.play = widgets.Play(value=0, min=0, max=T - 1, step=10, interval=100, description="play")
        self.play_link = widgets.jslink((self.play, "value"), (self.t_slider, "value"))
        self.image = widgets.Image(format="png", value=self.frame(names[0], 0))
        self.caption = widgets.Label(value=self._caption_text(names[0], 0))

        self.t_slider.observe(self._on_change, names="value")
        self.schedule_dropdown.observe(self._on_change, names="value")
        controls = widgets.HBox([self.play, self.t_slider, self.schedule_dropdown])
        super().__init__([controls, self.image, self.caption])
        self.layout.align_items = "flex-start"  # show the PNG at its own pixel size, not stretched to the cell
        self.add_class("course-noising-explorer")

    # ----- frames -------------------------------------------------------------------------
    def frame(self, schedule: str, t: int) -> bytes:
        """PNG bytes of x_t for (schedule, t); computed by the schedule once, then served from the cache."""
        key = (schedule, int(t))
        cached = self._frames.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        if schedule not in self.schedules:
            raise ValueError(f"unknown schedule {schedule!r}; this explorer has: {', '.join(self.schedules)}")
        self.cache_misses += 1
        x_t = self.schedules[schedule].add_noise(self.x0, self.noise, int(t))  # (N, C, H, W), may leave [-1, 1]
        png = png_bytes(grid(to_uint8(x_t), nrow=len(x_t)), scale=self.scale)  # N images side by side
        self._frames[key] = png
        return png

    def prerender(self, stride: int = 10) -> int:
        """Render every stride-th t (and the last) for every schedule ahead of time; returns frames rendered."""
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        T = self.t_slider.max + 1
        before = len(self._frames)
        for name in self.schedules:
            for t in sorted(set(range(0, T, stride)) | {T - 1}):
                self.frame(name, t)
        return len(self._frames) - before

    # ----- callbacks ----------------------------------------------------------------------
    def _caption_text(self, schedule: str, t: int) -> str:
        """'t = 500 · alpha_bar_t = 0.0786 · SNR = 0.0853', values read from the schedule."""
        s = self.schedules[schedule]
        alpha_bar = float(s.alphas_cumprod[t])
        snr = float(s.snr(t))
        return f"t = {t} · alpha_bar_t = {alpha_bar:.4f} · SNR = {snr:.4g}"

    def _on_change(self, change=None) -> None:
        """Show the frame for the current (schedule, t)."""
        name, t = self.schedule_dropdown.value, int(self.t_slider.value)
        self.image.value = self.frame(name, t)
        self.caption.value = self._caption_text(name, t)
