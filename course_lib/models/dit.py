"""A Diffusion Transformer eps_theta(x_t, t, cond) (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"; the reference code is facebookresearch/DiT's models.py).

Cut the image into p x p patches, turn each into a token, add a fixed 2-D sin-cos position, run N transformer
blocks whose LayerNorms are scaled, shifted and gated by the timestep (and class or text) embedding (adaLN-Zero),
then turn every token back into its p x p patch of predicted noise. The work per call is about
N * T * (12 d^2 + 2 T d) multiply-adds for T = (H / p)^2 tokens of width d: halving p quadruples T, and so the
FLOPs, without adding a single parameter.

Conditioning fits the course's `net(x_t, t, cond=None, cond_mask=None)`, so guidance, `generate`, the player and
every sampler take a DiT unchanged:
  class-conditional (num_classes set): cond is a (B,) LongTensor of class ids; None means the extra null class;
  text-conditional (cond_dim set): cond is (B, L, cond_dim) CLIP token embeddings, pooled into the adaLN
  embedding ("pooled"), attended to by a cross-attention in every block ("cross", as PixArt-alpha) or both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import TimestepEmbedder, TokenCrossAttention, TokenSelfAttention, broadcast_timesteps

TEXT_CONDITIONING = ("pooled", "cross", "both")


@dataclass
class DiTConfig:
    """Shape of a DiT; `asdict(config)` is what checkpoints store."""

    in_channels: int = 3  # channels of x_t (3 for pixels, 4 for VAE latents)
    image_size: int = 32  # H = W of x_t
    patch_size: int = 4  # p: each p x p patch is one token, so T = (image_size / p)^2 tokens
    hidden_size: int = 128  # d, the width of every token
    depth: int = 4  # N transformer blocks
    num_heads: int = 4  # attention heads; must divide hidden_size
    mlp_ratio: float = 4.0  # the MLP's hidden width is mlp_ratio * d
    learn_sigma: bool = False  # also output the variance interpolation v (DiT, Improved DDPM): 2C channels, eps first
    num_classes: int | None = None  # class-conditional: cond = class ids in [0, num_classes); num_classes = "null"
    cond_dim: int | None = None  # text-conditional: cond = (B, L, cond_dim) token embeddings
    text_conditioning: str = "pooled"  # how text enters: "pooled", "cross" or "both" (text-conditional only)
    freq_dim: int = 256  # sinusoidal features of t before the timestep MLP
    # diffusers' DiT divides its frequencies' exponent by half - 1 (the paper by half): 1 reproduces diffusers
    downscale_freq_shift: float = 0.0
    ff_norm_eps: float = 1e-6  # eps of the LayerNorm before the MLP (the paper's 1e-6; diffusers' `norm_eps`)

    def __post_init__(self):
        if self.patch_size < 1 or self.image_size < 1:
            raise ValueError(f"patch_size and image_size must be >= 1, got {self.patch_size} and {self.image_size}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (the 2-D sin-cos positions split it into four), "
                             f"got {self.hidden_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.num_classes is not None and self.cond_dim is not None:
            raise ValueError("a DiT is class-conditional (num_classes) or text-conditional (cond_dim), not both")
        if self.text_conditioning not in TEXT_CONDITIONING:
            raise ValueError(f"text_conditioning must be one of {TEXT_CONDITIONING}; got {self.text_conditioning!r}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


#################################################################################
#                  Patches and their positions, and adaLN's modulate            #
#################################################################################

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Cut images into p x p patches, one row per patch in raster order: (B, C, H, W) -> (B, T, p*p*C)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)  # (B, T, p*p*C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Put the patches back: (B, T, p*p*C) -> (B, C, H, W), H = W = p * sqrt(T) (as DiT's and diffusers' code)."""
    B, T, _ = tokens.shape
    h = w = int(math.isqrt(T))
    x = tokens.reshape(B, h, w, p, p, channels)  # (B, h, w, p, p, C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * p, w * p)  # (B, C, H, W)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE's get_2d_sincos_pos_embed, which DiT uses): (grid*grid, dim).

    Half the channels encode the column, half the row, each as 1-D sin-cos features with period up to 10000."""
    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
        args = pos.reshape(-1)[:, None] * omega[None, :]  # (grid*grid, dim/4)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (grid*grid, dim/2)

    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()  # (grid*grid, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with a (B, d) shift and scale for every token of (B, T, d)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


#################################################################################
#                         The adaLN-Zero block and the head                     #
#################################################################################

class DiTBlock(nn.Module):
    """Self-attention and an MLP, each after a LayerNorm that c shifts and scales and before a gate c sets.

    The six (B, d) vectors come from one linear map of c, initialised to zero: every block starts as the identity
    ("adaLN-Zero"). A text DiT with cross-attention attends to the caption between the two (PixArt-alpha)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = TokenSelfAttention(d, cfg.num_heads)
        self.cross = None
        if cfg.cond_dim is not None and cfg.text_conditioning in ("cross", "both"):
            self.norm_cross = nn.LayerNorm(d, eps=1e-6)
            self.cross = TokenCrossAttention(d, cfg.cond_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.ff_norm_eps)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, cond=None, cond_mask=None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, d)
        x = x + gate_msa[:, None, :] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross is not None and cond is not None:
            x = x + self.cross(self.norm_cross(x), cond, cond_mask)
        return x + gate_mlp[:, None, :] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm modulated by c, then a linear map from each token to its patch's p*p*C outputs (zero-init)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, cfg.patch_size ** 2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, d)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p*p*C_out)


#################################################################################
#                                   The DiT                                     #
#################################################################################

class DiT(nn.Module):
    """The Diffusion Transformer of Peebles & Xie (2023), class- or text-conditional, with adaLN-Zero blocks."""

    kind = "dit"  # key in course_lib.models.MODELS, stored in checkpoints
    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)  # a linear map per patch
        self.register_buffer("pos_embed", sincos_pos_embed(d, cfg.image_size // cfg.patch_size)[None],
                             persistent=False)  # (1, T, d): computed from the config, not learned
        self.t_embedder = TimestepEmbedder(cfg.freq_dim, d, flip_sin_to_cos=True,  # DiT: cos first
                                           downscale_freq_shift=cfg.downscale_freq_shift)
        # class ids, plus one row for the "null" class that classifier-free guidance's dropped labels use
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, d) if cfg.num_classes is not None else None
        pooled = cfg.cond_dim is not None and cfg.text_conditioning in ("pooled", "both")
        self.text_proj = nn.Linear(cfg.cond_dim, d) if pooled else None  # the caption's mean token -> c
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self):
        """As the paper's code: Xavier-uniform linear maps, N(0, 0.02) embeddings, and zero for every adaLN map and
        the output layer (adaLN-Zero), so the untrained DiT is the identity on its tokens and predicts eps = 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the patch embedding is a linear map too
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        zero = [block.adaLN_modulation[-1] for block in self.blocks]
        zero += [block.cross.proj_out for block in self.blocks if block.cross is not None]
        zero += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_inputs(self, x_t, t, cond, cond_mask) -> torch.Tensor:
        cfg = self.config
        size = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != size:
            raise ValueError(f"x_t must have shape (B, {', '.join(map(str, size))}) (a DiT's position embedding is "
                             f"made for one size); got {tuple(x_t.shape)}")
        B = x_t.shape[0]
        t = broadcast_timesteps(t, B, x_t.device)
        if cond is None:
            if cond_mask is not None:
                raise ValueError("cond_mask was given without cond")
        elif cfg.num_classes is not None:
            if cond.shape != (B,) or cond.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"this DiT is class-conditional: cond must be a ({B},) LongTensor of class ids in "
                                 f"[0, {cfg.num_classes}]; got {cond.dtype} {tuple(cond.shape)}")
            if not cond.is_meta and (cond.min() < 0 or cond.max() > cfg.num_classes):  # (meta: shapes only)
                raise ValueError(f"class ids must be in [0, {cfg.num_classes}] ({cfg.num_classes} = the null class), "
                                 f"got {cond.min().item()}..{cond.max().item()}")
        elif cfg.cond_dim is not None:
            if cond.ndim != 3 or cond.shape[0] != B or cond.shape[2] != cfg.cond_dim:
                raise ValueError(f"cond must have shape ({B}, L, {cfg.cond_dim}) (text token embeddings); "
                                 f"got {tuple(cond.shape)}")
            if cond_mask is not None and (cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool):
                raise ValueError(f"cond_mask must be a bool tensor of shape {tuple(cond.shape[:2])} "
                                 f"(True = real token); got {cond_mask.dtype} {tuple(cond_mask.shape)}")
        else:
            raise ValueError("this DiT is unconditional (config.num_classes and config.cond_dim are None), so it "
                             "takes no cond")
        return t

    def embed_condition(self, t, cond, cond_mask, batch: int) -> torch.Tensor:
        """c, the (B, d) vector every adaLN reads: the timestep's embedding plus the class's or the caption's."""
        c = self.t_embedder(t)  # (B, d)
        if self.y_embedder is not None:
            if cond is None:
                cond = torch.full((batch,), self.config.num_classes, device=c.device)  # the null class
            c = c + self.y_embedder(cond)
        if self.text_proj is not None and cond is not None:  # (no caption at all: no text term; guidance and
            #                                                  caption dropout pass the empty prompt's tokens instead)
            mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=c.device) if cond_mask is None else cond_mask
            weights = mask.to(cond.dtype)[:, :, None]  # (B, L, 1)
            pooled = (cond * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, cond_dim): mean of real tokens
            c = c + self.text_proj(pooled)
        return c

    def forward_full(self, x_t: torch.Tensor, t, cond=None, cond_mask=None) -> torch.Tensor:
        """Every output channel: eps, and with learn_sigma also v (B, 2C, H, W), as diffusers' DiT returns."""
        t = self._check_inputs(x_t, t, cond, cond_mask)
        text = cond.to(x_t.dtype) if cond is not None and self.config.cond_dim is not None else None
        c = self.embed_condition(t, cond, cond_mask, x_t.shape[0])  # (B, d)
        x = self.x_embedder(x_t).flatten(2).transpose(1, 2) + self.pos_embed  # (B, d, h, w) -> (B, T, d)
        for block in self.blocks:
            x = block(x, c, text, cond_mask if text is not None else None)
        x = self.final_layer(x, c)  # (B, T, p*p*C_out)
        return unpatchify(x, self.config.patch_size, self.config.out_channels)  # (B, C_out, H, W)

    def forward(self, x_t: torch.Tensor, t, cond=None, cond_mask=None) -> torch.Tensor:
        """Predict the noise eps in x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (the first C channels)."""
        return self.forward_full(x_t, t, cond, cond_mask)[:, :self.config.in_channels]

    @classmethod
    def from_diffusers(cls, model) -> "DiT":
        """A course DiT with the weights of a diffusers `DiTTransformer2DModel` (class-conditional, adaLN-Zero),
        giving its outputs (eps, and v for a learned-sigma model) to float32 rounding."""
        cfg = model.config
        if cfg.activation_fn != "gelu-approximate" or not cfg.attention_bias or cfg.norm_elementwise_affine:
            raise ValueError(f"only DiT's own design converts (activation 'gelu-approximate', attention_bias True, "
                             f"norm_elementwise_affine False); got {cfg.activation_fn!r}, {cfg.attention_bias}, "
                             f"{cfg.norm_elementwise_affine}")
        out_channels = model.out_channels
        if out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise ValueError(f"out_channels must be in_channels (eps) or twice it (eps, then v); got {out_channels}")
        blocks = model.transformer_blocks
        # diffusers keeps a copy of the timestep + class embedder in every block (norm1.emb) and uses block 0's
        # for the output layer; a converted checkpoint holds identical copies, the paper one shared embedder
        first = blocks[0].norm1.emb.state_dict()
        for i, block in enumerate(blocks[1:], start=1):
            if any(not torch.equal(v, first[k]) for k, v in block.norm1.emb.state_dict().items()):
                raise ValueError(f"block {i}'s timestep/class embedder differs from block 0's: this DiT has one "
                                 f"embedder shared by all blocks, as in the paper, and cannot hold {len(blocks)} "
                                 f"different ones (a checkpoint converted from the paper's DiT has equal copies)")
        dit = cls(DiTConfig(
            in_channels=cfg.in_channels, image_size=cfg.sample_size, patch_size=cfg.patch_size,
            hidden_size=cfg.num_attention_heads * cfg.attention_head_dim, depth=cfg.num_layers,
            num_heads=cfg.num_attention_heads, learn_sigma=out_channels == 2 * cfg.in_channels,
            num_classes=cfg.num_embeds_ada_norm,
            downscale_freq_shift=1.0,  # diffusers' Timesteps(downscale_freq_shift=1): exponent / (half - 1)
            ff_norm_eps=cfg.norm_eps))  # diffusers' norm3 (before the MLP) takes norm_eps; the paper has 1e-6
        emb = blocks[0].norm1.emb
        state = {"x_embedder.weight": model.pos_embed.proj.weight, "x_embedder.bias": model.pos_embed.proj.bias,
                 "t_embedder.mlp.0.weight": emb.timestep_embedder.linear_1.weight,
                 "t_embedder.mlp.0.bias": emb.timestep_embedder.linear_1.bias,
                 "t_embedder.mlp.2.weight": emb.timestep_embedder.linear_2.weight,
                 "t_embedder.mlp.2.bias": emb.timestep_embedder.linear_2.bias,
                 "y_embedder.weight": emb.class_embedder.embedding_table.weight,
                 "final_layer.adaLN_modulation.1.weight": model.proj_out_1.weight,
                 "final_layer.adaLN_modulation.1.bias": model.proj_out_1.bias,
                 "final_layer.linear.weight": model.proj_out_2.weight,
                 "final_layer.linear.bias": model.proj_out_2.bias}
        for i, block in enumerate(blocks):
            attn = block.attn1
            state.update({
                f"blocks.{i}.adaLN_modulation.1.weight": block.norm1.linear.weight,
                f"blocks.{i}.adaLN_modulation.1.bias": block.norm1.linear.bias,
                f"blocks.{i}.attn.qkv.weight": torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]),
                f"blocks.{i}.attn.qkv.bias": torch.cat([attn.to_q.bias, attn.to_k.bias, attn.to_v.bias]),
                f"blocks.{i}.attn.proj_out.weight": attn.to_out[0].weight,
                f"blocks.{i}.attn.proj_out.bias": attn.to_out[0].bias,
                f"blocks.{i}.mlp.0.weight": block.ff.net[0].proj.weight,
                f"blocks.{i}.mlp.0.bias": block.ff.net[0].proj.bias,
                f"blocks.{i}.mlp.2.weight": block.ff.net[2].weight, f"blocks.{i}.mlp.2.bias": block.ff.net[2].bias})
        dit.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return dit.to(device=model.device, dtype=model.dtype)


#################################################################################
#                                  Presets                                      #
#################################################################################

# The paper's Table 1: (depth N, width d, heads); a name adds the patch size, e.g. "DiT-S/2".
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# The course's CPU-sized DiTs (chapter 6 trains these on the 8x8x4 latents of shapes64-vae): depth, width, heads.
COURSE_SIZES = {"Ti": (4, 64, 4), "Mi": (6, 96, 4), "Sm": (8, 128, 4)}


def dit(name: str = "DiT-S/2", **overrides) -> DiT:
    """A DiT by its paper-style name, `DiT-<size>/<patch>`: sizes S, B, L, XL (the paper's, on 32x32x4 latents of
    256x256 images, 1000 classes) and Ti, Mi, Sm (the course's, on 8x8x4 latents); overrides replace config fields."""
    try:
        size, patch = name.removeprefix("DiT-").split("/")
        depth, width, heads = {**DIT_SIZES, **COURSE_SIZES}[size]
        patch = int(patch)
    except (ValueError, KeyError):
        raise ValueError(f"unknown DiT {name!r}: use 'DiT-<size>/<patch>' with size in "
                         f"{sorted({**DIT_SIZES, **COURSE_SIZES})}, e.g. 'DiT-S/2'") from None
    latents = dict(in_channels=4, image_size=32, num_classes=1000) if size in DIT_SIZES else \
        dict(in_channels=4, image_size=8)
    return DiT(DiTConfig(**{**latents, "patch_size": patch, "hidden_size": width, "depth": depth,
                            "num_heads": heads, **overrides}))
