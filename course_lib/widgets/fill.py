"""FillPlayer: watch an autoregressive model write an image one token at a time, then scrub the run.

Each frame is a FillFrame that `course_lib.generate.generate` hands its callback (a scan line of pixels, or one
VQ code): the widget pushes it to the browser as it arrives and keeps the run per setting, so going back is
instant. Put it next to a DenoisingPlayer to see raster order against coarse-to-fine. No model math here.
"""
from __future__ import annotations

import time

import ipywidgets as widgets
import torch

from ..generate import DEFAULT_GUIDANCE, generate
from ..images import grid, label_rows, png_bytes, to_uint8, upscale
from ..tokens import FillFrame
from .player import MAX_GUIDANCE_SCALE, Trajectory, _check_int, _sampling


class FillPlayer(widgets.VBox):
    """Live view of autoregressive sampling (shapes32-ar: 1024 pixels; shapes32-ar-tokens: 64 codes)."""

    def __init__(self, model="shapes32-ar", *, prompt: str = "a large red circle", n: int = 4, seed: int = 0,
                 guidance_scale: float = DEFAULT_GUIDANCE["autoregressive"], temperature: float = 1.0,
                 scale: int = 3, autorun: bool = True, device=None, directory=None):
        # model: an autoregressive checkpoint name or a loaded Pretrained; guidance_scale: CFG on the logits
        _check_int("n", n, 1, 16)
        _check_int("seed", seed, 0, 2**63 - 1)
        _check_int("scale", scale, 1, 16)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str (\"\" is the unconditional prompt), got {type(prompt).__name__}")
        self.model, self.n, self.scale, self.device, self.directory = model, n, scale, device, directory
        self._runs: dict[tuple, Trajectory] = {}
        self.trajectory: Trajectory | None = None
        self._running = False
        self.prompt_box = widgets.Text(value=prompt, description="prompt", continuous_update=False,
                                       layout=widgets.Layout(width="420px"))
        self.guidance_slider = widgets.FloatSlider(value=guidance_scale, min=0.0, max=MAX_GUIDANCE_SCALE, step=0.5,
                                                   description="guidance_scale", continuous_update=False,
                                                   style={"description_width": "initial"})
        self.temperature_slider = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.1,
                                                      description="temperature", continuous_update=False)
        self.seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="180px"))
        self.frame_slider = widgets.IntSlider(value=0, min=0, max=0, description="frame")
        self.play = widgets.Play(value=0, min=0, max=0, step=1, interval=60, description="play")
        widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        self.image = widgets.Image(format="png", value=b"")
        self.status = widgets.Label(value="")
        for w in (self.prompt_box, self.guidance_slider, self.temperature_slider, self.seed_box):
            w.observe(self._on_settings, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        super().__init__([widgets.HBox([self.prompt_box, self.guidance_slider]),
                          widgets.HBox([self.temperature_slider, self.seed_box]), self.image,
                          widgets.HBox([self.play, self.frame_slider, self.status])])
        self.layout.align_items = "flex-start"
        self.add_class("course-fill-player")
        if autorun:
            self.run()

    def cache_key(self) -> tuple:
        return (self.prompt_box.value, float(self.guidance_slider.value), float(self.temperature_slider.value),
                int(self.seed_box.value))

    @property
    def frames(self) -> list[bytes]:
        return [] if self.trajectory is None else self.trajectory.frames

    def render(self, frame: FillFrame) -> bytes:
        """One frame: the n images as written so far (grey = not yet written)."""
        tiles = grid(to_uint8(frame.images), nrow=self.n)
        return png_bytes(label_rows(upscale(tiles, self.scale), [f"written {frame.step}/{frame.calls}"]))

    def run(self) -> torch.Tensor:
        """Sample for the current settings (or replay the kept run); returns the images (n, 3, H, W)."""
        key = self.cache_key()
        if key not in self._runs:
            self._runs[key] = self._sample()
        self.trajectory = self._runs[key]
        self._running = True
        try:
            for w in (self.frame_slider, self.play):
                w.max = max(len(self.trajectory.frames) - 1, 0)
            self.frame_slider.value = self.frame_slider.max
        finally:
            self._running = False
        self._on_frame()
        return self.trajectory.final

    def _sample(self) -> Trajectory:
        traj, start = Trajectory(), time.perf_counter()

        def on_frame(frame: FillFrame) -> None:
            traj.frames.append(self.render(frame))
            traj.captions.append(f"model call {frame.step}/{frame.calls} · {time.perf_counter() - start:.2f} s")
            self.image.value, self.status.value = traj.frames[-1], traj.captions[-1]  # live

        with _sampling(self):
            traj.final = generate(self.prompt_box.value, model=self.model, n=self.n, seed=int(self.seed_box.value),
                                  guidance_scale=float(self.guidance_slider.value),
                                  temperature=float(self.temperature_slider.value), device=self.device,
                                  directory=self.directory, callback=on_frame).images
        return traj

    def _on_settings(self, change=None) -> None:
        try:
            self.run()
        except (TypeError, ValueError) as e:  # a prompt typo is shown, not raised inside a widget callback
            self.status.value = f"error: {e}"

    def _on_frame(self, change=None) -> None:
        if self._running or self.trajectory is None or not self.trajectory.frames:
            return
        i = min(int(self.frame_slider.value), len(self.trajectory.frames) - 1)
        self.image.value, self.status.value = self.trajectory.frames[i], self.trajectory.captions[i]
