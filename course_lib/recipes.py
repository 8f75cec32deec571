"""Training recipes: everything needed to recreate a shipped checkpoint with `python -m course_lib.train <name>`.

Every recipe has the same shape: a model factory (a preset in course_lib.models.FACTORIES), its data (a DataSpec,
drawn procedurally), its task (the objective, and what the JSON records: course_lib.tasks), its TrainConfig and
the quality floor the checkpoint must keep meeting (course_lib.floors; each limit's comment gives what the shipped
checkpoint and a noise-weight copy of it measure). `course_lib.train.run` runs every one of them through the same
code path and the same loop.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from course_lib import models
from course_lib.data import DataSpec
from course_lib.floors import Floor
from course_lib.tasks import Autoencoding, Autoregression, Classification, ConsistencyDistillation, Contrastive, \
    Denoising, Tokenizing
from course_lib.training import TrainConfig


@dataclass
class Recipe:
    """A named training run: model preset, data, task and hyper-parameters."""

    name: str  # checkpoint name, e.g. "shapes32-unet"
    model: str  # factory in course_lib.models.FACTORIES, e.g. "unet_small"
    data: DataSpec  # training data
    # objective + what the JSON records (Denoising includes its subclass ConsistencyDistillation)
    task: Denoising | Autoencoding | Classification | Contrastive | Autoregression | Tokenizing
    train: TrainConfig  # optimisation hyper-parameters
    description: str = ""  # one line for humans
    model_kwargs: dict = field(default_factory=dict)  # overrides passed to the model factory
    init_from: str | None = None  # start from this checkpoint's weights (layers it lacks keep their fresh init)
    floor: Floor | None = None  # what the checkpoint must still do; measured after training, and by the tests

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model of this recipe's preset. A preset whose vocabulary comes from the data (the
        pixel transformer's palette: `palette_from`) gets this recipe's data, the same images its task tokenises."""
        factory, kwargs = models.FACTORIES[self.model], dict(self.model_kwargs)
        if "palette_from" in inspect.signature(factory).parameters:
            kwargs.setdefault("palette_from", self.data)
        return factory(**kwargs)


# Shared by the GPU-sized diffusion recipes: AdamW 3e-4, cosine decay, EMA 0.999, gradient clipping at 1, a
# resumable checkpoint every 1000 steps.
def _diffusion_config(steps: int, batch_size: int, warmup: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch_size, lr=3e-4, weight_decay=0.0, warmup=warmup,
                       lr_schedule="cosine", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=1000, log_every=50)


TEXT = dict(cond_drop_prob=0.1, text_encoder="shapes-clip")  # captions dropped 10% of the time, for CFG

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            name="shapes32-unet",
            model="unet_small",
            data=DataSpec("shapes", n=20000, seed=0, size=32),
            task=Denoising(schedule="linear"),
            # GPU-sized: 8000 x 256 = 2M images (~100 epochs); about 10 minutes on one modern GPU.
            train=_diffusion_config(steps=8000, batch_size=256, warmup=500),
            description="unconditional 32x32 shapes U-Net (DDPM linear schedule, T=1000)",
            floor=Floor("frechet_distance", 300.0, dict(n=64, steps=10, seed=7)),  # shipped 183, noise 803
        ),
        Recipe(
            name="shapes32-t2i",
            model="unet_small_cond",
            model_kwargs={"cond_dim": 64},  # the width of shapes-clip's text tokens
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),
            task=Denoising(schedule="linear", **TEXT),
            # Fine-tuned from the unconditional shapes32-unet: its cross-attention layers start as zero maps, so
            # step 0 is exactly that model and training only has to learn to listen to the text. The caption is
            # dropped 10% of the time, so the same network keeps the unconditional prediction that
            # classifier-free guidance needs. GPU-sized (minutes on one GPU); a CPU core manages ~16 images/s,
            # so on a CPU try --steps 1000 --batch-size 32 (~35 min): colour is learned, the rest only partly.
            train=_diffusion_config(steps=8000, batch_size=256, warmup=200),
            init_from="shapes32-unet",
            description="text-to-image 32x32 shapes U-Net, cross-attending to shapes-clip tokens (held-out pairs unseen)",
            # floor: shipped 0.94, noise weights 0
            floor=Floor("prompt_accuracy", 0.6, dict(prompts=8, per_prompt=2, steps=10, guidance_scale=3, seed=7)),
        ),
        Recipe(
            name="shapes32-lcm",
            model="unet_small_cond",
            # shapes32-t2i's network plus a w-embedding (zero-init, so step 0 is the teacher); no dropout: the
            # student must match its target, not regularise
            model_kwargs={"cond_dim": 64, "guidance_embed": True, "dropout": 0.0},
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),
            task=ConsistencyDistillation(schedule="linear", text_encoder="shapes-clip", teacher="shapes32-t2i"),
            # LCM's recipe scaled down: EMA 0.95 is the target network; each step costs about 6 forward passes
            # (student + backward, teacher with CFG, target). CPU-sized by default (~25 min on 2 cores).
            train=TrainConfig(steps=500, batch_size=64, lr=1e-4, weight_decay=0.0, warmup=20, lr_schedule="constant",
                              ema_decay=0.95, grad_clip=1.0, seed=0, ckpt_every=100, log_every=10),
            init_from="shapes32-t2i",
            description="LCM student of shapes32-t2i: 4-step text-to-image, guidance distilled into a w input",
            floor=Floor("prompt_accuracy", 0.3, dict(prompts=8, per_prompt=2, steps=4, guidance_scale=5, seed=7,
                                                     sampler="lcm")),
        ),
        Recipe(
            name="shapes64-latent-dit",
            model="dit",
            # The best DiT of chapter 6's sweep (python -m course_lib.evaluation scaling, data/dit_scaling.json), which
            # trains every network with this recipe at equal training FLOPs and ships the best DiT under this name.
            # On the 8x8x4 latents of shapes64-vae, as the DiT paper works on Stable Diffusion's latents.
            model_kwargs={"name": "DiT-Sm/2", "cond_dim": 64, "text_conditioning": "pooled"},
            data=DataSpec("shapes", n=20000, seed=0, size=64, hold_out=True),
            task=Denoising(schedule="scaled_linear", vae="shapes64-vae", sample_steps=20, sampler="dpmpp_2m", **TEXT),
            # From scratch, as the DiT paper trains (AdamW at a constant rate, no weight decay, EMA of the weights)
            # at a small model's rate (1e-3 beat 3e-4 for DiT and U-Net alike in 300-step trials); constant, so a run
            # can be measured along its curve and continued.
            train=TrainConfig(steps=3487, batch_size=64, lr=1e-3, weight_decay=0.0, warmup=50,
                              lr_schedule="constant", ema_decay=0.999, grad_clip=1.0, seed=0, ckpt_every=0,
                              log_every=10),
            description="text-to-image latent Diffusion Transformer on shapes64-vae's 8x8x4 latents (adaLN-Zero)",
            # floor: shipped 0.44 (0.44 with seed 8 too), noise weights 0
            floor=Floor("prompt_accuracy", 0.2, dict(prompts=8, per_prompt=2, steps=20, guidance_scale=5, seed=7,
                                                     sampler="dpmpp_2m")),
        ),
        Recipe(
            name="shapes64-t2i",
            model="unet_small_cond",
            # The 32x32 network run at 64x64: one more halving before attention, so attention sits at 16x16,
            # the same level as 8x8 in shapes32-t2i, and every weight of shapes32-unet fits (init_from).
            model_kwargs={"cond_dim": 64, "image_size": 64, "attn_resolutions": (16,)},
            data=DataSpec("shapes", n=20000, seed=0, size=64, hold_out=True),
            task=Denoising(schedule="linear", **TEXT),
            # GPU-sized: the pixel-space baseline chapter 4 compares the latent model with (~4x the FLOPs of
            # the 32x32 model per step). Ran with --time-budget on a GPU; the JSON records the steps it fit.
            train=_diffusion_config(steps=6000, batch_size=128, warmup=200),
            init_from="shapes32-unet",
            description="text-to-image 64x64 shapes U-Net in pixel space (the baseline of chapter 4)",
            # floor: it misses placement (chapter 4), so the colour: shipped 1.0, noise weights 0
            floor=Floor("color_accuracy", 0.75, dict(prompts=4, per_prompt=1, steps=10, guidance_scale=5, seed=7)),
        ),
        Recipe(
            name="shapes64-latent-t2i",
            model="unet_latent_cond",
            model_kwargs={"cond_dim": 64},
            data=DataSpec("shapes", n=20000, seed=0, size=64, hold_out=True),
            # Stable Diffusion's schedule for latents: betas linear in sqrt from 0.00085 to 0.012.
            task=Denoising(schedule="scaled_linear", vae="shapes64-vae", **TEXT),
            # GPU-sized: a from-scratch U-Net on 8x8x4 latents (the images go through shapes64-vae once).
            train=_diffusion_config(steps=12000, batch_size=256, warmup=500),
            description="text-to-image latent diffusion: 8x8x4 latents of shapes64-vae, decoded to 64x64",
            # floor: shipped 0.69 (0.94 and 0.91 with seeds 8 and 9: 16 images are a small sample), noise weights 0
            floor=Floor("prompt_accuracy", 0.45, dict(prompts=8, per_prompt=2, steps=20, guidance_scale=5, seed=7)),
        ),
        Recipe(
            name="shapes32-ar",
            model="pixel_ar",
            # the palette: every distinct colour of the training renders (build_model passes the data; lossless, the
            # JSON reports the error on fresh renders)
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),
            task=Autoregression(),
            # Image GPT at toy size: 1024 pixel tokens per image, so attention dominates the work (~1.6 GFLOPs per
            # image per forward pass). CPU-sized (14 min on 2 cores; --time-budget 1200 picked 1200 steps); the
            # JSON and data/ar_vs_diffusion.json give its training FLOPs beside shapes32-t2i's.
            train=TrainConfig(steps=1200, batch_size=16, lr=2e-3, weight_decay=0.0, warmup=50, lr_schedule="cosine",
                              ema_decay=None, grad_clip=1.0, seed=0, ckpt_every=200, log_every=10),
            description="text-to-image pixel transformer: 32x32 images as 1024 palette tokens in raster order",
            # floor: colour, as its shapes (and so whole prompts) are mostly wrong (chapter 8): shipped 1.0, noise
            # weights 0.19
            floor=Floor("color_accuracy", 0.6, dict(prompts=8, per_prompt=2, guidance_scale=2, seed=7)),
        ),
        Recipe(
            name="shapes-vq",
            model="vq_f4",
            # 1024 codes: a 4x4 patch must say its background, its colour and the edge through it (256 codes kept
            # the colours but blurred every shape into a blob: PSNR 24.7 dB after 800 steps)
            model_kwargs={"codebook_size": 1024},
            data=DataSpec("shapes", n=20000, seed=0, size=32),
            task=Tokenizing(),
            # CPU-sized (~15 min on 2 cores).
            train=TrainConfig(steps=1500, batch_size=64, lr=1e-3, weight_decay=0.0, warmup=50, lr_schedule="cosine",
                              ema_decay=None, grad_clip=1.0, seed=0, ckpt_every=500, log_every=10),
            description="VQ tokenizer: 32x32 images -> 8x8 codes out of 1024 (f=4), for shapes32-ar-tokens",
            floor=Floor("psnr_db", 26.0, dict(n=64, size=32, seed=7)),  # shipped 30.0 dB, noise weights 7.4
        ),
        Recipe(
            name="shapes32-ar-tokens",
            model="token_ar",
            model_kwargs={"vocab_size": 1024},  # shapes-vq's codebook
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),
            task=Autoregression(tokenizer="shapes-vq"),
            # DALL-E 1 at toy size: 64 tokens per image, 16x fewer sequential steps than the pixel model. 3334 steps
            # give it shapes32-ar's training FLOPs (92.6 TFLOPs: 3 x 0.1447 GFLOPs x 3334 x 64); CPU-sized.
            train=TrainConfig(steps=3334, batch_size=64, lr=1e-3, weight_decay=0.0, warmup=50, lr_schedule="cosine",
                              ema_decay=None, grad_clip=1.0, seed=0, ckpt_every=500, log_every=10),
            description="text-to-image token transformer over shapes-vq's 8x8 codes (64 tokens in raster order)",
            # floor: shipped 0.81, noise weights 0
            floor=Floor("prompt_accuracy", 0.5, dict(prompts=8, per_prompt=2, guidance_scale=2, seed=7)),
        ),
        Recipe(
            name="toy2d-mlp",
            model="mlp_2d",
            data=DataSpec("toy2d", n=10000, seed=0, name="moons"),
            task=Denoising(schedule="linear"),
            # CPU-sized: a few seconds.
            train=TrainConfig(steps=3000, batch_size=256, lr=1e-3, warmup=100, lr_schedule="cosine",
                              ema_decay=0.995, grad_clip=1.0, seed=0, ckpt_every=1000, log_every=50),
            description="2-D 'moons' point cloud MLP (DDPM linear schedule, T=1000)",
        ),
        Recipe(
            name="shapes64-vae",
            model="vae_f8",
            data=DataSpec("shapes", n=20000, seed=0, size=64),  # 64x64x3 -> 8x8x4 latents: SD's 48x
            task=Autoencoding(kl_weight=1e-6),
            # GPU-sized: 3000 x 64 = 192k images (~10 epochs); minutes on one GPU, about 2 hours on a CPU core.
            train=TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup=100, lr_schedule="cosine", ema_decay=None,
                              grad_clip=0.0, seed=0, ckpt_every=500, log_every=50),
            description="KL autoencoder (f=8, 4 channels) for latent diffusion on 64x64 shapes",
            floor=Floor("psnr_db", 28.0, dict(n=64, size=64, seed=7)),  # shipped 34.4 dB, noise weights 7.4
        ),
        Recipe(
            name="shapes-classifier",
            model="shapes_classifier",
            # Every attribute combination, held-out pairs included: it must judge any image.
            data=DataSpec("shapes", n=20000, seed=0, size=32),
            task=Classification(noise_std=0.1, blur_prob=0.5),
            # CPU-sized: about a minute on 2 cores; every head is at ~100% on fresh renders after ~750 steps.
            train=TrainConfig(steps=1500, batch_size=64, lr=3e-3, weight_decay=1e-4, warmup=50,
                              lr_schedule="cosine", ema_decay=None, grad_clip=0.0, seed=0, ckpt_every=500,
                              log_every=50),
            description="attribute classifier (shape, color, size, position, background) behind course_lib.metrics",
            floor=Floor("accuracy", 0.95, dict(n=256, size=32, seed=7)),  # shipped 1.0, noise weights 0.004
        ),
        Recipe(
            name="shapes-clip",
            model="shapes_clip",
            data=DataSpec("shapes", n=20000, seed=0, size=32, hold_out=True),  # held-out pairs: composition tests
            task=Contrastive(),
            # CPU-sized (17 min on one thread). AdamW as open_clip trains CLIP: betas (0.9, 0.98), eps 1e-6,
            # weight decay 0.1 on matrices only; small models from scratch like a large learning rate.
            train=TrainConfig(steps=1500, batch_size=128, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6,
                              warmup=200, lr_schedule="cosine", ema_decay=None, grad_clip=0.0, seed=0,
                              ckpt_every=500, log_every=50),
            description="tiny CLIP (open_clip ViT + text transformer) trained contrastively on captioned shapes",
            floor=Floor("zero_shot", 0.75, dict(n=256, size=32, seed=7)),  # shipped 0.90; noise and chance 0.30
        ),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; ValueError listing the recipes otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
