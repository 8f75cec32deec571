"""Training recipes: everything needed to recreate a shipped checkpoint with `python -m course_lib.train <name>`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from course_lib import models
from course_lib.data import HELD_OUT_PAIRS, ShapesDataset, toy2d
from course_lib.training import TrainConfig

DATASETS = ("shapes", "toy2d")


@dataclass
class DataSpec:
    """Which training data to generate (procedurally, so a recipe needs no downloads)."""

    dataset: str  # "shapes" (ShapesDataset images) or "toy2d" (2-D points)
    n: int  # number of training examples
    seed: int = 0  # data seed: same seed, same data
    size: int | None = None  # image size for "shapes"; None for points
    name: str | None = None  # toy2d dataset name ("moons", "swiss_roll", "8gaussians"); None for images
    hold_out: bool = False  # leave data.HELD_OUT_PAIRS out, so prompts naming them are unseen combinations

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(DATASETS)}")


@dataclass
class Recipe:
    """A named training run: model preset, noise schedule, data, hyper-parameters and preview settings."""

    name: str  # checkpoint name, e.g. "shapes32-unet"
    model: str  # factory in course_lib.models.FACTORIES, e.g. "unet_small"
    schedule: str  # NoiseSchedule.from_name name, e.g. "linear"
    data: DataSpec  # training data
    train: TrainConfig  # optimisation hyper-parameters
    num_train_timesteps: int = 1000  # T of the noise schedule
    sample_steps: int = 50  # DDIM steps for the preview written next to the checkpoint
    description: str = ""  # one line for humans
    model_kwargs: dict = field(default_factory=dict)  # overrides passed to the model factory
    text_encoder: str | None = None  # checkpoint of the frozen CLIP whose token embeddings condition the model
    guidance_scale: float = 5.0  # classifier-free guidance scale of the preview (text-conditioned recipes)
    init_from: str | None = None  # start from this checkpoint's weights (layers it lacks keep their fresh init)
    vae: str | None = None  # latent diffusion: train on this VAE checkpoint's scaled latents of the images

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model of this recipe's preset."""
        return models.FACTORIES[self.model](**self.model_kwargs)


def load_data(spec: DataSpec) -> torch.Tensor:
    """The training tensor: images (n, 3, size, size) in [-1, 1] or points (n, 2)."""
    if spec.dataset == "shapes":
        return shapes_dataset(spec).images()
    return toy2d(spec.name, n=spec.n, seed=spec.seed)


def shapes_dataset(spec: DataSpec) -> ShapesDataset:
    """The captioned shapes dataset a recipe trains on (images render lazily)."""
    return ShapesDataset(size=spec.size, n=spec.n, seed=spec.seed, exclude=HELD_OUT_PAIRS if spec.hold_out else ())


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="shapes32-unet",
            model="unet_small",
            schedule="linear",
            data=DataSpec("shapes", n=20000, seed=0, size=32),
            # GPU-sized: 8000 x 256 = 2M images (~100 epochs); about 10 minutes on one modern GPU.
            train=TrainConfig(steps=8000, batch_size=256, lr=3e-4, weight_decay=0.0, warmup=500,
                              lr_schedule="cosine", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=1000,
                              log_every=50),
            description="unconditional 32x32 shapes U-Net (DDPM linear schedule, T=1000)",
        ),
        Recipe(
            name="shapes32-t2i",
            model="unet_small_cond",
            model_kwargs={"cond_dim": 64},  # the width of shapes-clip's text tokens
            schedule="linear",
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),
            # Fine-tuned from the unconditional shapes32-unet: its cross-attention layers start as zero maps, so
            # step 0 is exactly that model and training only has to learn to listen to the text. The caption is
            # dropped 10% of the time, so the same network keeps the unconditional prediction that
            # classifier-free guidance needs. GPU-sized (minutes on one GPU); a CPU core manages ~16 images/s,
            # so on a CPU try --steps 1000 --batch-size 32 (~35 min): colour is learned, the rest only partly.
            train=TrainConfig(steps=8000, batch_size=256, lr=3e-4, weight_decay=0.0, warmup=200,
                              lr_schedule="cosine", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=1000,
                              log_every=50, cond_drop_prob=0.1),
            init_from="shapes32-unet",
            text_encoder="shapes-clip",
            description="text-to-image 32x32 shapes U-Net, cross-attending to shapes-clip tokens (held-out pairs unseen)",
        ),
        Recipe(
            name="shapes64-t2i",
            model="unet_small_cond",
            # The 32x32 network run at 64x64: one more halving before attention, so attention sits at 16x16,
            # the same level as 8x8 in shapes32-t2i, and every weight of shapes32-unet fits (init_from).
            model_kwargs={"cond_dim": 64, "image_size": 64, "attn_resolutions": (16,)},
            schedule="linear",
            data=DataSpec("shapes", n=20000, seed=0, size=64, hold_out=True),
            # GPU-sized: the pixel-space baseline chapter 4 compares the latent model with (~4x the FLOPs of
            # the 32x32 model per step). Ran with --time-budget on a GPU; the JSON records the steps it fit.
            train=TrainConfig(steps=6000, batch_size=128, lr=3e-4, weight_decay=0.0, warmup=200,
                              lr_schedule="cosine", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=1000,
                              log_every=50, cond_drop_prob=0.1),
            init_from="shapes32-unet",
            text_encoder="shapes-clip",
            description="text-to-image 64x64 shapes U-Net in pixel space (the baseline of chapter 4)",
        ),
        Recipe(
            name="shapes64-latent-t2i",
            model="unet_latent_cond",
            model_kwargs={"cond_dim": 64},
            # Stable Diffusion's schedule for latents: betas linear in sqrt from 0.00085 to 0.012.
            schedule="scaled_linear",
            data=DataSpec("shapes", n=20000, seed=0, size=64, hold_out=True),
            # GPU-sized: a from-scratch U-Net on 8x8x4 latents (the images go through shapes64-vae once).
            train=TrainConfig(steps=12000, batch_size=256, lr=3e-4, weight_decay=0.0, warmup=500,
                              lr_schedule="cosine", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=1000,
                              log_every=50, cond_drop_prob=0.1),
            text_encoder="shapes-clip",
            vae="shapes64-vae",
            description="text-to-image latent diffusion: 8x8x4 latents of shapes64-vae, decoded to 64x64",
        ),
        Recipe(
            name="toy2d-mlp",
            model="mlp_2d",
            schedule="linear",
            data=DataSpec("toy2d", n=10000, seed=0, name="moons"),
            # CPU-sized: a few seconds.
            train=TrainConfig(steps=3000, batch_size=256, lr=1e-3, warmup=100, lr_schedule="cosine",
                              ema_decay=0.995, grad_clip=1.0, seed=0, ckpt_every=1000, log_every=50),
            description="2-D 'moons' point cloud MLP (DDPM linear schedule, T=1000)",
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; ValueError listing the recipes otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
