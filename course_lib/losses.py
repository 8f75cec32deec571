"""Objectives: what each of the course's models is trained to minimise, in one file.

An objective is a callable `loss_fn(model, batch, generator) -> loss` that `course_lib.training.train` calls once
per step (inside its autocast) with the batch its data source drew and the run's seeded generator for every
random draw (timesteps, noise, dropped captions, augmentation, posterior samples). It returns the scalar loss,
or a dict holding "loss" and other scalars to log (the VAE's reconstruction and KL terms). It may also define
`after_step(model)`, which the loop calls after each optimizer step (CLIP clamps its temperature there), and set
`needs_ema = True` to be called as loss_fn(model, batch, generator, ema=...) with the loop's EMA of the model
(consistency distillation's target network). Everything else (optimizer, learning rate, clipping, EMA,
checkpoints, devices) belongs to the loop.

    EpsilonLoss      diffusion, DDPM eq. 14          batch: x0, or (x0, cond tokens (B, L, D), cond mask (B, L))
    VAELoss          L1 + kl_weight * KL            batch: images (B, 3, H, W)
    ClassifierLoss   cross-entropy per attribute    batch: (images, class indices (B, 5))
    ContrastiveLoss  CLIP's symmetric InfoNCE       batch: (images, tokens (B, L))
    ConsistencyDistillationLoss  LCM, Luo et al. 2023     batch: (x0, cond tokens (B, L, D), cond mask (B, L))
    TokenLoss        next-token cross-entropy       batch: (tokens (B, N), cond tokens (B, L, D), cond mask (B, L))
    VQLoss           VQ-VAE: L1 + codebook + beta * commitment                 batch: images (B, 3, H, W)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from course_lib.data import VOCAB
from course_lib.guidance import cfg
from course_lib.schedules import NoiseSchedule, consistency_scalings, x0_from_eps


#################################################################################
#                    Diffusion: predict the noise (DDPM)                        #
#################################################################################

def diffusion_loss(model, schedule, x0, *, generator=None, cond=None, cond_mask=None) -> torch.Tensor:
    """The simplified DDPM loss E_{t, eps} || eps - eps_theta(x_t, t) ||^2 (Ho et al. 2020, eq. 14)."""
    B, T = x0.shape[0], schedule.num_train_timesteps
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, T, (B,), generator=generator, device=gen_device).to(x0.device)  # t ~ Uniform{0..T-1}
    eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.add_noise(x0, eps, t)  # sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    return F.mse_loss(model(x_t, t, cond=cond, cond_mask=cond_mask).float(), eps.float())


def drop_captions(cond, cond_mask, prob: float, generator, empty=None):
    """Replace each caption by the empty one with probability `prob` (Ho & Salimans 2022, Algorithm 1).

    The same network then also learns the unconditional prediction that classifier-free guidance needs.
    empty: (tokens (L, D), mask (L,)) of the empty prompt ""; None: a dropped caption has every token masked out.
    """
    gen_device = generator.device if generator is not None else cond.device
    drop = torch.rand(cond.shape[0], generator=generator, device=gen_device).to(cond.device) < prob  # (B,)
    if empty is None:
        return cond, cond_mask & ~drop[:, None]  # a fully masked sample gets no cross-attention at all
    tokens, mask = (e.to(cond.device) for e in empty)
    return torch.where(drop[:, None, None], tokens, cond), torch.where(drop[:, None], mask, cond_mask)


def check_drop_prob(cond_drop_prob: float) -> None:
    if not 0.0 <= cond_drop_prob < 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")


@dataclass
class EpsilonLoss:
    """Train an eps-prediction denoiser; text-conditioned models also learn to ignore a dropped caption."""

    schedule: NoiseSchedule  # the forward process q(x_t | x0) the model learns to undo
    cond_drop_prob: float = 0.0  # probability of replacing a caption by the empty prompt (for CFG); 0 = never
    empty_cond: tuple | None = field(default=None, repr=False)  # (tokens (L, D), mask (L,)) of ""; see drop_captions

    def __post_init__(self):
        check_drop_prob(self.cond_drop_prob)

    def __call__(self, model, batch, generator) -> torch.Tensor:
        if isinstance(batch, (tuple, list)) and len(batch) != 3:
            raise ValueError(f"a denoiser's batch is x0, or (x0, cond tokens, cond mask); got {len(batch)} tensors")
        x0, cond, cond_mask = batch if isinstance(batch, (tuple, list)) else (batch, None, None)
        if not x0.is_floating_point():
            raise ValueError(f"x0 must be a float tensor (B, ...), e.g. ShapesDataset(...).images(); got {x0.dtype}")
        if self.cond_drop_prob > 0:
            if cond is None or cond_mask is None:
                raise ValueError("cond_drop_prob > 0 needs captions: train on (x0, tokens, mask) from a text encoder")
            cond, cond_mask = drop_captions(cond, cond_mask, self.cond_drop_prob, generator, self.empty_cond)
        return diffusion_loss(model, self.schedule, x0, generator=generator, cond=cond, cond_mask=cond_mask)


#################################################################################
#           Autoregression: predict the next token (Image GPT, DALL-E 1)        #
#################################################################################

def next_token_loss(model, tokens, cond=None, cond_mask=None) -> torch.Tensor:
    """-log p(token_i | tokens before i, caption), averaged over every position i of every sequence (nats)."""
    logits = model(tokens, cond, cond_mask)  # (B, N, V): position i sees tokens < i only (teacher forcing)
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())  # (B * N, V) against (B * N,)


@dataclass
class TokenLoss:
    """Train an autoregressive transformer (models.ar); captions are dropped as for diffusion, for CFG on logits."""

    cond_drop_prob: float = 0.0  # probability of replacing a caption by the empty prompt (for CFG); 0 = never
    empty_cond: tuple | None = field(default=None, repr=False)  # (tokens (L, D), mask (L,)) of ""; see drop_captions

    def __post_init__(self):
        check_drop_prob(self.cond_drop_prob)

    def __call__(self, model, batch, generator) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError("an autoregressive model's batch is (tokens (B, N), cond tokens, cond mask)")
        tokens, cond, cond_mask = batch
        if self.cond_drop_prob > 0:
            cond, cond_mask = drop_captions(cond, cond_mask, self.cond_drop_prob, generator, self.empty_cond)
        return next_token_loss(model, tokens, cond, cond_mask)


@dataclass
class VQLoss:
    """Train a VQ tokenizer (models.vq; van den Oord et al. 2017, eq. 3): L1 reconstruction through the nearest
    codes (straight-through gradient), pull the codes to the encoder's outputs, and the outputs to their codes."""

    beta: float = 0.25  # commitment weight (the paper's 0.25)

    def __call__(self, model, images, generator) -> dict[str, torch.Tensor]:
        recon, z, z_q = model(images)  # z_q: the chosen codes, without the straight-through trick
        reconstruction = (recon.float() - images.float()).abs().mean()
        codebook = F.mse_loss(z_q.float(), z.detach().float())
        commitment = F.mse_loss(z.float(), z_q.detach().float())
        return {"loss": reconstruction + codebook + self.beta * commitment, "reconstruction": reconstruction,
                "codebook": codebook, "commitment": commitment}


#################################################################################
#                   The VAE: rebuild the image through a small latent           #
#################################################################################

def vae_loss(x: torch.Tensor, recon: torch.Tensor, posterior, kl_weight: float) -> dict[str, torch.Tensor]:
    """loss = L1 reconstruction + kl_weight * KL(q(z | x) || N(0, I)), both summed per image, batch mean.

    L1, as in LDM's autoencoder loss (taming-transformers' LPIPSWithDiscriminator, without its LPIPS and GAN
    terms): MSE is dominated by the few large errors at shape edges and settles for blurry edges; L1 keeps
    pushing on the many small errors too, so flat colours and edges come out sharper. Summing per image (not
    a per-pixel mean) keeps kl_weight on the same scale as LDM/SD configs (kl_weight = 1e-6 for SD's VAE).
    """
    reconstruction = (recon.float() - x.float()).abs().sum(dim=[1, 2, 3]).mean()
    kl = posterior.kl().mean()
    return {"loss": reconstruction + kl_weight * kl, "reconstruction": reconstruction, "kl": kl}


@dataclass
class VAELoss:
    """Train a VAE (course_lib.models.VAE): decode a sample z ~ q(z | x), compare with x, pull q towards N(0, I)."""

    kl_weight: float = 1e-6  # weight of the KL term; SD's VAE used 1e-6: just enough to keep latents bounded

    def __post_init__(self):
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0 (e.g. 1e-6), got {self.kl_weight}")

    def __call__(self, model, images, generator) -> dict[str, torch.Tensor]:
        recon, posterior = model(images, generator=generator)  # the reparameterised sample uses the generator
        return vae_loss(images, recon, posterior, self.kl_weight)


#################################################################################
#                 The classifier: name the five attributes                       #
#################################################################################

def blur3x3(images: torch.Tensor) -> torch.Tensor:
    """Soften images (B, C, H, W) with the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 (edges replicated)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype, device=images.device)
    kernel = (k[:, None] * k[None, :] / 16).expand(images.shape[1], 1, 3, 3)  # (C, 1, 3, 3): one per channel
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


def augment(x: torch.Tensor, generator, noise_std: float, blur_prob: float) -> torch.Tensor:
    """Make clean renders look a bit more like diffusion samples: some blurred, all with a little noise."""
    device = generator.device if generator is not None else x.device
    if blur_prob > 0:
        soft = torch.rand(len(x), generator=generator, device=device).to(x.device) < blur_prob  # (B,) to blur
        x = torch.where(soft[:, None, None, None], blur3x3(x), x)
    if noise_std > 0:
        sigma = torch.rand(len(x), 1, 1, 1, generator=generator, device=device).to(x.device) * noise_std
        x = x + sigma * torch.randn(x.shape, generator=generator, device=device).to(x.device)  # a level per image
    return x


def classification_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the attribute heads (each head is its own softmax); targets (B, 5) in VOCAB order."""
    return sum(F.cross_entropy(logits[key], targets[:, i]) for i, key in enumerate(VOCAB))


@dataclass
class ClassifierLoss:
    """Train the shapes classifier on augmented renders; targets are course_lib.data.attribute_indices stacked."""

    noise_std: float = 0.1  # add N(0, s^2) noise, s ~ U(0, noise_std) per image (0 = off)
    blur_prob: float = 0.5  # share of images softened by a 3x3 binomial blur (0 = off)

    def __post_init__(self):
        if self.noise_std < 0 or not 0 <= self.blur_prob <= 1:
            raise ValueError(f"noise_std must be >= 0 and blur_prob in [0, 1]; got {self.noise_std}, {self.blur_prob}")

    def __call__(self, model, batch, generator) -> torch.Tensor:
        images, targets = batch
        return classification_loss(model(augment(images, generator, self.noise_std, self.blur_prob)), targets)


#################################################################################
#                 CLIP: match each image with its own caption                   #
#################################################################################

@dataclass
class ContrastiveLoss:
    """CLIP's symmetric InfoNCE loss (Radford et al. 2021, fig. 3), computed by open_clip's ClipLoss.

        logits = s · norm(img) · norm(txt)^T,   loss = (CE(logits, I) + CE(logits^T, I)) / 2

    Under torchrun each rank contrasts its own slice of the batch (open_clip can also gather features across
    ranks for more negatives; the course's batches are small enough that it does not).
    """

    max_logit_scale: float = 100.0  # s may not grow past this (CLIP: the temperature stays >= 1/100)
    clip_loss: object = field(default=None, init=False, repr=False)  # open_clip.loss.ClipLoss, made on first use

    def __call__(self, model, batch, generator) -> torch.Tensor:
        if self.clip_loss is None:
            from open_clip.loss import ClipLoss  # open_clip is slow to import: only CLIP training needs it

            self.clip_loss = ClipLoss()
        images, tokens = batch
        if len(images) < 2:
            raise ValueError("a contrastive loss needs negatives: a batch (per process) of at least 2 pairs")
        image_features, text_features, logit_scale = model(images, tokens)  # normalised features, s = e^t
        return self.clip_loss(image_features, text_features, logit_scale)

    def after_step(self, model) -> None:
        """Clamp the learned log-temperature t to [0, ln max_logit_scale], as CLIP and open_clip do."""
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(self.max_logit_scale))


#################################################################################
#        Latent consistency distillation: many guided steps -> a few            #
#################################################################################

@dataclass
class ConsistencyDistillationLoss:
    """Latent consistency distillation (Luo et al. 2023, Algorithm 1), as diffusers' train_lcm_distill_sd does it.

    The student f(x_t, t, w) = c_skip(t) x_t + c_out(t) x0_pred learns to give the same clean image from x_t as its
    slowly moving copy (the target network, the loop's EMA) gives from x_{t-k}, where x_{t-k} is one DDIM step of
    the teacher with classifier-free guidance of weight w. The student gets w as an input (a guidance-distilled
    U-Net), so at sampling time one pass replaces CFG's two.
    """

    schedule: NoiseSchedule  # the teacher's forward process
    teacher: torch.nn.Module = field(repr=False)  # a frozen text-conditional eps-model (shapes32-t2i)
    empty_cond: tuple = field(repr=False)  # (tokens (L, D), mask (L,)) of "": the teacher's unconditional input
    skip: int = 20  # k: one teacher DDIM step spans k timesteps, a 50-step grid for T = 1000 (the paper's k = 20)
    w_min: float = 1.0  # guidance weights w ~ U(w_min, w_max), guidance_scale = 1 + w: 2..8 covers the course's 5
    w_max: float = 7.0
    huber_c: float | None = 0.03  # pseudo-Huber constant (0.00054 sqrt(3 * 32 * 32), Song & Dhariwal 2023); None: L2
    needs_ema = True  # the target network is the training loop's EMA of the student

    def __post_init__(self):
        T = self.schedule.num_train_timesteps
        if not 1 <= self.skip < T or T % self.skip:
            raise ValueError(f"skip must divide num_train_timesteps={T} (e.g. 20 for a 50-step grid), got {self.skip}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= w_min <= w_max, got {self.w_min}, {self.w_max}")
        self.teacher.requires_grad_(False).eval()

    def __call__(self, model, batch, generator, ema=None) -> torch.Tensor:
        if ema is None:
            raise ValueError("consistency distillation needs a target network: train with TrainConfig.ema_decay set")
        x0, cond, cond_mask = batch
        B, device, gen_device = x0.shape[0], x0.device, (generator.device if generator is not None else x0.device)
        # a random point t on the teacher's DDIM grid (k-1, 2k-1, ..., T-1) and the grid point one step below it
        index = torch.randint(0, self.schedule.num_train_timesteps // self.skip, (B,), generator=generator,
                              device=gen_device).to(device)
        t = (index + 1) * self.skip - 1  # (B,)
        t_prev = (t - self.skip).clamp(min=0)
        w = (self.w_min + (self.w_max - self.w_min) * torch.rand(B, generator=generator, device=gen_device)).to(device)
        eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(device)
        x_t = self.schedule.add_noise(x0, eps, t)
        a_t, a_prev = (self._alpha_bar(s, x0) for s in (t, t_prev))  # (B, 1, 1, 1) each

        # the student's clean image from x_t
        prediction = self._consistency(model(x_t, t, cond=cond, cond_mask=cond_mask, w=w), x_t, t, a_t)
        with torch.no_grad():
            # one DDIM step of the teacher with CFG at weight w (both halves in one batch: uncond, then cond)
            empty_tokens, empty_mask = (e.to(device).expand(B, *e.shape) for e in self.empty_cond)
            eps_both = self.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), cond=torch.cat([empty_tokens, cond]),
                                    cond_mask=torch.cat([empty_mask, cond_mask]))  # (2B, C, H, W)
            eps_uncond, eps_cond = eps_both.float().chunk(2)
            eps_teacher = cfg(eps_uncond, eps_cond, 1 + w.view(-1, *[1] * (x0.ndim - 1)))
            x_prev = a_prev.sqrt() * x0_from_eps(x_t, eps_teacher, a_t) + (1 - a_prev).sqrt() * eps_teacher
            # ...and the target network's clean image from there
            target = self._consistency(ema(x_prev, t_prev, cond=cond, cond_mask=cond_mask, w=w), x_prev, t_prev,
                                       a_prev)
        error = (prediction.float() - target.float()) ** 2
        if self.huber_c is None:
            return error.mean()
        return (torch.sqrt(error + self.huber_c**2) - self.huber_c).mean()  # pseudo-Huber: L2 near 0, L1 far off

    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t as (B, 1, 1, 1) on like's device and dtype."""
        alpha_bar = self.schedule.alphas_cumprod[t.cpu()].to(device=like.device, dtype=like.dtype)
        return alpha_bar.view(-1, *[1] * (like.ndim - 1))  # (B, 1, 1, 1)

    @staticmethod
    def _consistency(eps, x_t, t, alpha_bar) -> torch.Tensor:
        """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(eps): the clean image a consistency model reads off x_t."""
        c_skip, c_out = (c.view(-1, *[1] * (x_t.ndim - 1)) for c in consistency_scalings(t))  # (B, 1, 1, 1)
        return c_skip * x_t + c_out * x0_from_eps(x_t, eps.float(), alpha_bar)
