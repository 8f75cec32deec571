"""DenoisingPlayer: watch a sampler turn noise into images, one step at a time, then scrub the trajectory.

The animation *is* the computation: every StepRecord the sampler hands its `callback` becomes a PNG
frame pushed to the browser at once. Finished trajectories are cached per `cache_key()`, so going
back to an earlier setting (or scrubbing the frame slider) is instant. No diffusion math lives here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch

from .. import device as default_device
from ..samplers import SAMPLERS, StepRecord, get_sampler, make_timesteps
from .display import grid, label_rows, png_bytes, to_uint8, upscale

MAX_STEPS = 100  # the steps slider's upper end


@dataclass
class Trajectory:
    """One finished sampling run as the widget shows it."""

    frames: list[bytes] = field(default_factory=list)  # one PNG per StepRecord: x_t row over predicted-x0 row
    captions: list[str] = field(default_factory=list)  # status text per frame, "step 7/20 · t=649 · 0.41 s"
    final: torch.Tensor | None = None  # the sampler's return value (B, C, H, W), before `decode`


class DenoisingPlayer(widgets.VBox):
    """Live view of a sampler (DDPM, Ho et al. 2020 / DDIM, Song et al. 2021) with a cached, scrubbable trajectory."""

    def __init__(self, model, schedule, *, n: int = 4, image_size: int = 32, channels: int = 3, steps: int = 20,
                 sampler: str = "ddim", seed: int = 0, decode=None, device=None, eps_model=None, scale: int = 3,
                 autorun: bool = True):
        # model(x_t, t) -> eps, or pass eps_model (e.g. classifier-free guidance wrapped around the model);
        # n samples of (channels, image_size, image_size); decode(latents) -> images in [-1, 1] for display;
        # scale: integer pixel upscale of the PNG frames; autorun: sample once right away so there is a picture.
        _check_int("n", n, 1, 64)
        _check_int("image_size", image_size, 1, 4096)
        _check_int("channels", channels, 1, 64)
        _check_int("steps", steps, 1, MAX_STEPS)
        _check_int("scale", scale, 1, 16)
        _check_int("seed", seed, 0, 2**63 - 1)
        get_sampler(sampler)  # ValueError naming the valid samplers
        if eps_model is None and model is None:
            raise ValueError("pass a model (called as model(x_t, t)) or an eps_model(x_t, t) callable")
        self.model, self.schedule, self.decode = model, schedule, decode
        self.n, self.image_size, self.channels, self.scale = n, image_size, channels, scale
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.eps_model = eps_model if eps_model is not None else (lambda x, t: self.model(x, t))
        self._trajectories: dict[tuple, Trajectory] = {}  # cache_key() -> finished run
        self.trajectory: Trajectory | None = None  # the one on screen
        self.last_images: torch.Tensor | None = None
        self._running = False

        self.steps_slider = widgets.IntSlider(value=steps, min=1, max=MAX_STEPS, description="steps",
                                              continuous_update=False)
        self.sampler_dropdown = widgets.Dropdown(options=list(SAMPLERS), value=sampler, description="sampler")
        self.seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="180px"))
        self.frame_slider = widgets.IntSlider(value=0, min=0, max=max(steps - 1, 0), description="frame",
                                              continuous_update=True)
        self.play = widgets.Play(value=0, min=0, max=max(steps - 1, 0), step=1, interval=150, description="play")
        self.play_link = widgets.jslink((self.play, "value"), (self.frame_slider, "value"))  # animates in the browser
        self.image = widgets.Image(format="png", value=b"")
        self.status = widgets.Label(value="")

        for w in (self.steps_slider, self.sampler_dropdown, self.seed_box):
            w.observe(self._on_settings, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        settings = widgets.HBox([self.steps_slider, self.sampler_dropdown, self.seed_box])
        scrub = widgets.HBox([self.play, self.frame_slider, self.status])
        super().__init__([settings, self.image, scrub])
        self.layout.align_items = "flex-start"  # show the PNG at its own pixel size, not stretched to the cell
        self.add_class("course-denoising-player")
        if autorun:
            self.run()

    # ----- public -------------------------------------------------------------------------
    def cache_key(self) -> tuple:
        """What identifies a trajectory; subclasses append e.g. a prompt or guidance_scale."""
        return (int(self.steps_slider.value), self.sampler_dropdown.value, int(self.seed_box.value))

    def run(self) -> torch.Tensor:
        """Sample for the current settings (or replay the cached run); returns the final images (B, C, H, W)."""
        key = self.cache_key()
        traj = self._trajectories.get(key)
        if traj is None:
            traj = self._sample()
            self._trajectories[key] = traj
        self._show_trajectory(traj)
        return traj.final

    @property
    def frames(self) -> list[bytes]:
        """PNG frames of the trajectory on screen (one per sampler step)."""
        return [] if self.trajectory is None else self.trajectory.frames

    def noise(self) -> tuple[torch.Tensor, torch.Generator]:
        """x_T for the current seed, drawn on CPU (same numbers on every device) then moved to the device,
        and the CPU generator after that draw, which the sampler goes on using (like a diffusers pipeline)."""
        gen = torch.Generator().manual_seed(int(self.seed_box.value))
        x = torch.randn((self.n, self.channels, self.image_size, self.image_size), generator=gen)  # (B, C, H, W)
        return x.to(self.device, _model_dtype(self.model)), gen

    def render(self, record: StepRecord) -> bytes:
        """One frame: the n current samples x_t on top, the model's predicted x0 below."""
        rows = [self._displayable(record.x_t), self._displayable(record.x0)]
        tiles = grid(to_uint8(torch.cat(rows)), nrow=self.n)  # (2 rows, n columns) of images
        return png_bytes(label_rows(upscale(tiles, self.scale), ["x_t", "predicted x0"]))

    # ----- internals ----------------------------------------------------------------------
    def _sample(self) -> Trajectory:
        """Run the sampler, pushing each step's frame to the browser as soon as it exists."""
        steps, name = int(self.steps_slider.value), self.sampler_dropdown.value
        traj = Trajectory()
        timesteps = make_timesteps(self.schedule, steps)
        start = time.perf_counter()
        self._running = True
        self._set_frame_range(steps)

        def on_step(record: StepRecord) -> None:
            traj.frames.append(self.render(record))
            traj.captions.append(f"step {record.step + 1}/{steps} · t={record.t} · {time.perf_counter() - start:.2f} s")
            self.image.value = traj.frames[-1]  # sent to the browser right away: the live animation
            self.status.value = traj.captions[-1]
            self.frame_slider.value = record.step

        if self.model is not None and hasattr(self.model, "eval"):
            self.model.eval()  # dropout off; sampling must be deterministic for a given seed
        x, gen = self.noise()  # gen also draws DDPM's per-step noise, so one seed fixes the whole run
        try:
            with torch.no_grad():
                traj.final = get_sampler(name)(self.eps_model, x, self.schedule, timesteps,
                                               callback=on_step, generator=gen)
        except Exception as e:
            self.status.value = f"error: {type(e).__name__}: {e}"
            raise
        finally:
            self._running = False
        return traj

    def _show_trajectory(self, traj: Trajectory) -> None:
        """Put a finished trajectory on screen, parked on its last frame, ready to scrub."""
        self.trajectory, self.last_images = traj, traj.final
        self._running = True  # the slider moves below are ours, not the user's
        try:
            self._set_frame_range(len(traj.frames))
            self.frame_slider.value = len(traj.frames) - 1
        finally:
            self._running = False
        self._on_frame()

    def _set_frame_range(self, n_frames: int) -> None:
        """Frame slider and Play cover frames 0..n_frames-1."""
        last = max(n_frames - 1, 0)
        for w in (self.frame_slider, self.play):
            if w.value > last:
                w.value = last
            w.max = last

    def _on_settings(self, change=None) -> None:
        """steps / sampler / seed changed: sample (or replay from cache)."""
        self.run()

    def _on_frame(self, change=None) -> None:
        """Scrub: show a cached frame; no model calls."""
        if self._running or self.trajectory is None or not self.trajectory.frames:
            return
        i = min(int(self.frame_slider.value), len(self.trajectory.frames) - 1)
        self.image.value = self.trajectory.frames[i]
        self.status.value = self.trajectory.captions[i]

    def _displayable(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images via `decode` if given; 1 channel -> gray RGB; >3 channels -> the first 3."""
        if self.decode is not None:
            x = self.decode(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        return x[:, :3].float()


def _model_device(model) -> torch.device:
    """Where the model's weights live; course_lib.device() when it has none."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return default_device()


def _model_dtype(model) -> torch.dtype:
    """The model's floating dtype (x_T must match it, e.g. a half-precision model on a GPU); float32 if unknown."""
    try:
        dtype = next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32
    return dtype if dtype.is_floating_point else torch.float32


def _check_int(name: str, value, lo: int, hi: int) -> None:
    """ValueError unless value is an int in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
