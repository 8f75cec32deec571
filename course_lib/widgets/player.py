"""DenoisingPlayer: watch a sampler turn noise into images, one step at a time, then scrub the trajectory.

The animation *is* the computation: every StepRecord the sampler hands its `callback` becomes a PNG
frame pushed to the browser at once. Finished trajectories are cached per `cache_key()`, so going
back to an earlier setting (or scrubbing the frame slider) is instant. No diffusion math lives here.

With a `text_encoder` (a text-to-image U-Net, e.g. `DenoisingPlayer.from_pretrained("shapes32-t2i")`) the player
also shows a prompt box and a guidance_scale slider; classifier-free guidance is `course_lib.guidance.GuidedModel`.

img2img (SDEdit): an input image (the `image=` argument, an uploaded PNG, or "edit these samples") is noised to the
timestep a strength slider picks and denoised from there (`samplers.strength_timesteps`, `schedule.add_noise`), as
`generate(image=, strength=)` does; a latent model's player encodes it with `encode` first.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch

from .. import device_of, pretrained
from ..guidance import GuidedModel
from ..latent import latent_decoder, latent_encoder
from ..samplers import SAMPLERS, StepRecord, get_sampler, make_timesteps, strength_timesteps
from ..images import grid, image_batch, label_rows, png_bytes, read_image, to_uint8, upscale

MAX_STEPS = 100  # the steps slider's upper end
MAX_GUIDANCE_SCALE = 20.0  # the guidance_scale slider's upper end (step 0.5)


@dataclass
class Trajectory:
    """One finished sampling run as the widget shows it."""

    frames: list[bytes] = field(default_factory=list)  # one PNG per StepRecord: x_t row over predicted-x0 row
    captions: list[str] = field(default_factory=list)  # status per frame, "step 7/20 · NFE 13 · t=649 · 0.41 s"
    final: torch.Tensor | None = None  # the sampler's return value (B, C, H, W), before `decode`


class DenoisingPlayer(widgets.VBox):
    """Live view of a sampler (DDPM, Ho et al. 2020 / DDIM, Song et al. 2021) with a cached, scrubbable trajectory."""

    def __init__(self, model, schedule, *, n: int = 4, image_size: int = 32, channels: int = 3, steps: int = 20,
                 sampler: str = "ddim", seed: int = 0, decode=None, device=None, eps_model=None, scale: int = 3,
                 autorun: bool = True, text_encoder=None, prompt: str = "", guidance_scale: float = 5.0,
                 image=None, strength: float = 0.6, encode=None):
        # model(x_t, t) -> eps, or pass eps_model (e.g. classifier-free guidance wrapped around the model);
        # n samples of (channels, image_size, image_size); decode(latents) -> images in [-1, 1] for display;
        # scale: integer pixel upscale of the PNG frames; autorun: sample once right away so there is a picture.
        # text_encoder(prompt) -> (tokens (1, L, D), mask (1, L)) for a text-conditional model(x_t, t, cond=,
        # cond_mask=): adds a prompt box ("" = unconditional) and a guidance_scale slider (1 = no guidance).
        # image: img2img input, (3, H, W) or (1 or n, 3, H, W) in [-1, 1] (decoded size for a latent model), with
        # strength in [0, 1]; encode(images) -> latents for a latent model (from_pretrained sets it).
        _check_int("n", n, 1, 64)
        _check_int("image_size", image_size, 1, 4096)
        _check_int("channels", channels, 1, 64)
        _check_int("steps", steps, 1, MAX_STEPS)
        _check_int("scale", scale, 1, 16)
        _check_int("seed", seed, 0, 2**63 - 1)
        get_sampler(sampler)  # ValueError naming the valid samplers
        if eps_model is None and model is None:
            raise ValueError("pass a model (called as model(x_t, t)) or an eps_model(x_t, t) callable")
        if text_encoder is not None and (model is None or eps_model is not None):
            raise ValueError("with a text_encoder pass the text-conditional model (called as model(x_t, t, cond=, "
                             "cond_mask=)) and no eps_model: the player builds the guided eps_model itself")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str (\"\" is the unconditional prompt), got {type(prompt).__name__}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not 0 <= guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(f"guidance_scale must be a number in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance), "
                             f"got {guidance_scale!r}")
        strength_timesteps([], strength)  # ValueError unless strength is a number in [0, 1]
        self.model, self.schedule, self.decode, self.encode = model, schedule, decode, encode
        self.n, self.image_size, self.channels, self.scale = n, image_size, channels, scale
        self.device = torch.device(device) if device is not None else device_of(model)
        self.eps_model = eps_model if eps_model is not None else (lambda x, t: self.model(x, t))
        self.text_encoder = text_encoder
        self._encodings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # prompt -> (tokens, mask), on device
        self._trajectories: dict[tuple, Trajectory] = {}  # cache_key() -> finished run
        self.trajectory: Trajectory | None = None  # the one on screen
        self.last_images: torch.Tensor | None = None
        self._running = False
        self.input_image: torch.Tensor | None = None  # img2img input (1 or n, 3, H, W) on the CPU, or None
        self._pixel_shape: tuple[int, int, int] | None = None  # see pixel_shape()
        self._image_version = 0  # part of cache_key: a new input image means new trajectories

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

        # prompt and guidance_scale: only shown (and only part of cache_key) with a text encoder
        self.prompt_box = widgets.Text(value=prompt, description="prompt", continuous_update=False,  # sent on Enter
                                       placeholder='e.g. "a small blue star at the top" (empty = unconditional)',
                                       layout=widgets.Layout(width="480px"))
        self.guidance_slider = widgets.FloatSlider(value=guidance_scale, min=0.0, max=MAX_GUIDANCE_SCALE, step=0.5,
                                                   description="guidance_scale", continuous_update=False,
                                                   readout_format=".1f", style={"description_width": "initial"})
        # img2img: an input image (upload a PNG, or edit the samples on screen) and how much of it to redraw
        self.strength_slider = widgets.FloatSlider(value=strength, min=0.0, max=1.0, step=0.05, description="strength",
                                                   continuous_update=False, readout_format=".2f", disabled=True)
        self.image_upload = widgets.FileUpload(accept="image/*", multiple=False, description="input image")
        self.edit_button = widgets.Button(description="edit these samples", tooltip="use the final images on screen "
                                          "as the input image (img2img)")
        self.clear_button = widgets.Button(description="no input image", disabled=True)
        self.image_upload.observe(self._on_upload, names="value")
        self.edit_button.on_click(lambda _: self.set_image(None if self.last_images is None
                                                           else self._displayable(self.last_images).cpu()))
        self.clear_button.on_click(lambda _: self.set_image(None))
        controls = [self.steps_slider, self.sampler_dropdown, self.seed_box, self.strength_slider]
        if text_encoder is not None:
            controls += [self.prompt_box, self.guidance_slider]
        for w in controls:
            w.observe(self._on_settings, names="value")
        self.frame_slider.observe(self._on_frame, names="value")
        rows = [widgets.HBox([self.steps_slider, self.sampler_dropdown, self.seed_box])]
        if text_encoder is not None:
            rows.insert(0, widgets.HBox([self.prompt_box, self.guidance_slider]))
            self.conditioning()  # a bad initial prompt is the caller's error: raise it now
        rows.append(widgets.HBox([self.image_upload, self.edit_button, self.clear_button, self.strength_slider]))
        scrub = widgets.HBox([self.play, self.frame_slider, self.status])
        super().__init__([*rows, self.image, scrub])
        if image is not None:
            self.set_image(image, run=False)
        self.layout.align_items = "flex-start"  # show the PNG at its own pixel size, not stretched to the cell
        self.add_class("course-denoising-player")
        if autorun:
            self.run()

    @classmethod
    def from_pretrained(cls, name_or_pretrained, *, device=None, directory=None, **kwargs) -> "DenoisingPlayer":
        """A player for a shipped checkpoint: its model, schedule and image size, plus its text encoder if its JSON
        names one (then the prompt box and guidance_scale slider appear), and for a latent model the decoder of the
        VAE its JSON names (each frame shows decoded latents). kwargs go to the constructor, e.g.
        prompt="a red circle", steps=30."""
        p = pretrained.load_checkpoint(name_or_pretrained, device=device, directory=directory)
        if p.schedule is None:
            raise ValueError(f"checkpoint {p.meta.get('name')!r} has no noise schedule, so it is not a denoiser; "
                             f"pick a diffusion checkpoint such as 'shapes32-unet' or 'shapes32-t2i'")
        channels, image_size, _ = pretrained.sample_shape(p)  # latents for a latent model
        defaults = dict(image_size=image_size, channels=channels,
                        text_encoder=pretrained.load_text_encoder(p, directory=directory))
        if "decode" not in kwargs:
            defaults["decode"] = latent_decoder(p, directory=directory)  # None for pixel models
        if "encode" not in kwargs:
            defaults["encode"] = latent_encoder(p, directory=directory)  # None for pixel models
        return cls(p.model, p.schedule, **{**defaults, **kwargs})

    # ----- public -------------------------------------------------------------------------
    def cache_key(self) -> tuple:
        """What identifies a trajectory: steps, sampler, seed (+ prompt and guidance_scale with a text encoder, + the
        input image and strength for img2img)."""
        key = (int(self.steps_slider.value), self.sampler_dropdown.value, int(self.seed_box.value))
        if self.text_encoder is not None:
            key += (self.prompt_box.value, float(self.guidance_slider.value))
        if self.input_image is not None:
            key += (self._image_version, float(self.strength_slider.value))
        return key

    def set_image(self, image, run: bool = True) -> None:
        """img2img from `image` ((3, H, W) or (1 or n, 3, H, W) in [-1, 1], the size the player shows; None: back to
        plain sampling from noise). The strength slider then picks how much of it is redrawn."""
        if image is not None:
            image = image_batch(image, self.pixel_shape(), self.n, "the player's image shape")  # (1 or n, 3, H, W)
        self.input_image = image
        self._image_version += 1
        self.strength_slider.disabled = self.clear_button.disabled = image is None
        if run:
            self.run()

    def pixel_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of the images on screen: the samples' shape, or what `decode` turns a latent into (found once,
        by decoding a zero latent)."""
        if self._pixel_shape is None:
            size = (self.image_size, self.image_size)
            if self.decode is not None:
                zeros = torch.zeros(1, self.channels, *size, device=self.device)
                size = tuple(self._displayable(zeros).shape[-2:])
            self._pixel_shape = (3, *size)
        return self._pixel_shape

    def conditioning(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """((tokens, mask) of the prompt, (tokens, mask) of ""), each encoded once; None without a text encoder.

        A prompt the tokenizer refuses (too long) raises its ValueError."""
        if self.text_encoder is None:
            return None
        return self._encode(self.prompt_box.value), self._encode("")

    def guided_eps_model(self):
        """The eps_model(x_t, t) the sampler calls: classifier-free guidance with the current prompt and scale."""
        if self.text_encoder is None:
            return self.eps_model
        (cond, cond_mask), (uncond, uncond_mask) = self.conditioning()
        return GuidedModel(self.model, cond, cond_mask, uncond, uncond_mask, float(self.guidance_slider.value))

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
        """One frame: the n current samples x_t on top, the model's predicted x0 below (and the img2img input above
        both when there is one)."""
        rows = [self._displayable(record.x_t), self._displayable(record.x0)]
        labels = ["x_t", "predicted x0"]
        if self.input_image is not None:
            rows.insert(0, self.input_image.expand(self.n, -1, -1, -1))  # (n, 3, H, W)
            labels.insert(0, "input image")
        tiles = grid(to_uint8(torch.cat(rows)), nrow=self.n)  # (rows, n columns) of images
        return png_bytes(label_rows(upscale(tiles, self.scale), labels))

    # ----- internals ----------------------------------------------------------------------
    def _sample(self) -> Trajectory:
        """Run the sampler, pushing each step's frame to the browser as soon as it exists."""
        steps, name = int(self.steps_slider.value), self.sampler_dropdown.value
        traj = Trajectory()
        timesteps = make_timesteps(self.schedule, steps)
        if self.input_image is not None:  # img2img: only the last int(steps * strength) steps run
            timesteps = strength_timesteps(timesteps, float(self.strength_slider.value))
            steps = max(len(timesteps), 1)  # strength 0: one frame, the input itself
        start = time.perf_counter()

        def on_step(record: StepRecord) -> None:
            traj.frames.append(self.render(record))
            elapsed = time.perf_counter() - start  # NFE: model calls so far, the honest cost (Heun: 2 per step)
            traj.captions.append(f"step {record.step + 1}/{steps} · NFE {record.nfe} · t={record.t:g} · "
                                 f"{elapsed:.2f} s")
            self.image.value = traj.frames[-1]  # sent to the browser right away: the live animation
            self.status.value = traj.captions[-1]
            self.frame_slider.value = record.step

        if self.model is not None and hasattr(self.model, "eval"):
            self.model.eval()  # dropout off; sampling must be deterministic for a given seed
        with _sampling(self), torch.no_grad():
            self._set_frame_range(steps)
            x, gen = self.noise()  # gen also draws DDPM's per-step noise, so one seed fixes the whole run
            if self.input_image is not None:
                init = self._start_of_img2img(x)
                if len(timesteps) == 0:  # strength 0: nothing is redrawn, the input is the result
                    on_step(StepRecord(step=0, t=0, x_t=init, x0=init))
                    traj.final = init
                    return traj
                x = self.schedule.add_noise(init, x, int(timesteps[0]))
            traj.final = get_sampler(name)(self.guided_eps_model(), x, self.schedule, timesteps,
                                           callback=on_step, generator=gen)
        return traj

    def _start_of_img2img(self, x_T: torch.Tensor) -> torch.Tensor:
        """The input image where the sampler works (latents for a latent model), one per sample, shaped like x_T."""
        image = self.input_image.to(self.device)
        if self.decode is not None:
            if self.encode is None:
                raise ValueError("img2img with a latent model needs encode=(images -> latents); "
                                 "DenoisingPlayer.from_pretrained sets it from the checkpoint's VAE")
            image = self.encode(image)
        return image.to(x_T.device, x_T.dtype).expand_as(x_T)  # (n, C, h, w)

    def _on_upload(self, change=None) -> None:
        """A PNG/JPEG from the upload button becomes the input image, resized to the player's size."""
        files = self.image_upload.value
        if not files:
            return
        try:
            self.set_image(read_image(bytes(files[0]["content"]), self.pixel_shape()[1:]))
        except ValueError as e:
            self.status.value = f"image error: {e}"

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
        """steps / sampler / seed / prompt / guidance_scale changed: sample (or replay from cache)."""
        try:
            self.conditioning()  # a prompt typo is shown to the student, not raised inside a widget callback
        except (TypeError, ValueError) as e:
            self.status.value = f"prompt error: {e}"
            return
        self.run()

    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """text_encoder(prompt) -> (tokens (1, L, D), mask (1, L)) on the sampling device, cached per prompt."""
        if prompt not in self._encodings:
            with torch.no_grad():
                tokens, mask = self.text_encoder(prompt)
            self._encodings[prompt] = tokens.to(self.device), mask.to(self.device)
        return self._encodings[prompt]

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


@contextmanager
def _sampling(widget):
    """While a player samples: its `_running` flag is up (the slider moves are its own, not the user's), and an
    error shows in its status line before it propagates. DenoisingPlayer and FillPlayer both sample inside it."""
    widget._running = True
    try:
        yield
    except Exception as e:
        widget.status.value = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        widget._running = False


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
