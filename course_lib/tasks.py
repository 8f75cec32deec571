"""What a recipe trains a model to do, in four kinds: the objective, its data, and what the JSON records.

Each task turns a recipe's DataSpec into a batch source and a loss (`prepare`), and once training is done says
what the checkpoint's JSON keeps (`record`: metrics measured on fresh data, names of the helper checkpoints)
and what its preview PNG shows (`preview`). The training itself is always course_lib.training.train.

    Denoising       eps-prediction on images, VAE latents or points, maybe text-conditioned   EpsilonLoss
    Autoencoding    the VAE of latent diffusion                                              VAELoss
    Classification  the shapes attribute classifier behind course_lib.metrics               ClassifierLoss
    Contrastive     the CLIP whose text tower conditions the text-to-image models           ContrastiveLoss
    ConsistencyDistillation  a few-step LCM student of a text-to-image teacher     ConsistencyDistillationLoss
    Autoregression  next-token prediction over pixel tokens or VQ codes, caption-conditioned  TokenLoss
    Tokenizing      the VQ tokenizer whose codes the token transformer writes                 VQLoss
"""
from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from course_lib import device_of, pretrained
from course_lib.batches import CaptionBatches, TensorBatches
from course_lib.data import DataSpec, ShapesDataset, attribute_indices
from course_lib.guidance import GuidedModel
from course_lib.images import grid, png_bytes
from course_lib.latent import decode_latents, encode_latents, measure_scaling_factor, reconstruct
from course_lib.autoregressive import sample_tokens
from course_lib.losses import ClassifierLoss, ConsistencyDistillationLoss, ContrastiveLoss, EpsilonLoss, TokenLoss, \
    VAELoss, VQLoss
from course_lib.metrics import classifier_accuracy, psnr, retrieval_top1, zero_shot_accuracy
from course_lib.metrics.flops import count_flops
from course_lib.models import VQModel
from course_lib.models.ar import palette_of
from course_lib.samplers import get_sampler, make_timesteps
from course_lib.schedules import NoiseSchedule
from course_lib.tokens import ImageTokenizer


@dataclass
class Prepared:
    """What `train` needs from a task (data, loss_fn), and what its record / preview reuse afterwards."""

    data: object  # a course_lib.batches source
    loss_fn: object  # a course_lib.losses objective
    context: dict = field(default_factory=dict)  # e.g. the schedule, the text encoder, the training tensor


def _grid_png(images: torch.Tensor, nrow: int, scale: int) -> bytes:
    return png_bytes(grid(images, nrow=nrow), scale=scale)


#################################################################################
#                      Denoising: the diffusion models                          #
#################################################################################

@dataclass
class Denoising:
    """eps-prediction (Ho et al. 2020) on the DataSpec's images or points, or on a VAE's latents of the images."""

    schedule: str = "linear"  # NoiseSchedule.from_name name: "linear", "cosine", "scaled_linear"
    num_train_timesteps: int = 1000  # T of the noise schedule
    cond_drop_prob: float = 0.0  # caption dropout for classifier-free guidance (text-conditioned models)
    text_encoder: str | None = None  # CLIP checkpoint whose frozen token embeddings condition the model
    vae: str | None = None  # latent diffusion: train on this VAE checkpoint's scaled latents of the images
    sample_steps: int = 50  # sampler steps of the preview written next to the checkpoint
    guidance_scale: float = 5.0  # classifier-free guidance scale of the preview (text-conditioned models)
    sampler: str = "ddim"  # the preview's sampler (course_lib.samplers.SAMPLERS)

    def prepare(self, data: DataSpec, device) -> Prepared:
        schedule = NoiseSchedule.from_name(self.schedule, self.num_train_timesteps)
        x0 = data.load()  # (N, 3, H, W) images or (N, 2) points
        if self.vae is not None:  # latent diffusion: the denoiser only ever sees scaled latents
            x0 = encode_latents(pretrained.load_vae(self.vae, device=device), x0)  # (N, 4, H/8, W/8)
        context = {"schedule": schedule, "x0": x0}
        if self.text_encoder is None:
            return Prepared(TensorBatches(x0), EpsilonLoss(schedule, self.cond_drop_prob), context)
        encoder = pretrained.load_text_encoder(self.text_encoder, device=device)
        tokens, mask = encoder(data.shapes().captions())  # (N, L, D), (N, L): every caption, once
        empty_tokens, empty_mask = encoder("")  # a dropped caption becomes the empty prompt: the unconditional input
        loss_fn = EpsilonLoss(schedule, self.cond_drop_prob, (empty_tokens[0], empty_mask[0]))
        return Prepared(TensorBatches(x0, tokens, mask), loss_fn, {**context, "encoder": encoder})

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        return {"text_encoder": self.text_encoder, "vae": self.vae}

    @torch.no_grad()
    def preview(self, model, data: DataSpec, prepared: Prepared, n: int = 16, seed: int = 0) -> bytes:
        """n samples (trailing steps; with CFG on fresh captions, seed 1, for a text model) as a PNG."""
        if data.dataset != "shapes":
            return _scatter_png(self._sample(model, data, prepared, 2000, seed), prepared.context["x0"])
        samples = self._sample(model, data, prepared, n, seed)
        if self.vae is not None:
            samples = decode_latents(pretrained.load_vae(self.vae, device=device_of(model)), samples)
        return _grid_png(samples, nrow=int(np.ceil(np.sqrt(n))), scale=4)

    def _sample(self, model, data: DataSpec, prepared: Prepared, n: int, seed: int) -> torch.Tensor:
        cfg, schedule = model.config, prepared.context["schedule"]
        shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size) if data.dataset == "shapes" else (n, cfg.dim)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=generator).to(device_of(model))
        eps_model = model.eval()
        if self.text_encoder is not None:
            encoder = prepared.context["encoder"]
            prompts = dataclasses.replace(data, n=n, seed=1, hold_out=False).shapes().captions()
            eps_model = GuidedModel(model, *encoder(prompts), *encoder(""), self.guidance_scale)
        timesteps = make_timesteps(schedule, self.sample_steps)
        return get_sampler(self.sampler)(eps_model, x, schedule, timesteps, generator=generator).float().cpu()


@dataclass
class ConsistencyDistillation(Denoising):
    """Latent consistency distillation (Luo et al. 2023): a student that samples in a few steps what the teacher
    needs many guided steps for. Data and captions as in Denoising; the teacher's JSON names the schedule."""

    teacher: str = "shapes32-t2i"  # the text-to-image checkpoint distilled (also the student's init_from)
    skip: int = 20  # the teacher's DDIM step spans this many timesteps (a 50-step grid)
    w_min: float = 1.0  # guidance weights drawn for the teacher, guidance_scale = 1 + w
    w_max: float = 7.0
    huber_c: float | None = 0.03  # pseudo-Huber constant; None = L2
    sample_steps: int = 4
    sampler: str = "lcm"

    def prepare(self, data: DataSpec, device) -> Prepared:
        prepared = super().prepare(data, device)  # images, caption tokens, the empty prompt, the schedule
        teacher = pretrained.load_checkpoint(self.teacher, device)
        if teacher.meta.get("text_encoder") != self.text_encoder or teacher.schedule is None:
            raise ValueError(f"teacher {self.teacher!r} must be a text-conditional checkpoint using the text encoder "
                             f"{self.text_encoder!r}; its JSON names {teacher.meta.get('text_encoder')!r}")
        teacher_model = copy.deepcopy(teacher.model)  # (the cached checkpoint stays untouched)
        loss_fn = ConsistencyDistillationLoss(teacher.schedule, teacher_model, prepared.loss_fn.empty_cond,
                                              self.skip, self.w_min, self.w_max, self.huber_c)
        return Prepared(prepared.data, loss_fn, {**prepared.context, "schedule": teacher.schedule})

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        return {**super().record(model, data, prepared), "teacher": self.teacher,
                "distillation": {"skip": self.skip, "w_range": [self.w_min, self.w_max], "huber_c": self.huber_c,
                                 "guidance_scale_range": [1 + self.w_min, 1 + self.w_max]}}


def _scatter_png(samples: torch.Tensor, reference: torch.Tensor) -> bytes:
    """2-D samples as a scatter plot over the data (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(*reference[:2000].cpu().T.numpy(), s=2, c="0.75", label="data")
    ax.scatter(*samples.T.numpy(), s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


#################################################################################
#          Autoregression: the pixel and token transformers of chapter 8         #
#################################################################################

@dataclass
class Autoregression:
    """Next-token prediction (Image GPT; DALL-E 1 over VQ codes): the images become token sequences once, captions
    become CLIP token embeddings once, and the transformer learns p(token_i | tokens before i, caption)."""

    tokenizer: str | None = None  # a VQ checkpoint whose codes are the tokens; None: pixels through the data's palette
    text_encoder: str = "shapes-clip"  # CLIP checkpoint whose frozen token embeddings condition the model
    cond_drop_prob: float = 0.1  # caption dropout, for classifier-free guidance on the logits
    guidance_scale: float = 3.0  # the preview's CFG scale
    temperature: float = 1.0  # the preview's sampling temperature

    def prepare(self, data: DataSpec, device) -> Prepared:
        images, palette = data.load(), None  # (N, 3, H, W)
        if self.tokenizer is None:
            palette = palette_of(images)  # what Recipe.build_model gave the model (record checks)
            tokenizer = ImageTokenizer.from_palette(palette, data.size)
        else:
            tokenizer = ImageTokenizer.from_vq(pretrained.load_model(self.tokenizer, VQModel, device))
        tokens = tokenizer.encode(images)  # (N, grid * grid)
        encoder = pretrained.load_text_encoder(self.text_encoder, device=device)
        cond, mask = encoder(data.shapes().captions())  # (N, L, D), (N, L)
        empty_tokens, empty_mask = encoder("")
        loss_fn = TokenLoss(self.cond_drop_prob, (empty_tokens[0], empty_mask[0]))
        return Prepared(TensorBatches(tokens, cond, mask), loss_fn,
                        {"tokenizer": tokenizer, "encoder": encoder, "palette": palette})

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        tokenizer, encoder = prepared.context["tokenizer"], prepared.context["encoder"]
        if tokenizer.kind == "pixels" and model.config.palette != prepared.context["palette"]:
            raise ValueError("the model's palette is not its training data's, so its token values mean other "
                             "colours: build it with palette_from=<the data> (Recipe.build_model does)")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"the transformer's vocab_size {model.config.vocab_size} must be its tokenizer's "
                             f"{tokenizer.vocab_size} ({self.tokenizer or 'the palette'})")
        fresh = ShapesDataset(size=data.size, n=256, seed=999).images()
        error = (tokenizer.decode(tokenizer.encode(fresh)) - fresh).abs().max().item() * 127.5  # in 0..255 steps
        cond, mask = encoder("a red circle")
        tokens = torch.zeros(1, model.config.seq_len, dtype=torch.long, device=device_of(model))
        forward = count_flops(lambda: model(tokens, cond, mask)) / 1e9
        return {"text_encoder": self.text_encoder, "tokenizer": self.tokenizer,
                "metrics": {"vocab_size": model.config.vocab_size, "sequence_length": model.config.seq_len,
                            "tokenizer_max_error_0_255": round(error, 2),
                            "tokenizer_eval": "256 fresh renders, seed 999: largest channel error, encoded + decoded",
                            "forward_gflops_per_image": round(forward, 4)}}

    @torch.no_grad()
    def preview(self, model, data: DataSpec, prepared: Prepared, n: int = 16, seed: int = 0) -> bytes:
        """n samples with CFG on fresh captions (seed 1)."""
        encoder = prepared.context["encoder"]
        prompts = dataclasses.replace(data, n=n, seed=1, hold_out=False).shapes().captions()
        (cond, cond_mask), (uncond, uncond_mask) = encoder(prompts), encoder("")
        tokens = sample_tokens(model.eval(), n, cond=cond, cond_mask=cond_mask, uncond=uncond, uncond_mask=uncond_mask,
                               guidance_scale=self.guidance_scale, temperature=self.temperature,
                               generator=torch.Generator().manual_seed(seed))
        return _grid_png(prepared.context["tokenizer"].decode(tokens.cpu()), nrow=int(np.ceil(np.sqrt(n))), scale=4)


@dataclass
class Tokenizing:
    """A VQ tokenizer (van den Oord et al. 2017): reconstruction through the nearest codes; PSNR and codebook use."""

    beta: float = 0.25  # commitment weight
    eval_n: int = 512  # fresh renders (seed eval_seed) for the metrics in the JSON
    eval_seed: int = 999

    def prepare(self, data: DataSpec, device) -> Prepared:
        return Prepared(TensorBatches(data.load()), VQLoss(self.beta))

    @torch.no_grad()
    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        images = ShapesDataset(size=data.size, n=self.eval_n, seed=self.eval_seed).images()
        tokenizer = ImageTokenizer.from_vq(model.eval())
        codes = tokenizer.encode(images)
        counts = torch.bincount(codes.flatten(), minlength=model.config.codebook_size).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item()
        return {"metrics": {"psnr_db": round(psnr(tokenizer.decode(codes), images), 2),
                            "codes_used": int((counts > 0).sum()), "code_perplexity": round(perplexity, 1),
                            "tokens_per_image": codes.shape[1],
                            "eval": f"{self.eval_n} fresh renders, seed {self.eval_seed}"}}

    def preview(self, model, data: DataSpec, prepared: Prepared) -> bytes:
        """Two rows: 8 fresh renders, and their reconstructions through the codes."""
        images = ShapesDataset(size=data.size, n=8, seed=self.eval_seed).images()
        tokenizer = ImageTokenizer.from_vq(model.eval())
        return _grid_png(torch.cat([images, tokenizer.decode(tokenizer.encode(images))]), nrow=8, scale=4)


#################################################################################
#            The helper models: VAE, attribute classifier, CLIP                 #
#################################################################################

@dataclass
class Autoencoding:
    """A VAE (Rombach et al. 2022): L1 reconstruction + a faint KL; then its scaling factor and PSNR are measured."""

    kl_weight: float = 1e-6  # SD's VAE used 1e-6: just enough to keep latents bounded
    eval_n: int = 512  # fresh renders (seed eval_seed) for the PSNR in the JSON
    eval_seed: int = 999

    def prepare(self, data: DataSpec, device) -> Prepared:
        images = data.load()  # (N, 3, H, W)
        return Prepared(TensorBatches(images), VAELoss(self.kl_weight), {"images": images})

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        """Sets model.config.scaling_factor (measured on 2048 training images), then PSNR on fresh renders."""
        measure_scaling_factor(model, prepared.context["images"][:2048])
        images = ShapesDataset(size=data.size, n=self.eval_n, seed=self.eval_seed).images()
        with torch.no_grad():
            z = model.encode(images[:1].to(device_of(model))).mode()
        return {"metrics": {"psnr_db": round(psnr(reconstruct(model, images), images), 2),
                            "compression": images[0].numel() / z[0].numel(),  # 64*64*3 / (8*8*4) = 48
                            "eval": f"{self.eval_n} fresh renders, seed {self.eval_seed}",
                            "scaling_factor": round(model.config.scaling_factor, 5)}}

    def preview(self, model, data: DataSpec, prepared: Prepared) -> bytes:
        """Two rows: 8 fresh renders, and their reconstructions."""
        images = ShapesDataset(size=data.size, n=8, seed=self.eval_seed).images()
        return _grid_png(torch.cat([images, reconstruct(model, images)]), nrow=8, scale=2)


@dataclass
class Classification:
    """The shapes classifier: one cross-entropy per attribute on augmented renders; accuracy on fresh ones."""

    noise_std: float = 0.1  # augmentation: N(0, s^2) noise, s ~ U(0, noise_std) per image (0 = off)
    blur_prob: float = 0.5  # augmentation: share of images softened by a 3x3 binomial blur (0 = off)
    eval_n: int = 1000  # fresh renders (seed eval_seed) for the accuracy in the JSON
    eval_seed: int = 999

    def prepare(self, data: DataSpec, device) -> Prepared:
        ds = data.shapes()
        targets = torch.stack(list(attribute_indices(ds.attributes()).values()), dim=1)  # (N, 5), VOCAB order
        return Prepared(TensorBatches(ds.images(), targets), ClassifierLoss(self.noise_std, self.blur_prob))

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        test = ShapesDataset(size=data.size, n=self.eval_n, seed=self.eval_seed)
        accuracy = classifier_accuracy(model, test.images(), test.attributes())
        return {"metrics": {"accuracy": {k: round(v, 4) for k, v in accuracy.items()},
                            "eval": f"{self.eval_n} fresh renders, seed {self.eval_seed}"}}

    def preview(self, model, data: DataSpec, prepared: Prepared) -> None:
        return None


@dataclass
class Contrastive:
    """A CLIP (Radford et al. 2021): match each image with its caption; zero-shot and retrieval on fresh renders."""

    eval_n: int = 512  # fresh renders (seed eval_seed) for the metrics in the JSON
    eval_seed: int = 123

    def prepare(self, data: DataSpec, device) -> Prepared:
        return Prepared(CaptionBatches(data.shapes()), ContrastiveLoss())

    def record(self, model, data: DataSpec, prepared: Prepared) -> dict:
        test = ShapesDataset(size=data.size, n=self.eval_n, seed=self.eval_seed)
        images, captions = test.images(), test.captions()
        rounded = lambda accuracy: {k: round(v, 4) for k, v in accuracy.items()}  # noqa: E731
        return {"metrics": {
            "eval": f"{self.eval_n} fresh renders, seed {self.eval_seed}",
            "zero_shot": rounded(zero_shot_accuracy(model, test)),
            "zero_shot_ensemble": rounded(zero_shot_accuracy(model, test, ensemble=True)),
            "retrieval_top1": retrieval_top1(model, images, captions),
            "retrieval_top1_same_attributes": retrieval_top1(model, images, captions, test.attributes())}}

    def preview(self, model, data: DataSpec, prepared: Prepared) -> None:
        return None
