"""A tiny CLIP (Radford et al. 2021) for the shapes world, built with open_clip, and the text encoder it provides.

The architecture is open_clip's own `CLIP` (a ViT image tower + a causal text transformer), registered under the
name "shapes-clip" from `configs/shapes-clip.json`; the tokenizer is open_clip's BPE tokenizer, whose vocabulary
ships inside the package, so nothing is ever downloaded. Images go into the image tower exactly as the dataset
renders them, (B, 3, 32, 32) in [-1, 1]: the model is trained from scratch on that range, so no mean/std
normalisation transform is needed. The text-to-image U-Net cross-attends to `TextEncoder`'s per-token features.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import open_clip
import torch
import torch.nn as nn
from open_clip.loss import ClipLoss
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

import course_lib
from course_lib import pretrained
from course_lib.data import BACKGROUNDS, COLORS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, TEMPLATES, Attributes, \
    ShapesDataset, caption
from course_lib.training import learning_rate

MODEL_NAME = "shapes-clip"  # open_clip derives a config's model name from its file name
CONFIG_PATH = Path(__file__).parent / "configs" / f"{MODEL_NAME}.json"
KIND = "open_clip"  # the `kind` stored in checkpoint JSON files
EVAL_N, EVAL_SEED = 512, 123  # fresh renders (a seed training never uses) for the metrics of a checkpoint


#################################################################################
#                      The model and its tokenizer                              #
#################################################################################

@contextlib.contextmanager
def _quiet_open_clip():
    """Silence open_clip's expected INFO/WARNING logs ("No pretrained weights loaded ...").

    open_clip logs through the module-level `logging.info/warning`, which install a stderr handler on the root
    logger when it has none; a temporary NullHandler avoids that side effect on the caller's logging setup.
    """
    root, previous, null = logging.getLogger(), logging.root.manager.disable, logging.NullHandler()
    root.addHandler(null)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(null)


def register() -> None:
    """Make open_clip know the "shapes-clip" architecture (idempotent)."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def clip_config() -> dict:
    """A copy of the registered open_clip model config (embed_dim, vision_cfg, text_cfg)."""
    register()
    return open_clip.get_model_config(MODEL_NAME)


def create_clip(config: dict | None = None) -> open_clip.CLIP:
    """A freshly initialised shapes-clip (random weights, on the CPU); `config` replaces the registered one."""
    register()
    config = config if config is not None else clip_config()
    with _quiet_open_clip():
        # pretrained=None: random init, no download; keys of `config` override the registered config.
        model = open_clip.create_model(MODEL_NAME, pretrained=None, **config)
    model.clip_config = config  # what save_clip writes into the checkpoint's JSON
    return model


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """open_clip's BPE tokenizer for shapes-clip (context_length 32), loaded once."""
    register()
    with _quiet_open_clip():
        return open_clip.get_tokenizer(MODEL_NAME)


def tokenize(prompts) -> torch.Tensor:
    """Prompt(s) -> LongTensor (B, context_length): SOT, BPE tokens, EOT, zero padding; too long -> ValueError."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list/tuple of str; got {type(prompts).__name__}")
    elif not prompts:
        raise ValueError("prompts must be a str or a non-empty list/tuple of str; got an empty list")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be a str or a list/tuple of str; got an element of type "
                            f"{type(p).__name__}: {p!r}")
    tokenizer = get_tokenizer()
    limit = tokenizer.context_length - 2  # room for the start- and end-of-text tokens
    for p in prompts:
        n = len(tokenizer.encode(p))
        if n > limit:  # open_clip would silently cut the prompt; we refuse instead
            raise ValueError(f"prompt {p!r} has {n} tokens; the maximum is {limit} tokens "
                             f"(context_length {tokenizer.context_length} minus start and end): shorten it")
    return tokenizer(list(prompts))  # (B, L)


def encode_text_tokens(model: open_clip.CLIP, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token text features (B, L, D) after ln_final: CLIP.encode_text without pooling and projection.

    Also returns mask (B, L), True up to and including the end-of-text token (the tokens worth attending to).
    """
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(f"model must be an open_clip.CLIP (e.g. create_clip()); got {type(model).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2 \
            or tokens.shape[1] != model.context_length:
        raise ValueError(f"tokens must be a LongTensor (B, {model.context_length}) from tokenize(); "
                         f"got {getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (B, L, D)
    x = x + model.positional_embedding.to(cast_dtype)  # (B, L, D) + (L, D)
    x = model.transformer(x, attn_mask=model.attn_mask)  # causal mask: token i only sees tokens 0..i
    x = model.ln_final(x)  # (B, L, D)
    eot = tokens.argmax(dim=-1)  # (B,): EOT has the largest id, as open_clip's "argmax" pooling assumes
    mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= eot[:, None]  # (B, L)
    return x, mask


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class TextEncoder(nn.Module):
    """A frozen CLIP text tower: prompts -> (tokens (B, L, D), mask (B, L)) for U-Net cross-attention.

    The empty prompt "" is valid and means "unconditional": its tokens are just SOT, EOT.
    """

    def __init__(self, model: open_clip.CLIP):
        super().__init__()
        self.clip = model.eval().requires_grad_(False)
        self.width = model.transformer.width  # D, the U-Net's cond_dim
        self.context_length = model.context_length  # L

    def train(self, mode: bool = True) -> "TextEncoder":
        """Stays in eval mode whatever the caller's mode: the encoder is frozen."""
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def forward(self, prompts, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a str or list of str on the CLIP's device (in chunks, so a whole dataset's captions fit)."""
        tokens = tokenize(prompts).to(_device_of(self.clip))  # (B, L)
        features, masks = zip(*(encode_text_tokens(self.clip, chunk) for chunk in tokens.split(batch_size)))
        return torch.cat(features), torch.cat(masks)  # (B, L, D), (B, L)


#################################################################################
#                   Contrastive training (the InfoNCE loss)                     #
#################################################################################

@dataclass
class ClipTrainConfig:
    """Hyper-parameters of one CLIP training run (defaults: the shipped shapes-clip, trained on 2 CPU cores)."""

    steps: int = 1500  # optimizer steps
    batch_size: int = 128  # image-caption pairs per step: every other pair in the batch is a negative
    lr: float = 1e-3  # peak AdamW learning rate (small models from scratch like a large lr)
    weight_decay: float = 0.1  # decoupled weight decay on weight matrices (not on gains, biases, logit_scale)
    warmup: int = 200  # steps of linear warm-up, then cosine decay to 0
    seed: int = 0  # seeds the dataset and the batch / template draws
    log_every: int = 50  # update the progress bar every this many steps
    n_images: int = 20000  # rendered training images (ShapesDataset size)
    image_size: int = 32  # must equal the model's image size
    exclude: tuple = HELD_OUT_PAIRS  # (shape, color) pairs never shown, to test composition later
    lr_schedule: str = "cosine"  # after warm-up (course_lib.training.learning_rate): "cosine" or "constant"

    def __post_init__(self):
        if min(self.steps, self.log_every, self.n_images) < 1 or self.warmup < 0 or self.lr <= 0:
            raise ValueError("steps, log_every and n_images must be >= 1, warmup >= 0 and lr > 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: a contrastive loss needs negatives in the batch")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        self.exclude = tuple(tuple(pair) for pair in self.exclude)  # JSON round trips give lists


class _CaptionedImages:
    """Images grouped by attribute combination, with every combination's caption pre-tokenized per template.

    A batch takes distinct combinations, so no caption in it also describes another image of the batch (no
    false negatives); each image gets a template drawn uniformly, as `caption(attrs, rng=rng)` does.
    """

    def __init__(self, dataset: ShapesDataset, device: torch.device):
        attrs = dataset.attributes()
        combos = sorted(set(attrs), key=lambda a: tuple(a.as_dict().values()))
        index = {a: i for i, a in enumerate(combos)}
        combo_id = torch.tensor([index[a] for a in attrs])  # (N,)
        self.order = torch.argsort(combo_id, stable=True).to(device)  # image indices grouped by combination
        self.counts = torch.bincount(combo_id, minlength=len(combos)).to(device)  # images per combination
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # where each group starts in `order`
        captions = [caption(a, t) for a in combos for t in range(len(TEMPLATES))]
        self.tokens = tokenize(captions).view(len(combos), len(TEMPLATES), -1).to(device)  # (C, T, L)
        self.images = dataset.images().to(device)  # (N, 3, H, W) in [-1, 1]

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, H, W), tokens (B, L)) of B distinct attribute combinations; generator on their device."""
        device = self.images.device
        c = torch.randperm(len(self.counts), generator=generator, device=device)[:batch_size]  # (B,) combinations
        u = torch.rand(batch_size, generator=generator, device=device)
        idx = self.order[self.starts[c] + (u * self.counts[c]).long()]  # a random image of each combination
        t = torch.randint(0, len(TEMPLATES), (batch_size,), generator=generator, device=device)  # its template
        return self.images[idx], self.tokens[c, t]


def _optimizer(model: nn.Module, config: ClipTrainConfig, device: torch.device) -> torch.optim.AdamW:
    # As open_clip's trainer: no weight decay on 1-D / 0-D tensors (LayerNorm gains, biases, class_embedding,
    # logit_scale); its AdamW betas / eps for CLIP.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
                             fused=device.type in ("cuda", "cpu"))  # fused: one kernel, ~6x faster on the CPU


def train_clip(model: open_clip.CLIP, config: ClipTrainConfig, *, device=None, progress: bool = True) -> dict:
    """Train image and text towers together with CLIP's symmetric InfoNCE loss (Radford et al. 2021, fig. 3).

        # logits = s · norm(img) · norm(txt)^T,  loss = (CE(logits, I) + CE(logits^T, I)) / 2   (open_clip ClipLoss)

    Returns dict(history=[loss per step], images_per_s=..., seconds=...); the model ends in eval mode.
    """
    device = torch.device(device) if device is not None else course_lib.device()
    if config.image_size != model.visual.image_size[0]:
        raise ValueError(f"config.image_size {config.image_size} != the model's image size {model.visual.image_size}")
    dataset = ShapesDataset(size=config.image_size, n=config.n_images, seed=config.seed, exclude=config.exclude)
    data = _CaptionedImages(dataset, device)
    if config.batch_size > len(data.counts):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(data.counts)} distinct attribute "
                         f"combinations in the data; use batch_size <= {len(data.counts)} (or more n_images)")
    model.to(device).train()
    optimizer, loss_fn = _optimizer(model, config, device), ClipLoss()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history, pending = [], []
    bar = tqdm(range(config.steps), disable=not progress, desc="train clip", unit="step", mininterval=1.0)
    start = time.perf_counter()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        images, tokens = data.sample(config.batch_size, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            image_features, text_features, logit_scale = model(images, tokens)  # normalised features, e^s
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as CLIP: the temperature may not go below 1/100
        pending.append(loss.detach())  # no .item() per step: it would sync the GPU
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.extend(torch.stack(pending).float().cpu().tolist())
            pending = []
            bar.set_postfix(loss=f"{history[-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    seconds = time.perf_counter() - start
    model.eval()
    return {"history": history, "images_per_s": config.steps * config.batch_size / seconds, "seconds": seconds}


#################################################################################
#                   Evaluation: zero-shot labels and retrieval                  #
#################################################################################

_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
# attribute -> (its values, value -> the prompt naming only that attribute)
ZERO_SHOT = {
    "shape": (SHAPES, lambda v: f"a {v}"),
    "color": (tuple(COLORS), lambda v: f"something {v}"),
    "size": (SIZES, lambda v: f"a {v} shape"),
    "position": (POSITIONS, lambda v: f"a shape {_WHERE[v]}"),
    "background": (BACKGROUNDS, lambda v: f"a shape on a {v} background"),
}


@torch.no_grad()
def encode_images(model: open_clip.CLIP, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings (N, embed_dim) of images (N, 3, H, W) in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (N, 3, H, W) in [-1, 1]; got {getattr(images, 'shape', images)}")
    device = _device_of(model)
    return torch.cat([model.encode_image(chunk.to(device), normalize=True).float()
                      for chunk in images.split(batch_size)])  # (N, E)


@torch.no_grad()
def _encode_tokens(model: open_clip.CLIP, tokens: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    tokens = tokens.to(_device_of(model))  # (B, L)
    return torch.cat([model.encode_text(chunk, normalize=True).float() for chunk in tokens.split(batch_size)])


def encode_texts(model: open_clip.CLIP, prompts) -> torch.Tensor:
    """L2-normalised text embeddings (B, embed_dim) of a str or list of str."""
    return _encode_tokens(model, tokenize(prompts))


def zero_shot_prompts(attribute: str) -> tuple[tuple[str, ...], list[str]]:
    """(values, one short prompt per value) used to classify `attribute` zero-shot."""
    if attribute not in ZERO_SHOT:
        raise ValueError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(ZERO_SHOT)}")
    values, prompt = ZERO_SHOT[attribute]
    return values, [prompt(v) for v in values]


@functools.lru_cache(maxsize=1)
def _ensemble_scenes() -> tuple[list, torch.Tensor]:
    """Every scene (all 840 attribute combinations) as a training-style caption naming all its attributes.

    Only the templates that mention the background are used (cycled): a caption without it would score both
    backgrounds alike and blur that attribute's vote.
    """
    every_value = [values for values, _ in ZERO_SHOT.values()]
    scenes = [Attributes(**dict(zip(ZERO_SHOT, combo))) for combo in itertools.product(*every_value)]
    full = [i for i, template in enumerate(TEMPLATES) if "{background}" in template]
    return scenes, tokenize([caption(a, full[i % len(full)]) for i, a in enumerate(scenes)])  # (S, L)


def _value_scores(model, images: torch.Tensor, attribute: str, ensemble: bool, scene_embeddings=None):
    """(values, scores (N, V)): cosine similarity to a short prompt, or p(value | image) from full captions.

    The ensemble (after Radford et al. 2021, sec. 3.1.4) scores every scene (all attribute combinations, each
    as a training-style caption), p(scene | image) = softmax(s · img · scene^T), and sums the probabilities of
    the scenes that show each value: the text encoder only reads the kind of sentence it was trained on.
    """
    values, prompts = zero_shot_prompts(attribute)
    if not ensemble:
        return values, images @ encode_texts(model, prompts).T  # (N, V)
    scenes, tokens = _ensemble_scenes()
    if scene_embeddings is None:
        scene_embeddings = _encode_tokens(model, tokens)  # (S, E)
    probs = (model.logit_scale.exp().float() * images @ scene_embeddings.T).softmax(dim=1)  # (N, S)
    value_of = torch.tensor([values.index(getattr(a, attribute)) for a in scenes], device=probs.device)  # (S,)
    return values, probs.new_zeros(len(probs), len(values)).index_add_(1, value_of, probs)  # (N, V)


def _best(values: tuple, scores: torch.Tensor) -> list[str]:
    return [values[i] for i in scores.argmax(dim=1).tolist()]


def zero_shot_predict(model: open_clip.CLIP, images: torch.Tensor, attribute: str, *,
                      ensemble: bool = False) -> list[str]:
    """Label each image with its best-scoring value (CLIP zero-shot classification, Radford et al. sec. 3.1)."""
    return _best(*_value_scores(model, encode_images(model, images), attribute, ensemble))


def zero_shot_accuracy(model: open_clip.CLIP, dataset: ShapesDataset, *, ensemble: bool = False) -> dict[str, float]:
    """Fraction of dataset images whose zero-shot label is right, per attribute."""
    images, attrs = encode_images(model, dataset.images()), dataset.attributes()
    scenes = _encode_tokens(model, _ensemble_scenes()[1]) if ensemble else None  # shared by all attributes
    accuracy = {}
    for name in ZERO_SHOT:
        labels = _best(*_value_scores(model, images, name, ensemble, scenes))
        accuracy[name] = sum(label == getattr(a, name) for label, a in zip(labels, attrs)) / len(attrs)
    return accuracy


def similarity_matrix(model: open_clip.CLIP, images: torch.Tensor, captions) -> torch.Tensor:
    """Cosine similarities (B_images, B_captions) on the CPU, e.g. for a heat map."""
    return (encode_images(model, images) @ encode_texts(model, captions).T).cpu()


def retrieval_top1(model: open_clip.CLIP, images: torch.Tensor, captions, attributes=None) -> float:
    """Text -> image top-1: fraction of captions whose own image is the most similar one of `images`.

    With `attributes` (one per image), retrieving another image with the same attributes also counts: the
    caption cannot tell such images apart.
    """
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) != len(images):
        raise ValueError(f"need one caption per image; got {len(captions)} captions for {len(images)} images")
    best = similarity_matrix(model, images, captions).argmax(dim=0)  # (B,): best image for each caption
    hits = [j == i or (attributes is not None and attributes[j] == attributes[i]) for i, j in enumerate(best.tolist())]
    return sum(hits) / len(hits)


#################################################################################
#                             Checkpoints                                       #
#################################################################################

def save_clip(model: open_clip.CLIP, name: str = MODEL_NAME, *, meta: dict | None = None, directory=None) -> Path:
    """Write `<name>.safetensors` (fp16) + `<name>.json` with course_lib.pretrained (CLIP has no noise schedule)."""
    config = {"model_name": MODEL_NAME, "model_cfg": getattr(model, "clip_config", None) or clip_config()}
    return pretrained.save(name, model, kind=KIND, config=config, schedule_name=None, meta=meta, directory=directory)


def load_clip(name: str = MODEL_NAME, device=None, directory=None) -> open_clip.CLIP:
    """Rebuild a CLIP from `<name>.json`, load its fp16 weights as float32 (safetensors only), eval mode.

    The checkpoint's JSON is kept as `model.meta`.
    """
    weights_path, json_path = pretrained._paths(name, directory)
    hint = pretrained._retrain(name)  # "retrain it with: python -m course_lib.train <name>"
    missing = [str(p) for p in (json_path, weights_path) if not p.exists()]
    if missing:
        raise pretrained.CheckpointNotFoundError(f"checkpoint {name!r} not found: missing {', '.join(missing)}; {hint}")
    try:
        meta = json.loads(json_path.read_text())
        if meta["kind"] != KIND:
            raise ValueError(f"kind is {meta['kind']!r}, not {KIND!r}: not a CLIP checkpoint")
        model = create_clip(meta["config"]["model_cfg"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise pretrained.CheckpointError(f"cannot build a CLIP from {json_path} ({type(e).__name__}: {e}); "
                                         f"{hint}") from e
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise pretrained.CheckpointError(f"cannot read weights {weights_path} ({type(e).__name__}: {e}); the file "
                                         f"is corrupted or truncated; {hint}") from e
    pretrained.check_state_matches(weights_path, model, state, hint)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.meta = meta
    device = torch.device(device) if device is not None else course_lib.device()
    return model.to(device).eval()


def load_text_encoder(name: str = MODEL_NAME, device=None, directory=None) -> TextEncoder:
    """The frozen text encoder of a saved CLIP checkpoint."""
    return TextEncoder(load_clip(name, device=device, directory=directory))


def train_recipe(out=None, *, device=None, command=None, progress=True, eval_n: int = EVAL_N, **overrides) -> Path:
    """Recreate the shipped shapes-clip, evaluate it and save it (`python -m course_lib.train shapes-clip`).

    overrides: ClipTrainConfig fields (None = keep the default), e.g. steps=..., batch_size=...; the metrics come
    from `eval_n` fresh renders (seed EVAL_SEED).
    """
    config = replace(ClipTrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    device = torch.device(device) if device is not None else course_lib.device()
    torch.manual_seed(config.seed)  # the initial weights
    model = create_clip()
    result = train_clip(model, config, device=device, progress=progress)
    test = ShapesDataset(size=config.image_size, n=eval_n, seed=EVAL_SEED)
    metrics = {"train_images_per_s": round(result["images_per_s"], 1), "train_seconds": round(result["seconds"], 1),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
               "eval": f"{eval_n} fresh renders, seed {EVAL_SEED}",
               "zero_shot": {k: round(v, 4) for k, v in zero_shot_accuracy(model, test).items()},
               "zero_shot_ensemble": {k: round(v, 4)
                                      for k, v in zero_shot_accuracy(model, test, ensemble=True).items()},
               "retrieval_top1": retrieval_top1(model, test.images(), test.captions()),
               "retrieval_top1_same_attributes": retrieval_top1(model, test.images(), test.captions(),
                                                                test.attributes())}
    tail = result["history"][-100:]  # one step's loss is noisy: keep the mean of the last 100
    meta = {"data": {"dataset": "shapes", "size": config.image_size, "n": config.n_images, "seed": config.seed,
                     "exclude": [list(pair) for pair in config.exclude]},
            "steps": config.steps, "final_loss": sum(tail) / len(tail), "metrics": metrics,
            "command": command or f"python -m course_lib.train {MODEL_NAME}", "train_config": asdict(config)}
    path = save_clip(model, meta=meta, directory=out)
    print(f"saved {path} (+ .json); final loss {meta['final_loss']:.3f}; zero-shot {metrics['zero_shot']}; "
          f"retrieval top-1 {metrics['retrieval_top1']:.3f}; {metrics['train_images_per_s']:.0f} images/s")
    return path
