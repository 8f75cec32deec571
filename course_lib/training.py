"""Training a noise predictor with the simplified DDPM objective (Ho et al. 2020, eq. 14).

`train` is one visible loop: sample a batch, compute `diffusion_loss`, AdamW step, EMA update, and every
`ckpt_every` steps an atomic safetensors checkpoint that `train` resumes from with no lost steps (on CPU an
interrupted + resumed run ends with bit-identical weights).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import course_lib
from course_lib.pretrained import CheckpointError, check_state_matches

_STATE_FORMAT = "course_lib.train_state/1"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this number)
    batch_size: int = 64  # images (or points) per step, drawn with replacement from x0_data
    lr: float = 2e-4  # peak AdamW learning rate (DDPM used 2e-4 on CIFAR-10)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # steps of linear learning-rate warm-up from ~0 to lr
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decay to 0 at `steps`)
    ema_decay: float = 0.999  # EMA of the weights; the EMA copy is what gets sampled from
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off), as in DDPM
    seed: int = 0  # seeds batch indices, timesteps, noise, cond dropout and dropout layers
    ckpt_every: int = 0  # write ckpt_path every this many steps (0 = only at the end)
    log_every: int = 50  # update the progress bar / call the callback every this many steps
    cond_drop_prob: float = 0.0  # probability of replacing a sample's cond by the "empty" cond (for CFG)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1 or self.ckpt_every < 0 or self.warmup < 0:
            raise ValueError("steps, batch_size and log_every must be >= 1; ckpt_every and warmup >= 0")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0 or not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError("ema_decay and cond_drop_prob must be in [0, 1)")


@dataclass
class TrainResult:
    """What `train` returns: the trained model, its EMA copy and the per-step loss history."""

    model: nn.Module  # the raw (last-step) weights, in train mode
    ema: nn.Module  # exponential moving average of the weights, in eval mode: use this one to sample
    history: list[float] = field(repr=False)  # loss of every step from step 0 (also across resumes)
    steps: int  # steps done in total
    start_step: int = 0  # step this call resumed from (0 for a fresh run)
    seconds: float = 0.0  # wall time of this call's training loop
    images_per_s: float = 0.0  # training throughput of this call: (steps - start_step) * batch_size / seconds


def diffusion_loss(model, schedule, x0, *, generator=None, cond=None, cond_mask=None) -> torch.Tensor:
    """The simplified DDPM loss E_{t, eps} || eps - eps_theta(x_t, t) ||^2 (Ho et al. 2020, eq. 14)."""
    B, T = x0.shape[0], schedule.num_train_timesteps
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, T, (B,), generator=generator, device=gen_device).to(x0.device)  # t ~ Uniform{0..T-1}
    eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.add_noise(x0, eps, t)  # sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    return F.mse_loss(model(x_t, t, cond=cond, cond_mask=cond_mask).float(), eps.float())


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay (Loshchilov & Hutter 2017) — a pure function of step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)), so short runs still get a useful EMA."""
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


#################################################################################
#                                 The loop                                      #
#################################################################################

def train(model, schedule, x0_data, config: TrainConfig, *, cond_data=None, empty_cond=None, ckpt_path=None,
          device=None, progress=True, callback=None) -> TrainResult:
    """Train `model` to predict eps on x0_data (N, ...) with AdamW + EMA; resumes from ckpt_path if it exists.

    cond_data: optional tokens (N, L, D), or a tuple (tokens (N, L, D), mask (N, L) bool), one per x0.
    empty_cond: what a dropped cond becomes (tokens (L, D) or (tokens, mask)); None = mask every token out.
    callback(step, history) is called every `log_every` steps.
    """
    device = torch.device(device) if device is not None else course_lib.device()
    data, cond, cond_mask, empty = _prepare_data(x0_data, cond_data, empty_cond, config, device)
    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    generator = torch.Generator(device=device)
    step, history = 0, []
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # fork_rng: seed (and restore) the global RNG that dropout uses, without leaking into the caller's RNG.
    with torch.random.fork_rng(devices=rng_devices):
        generator.manual_seed(config.seed)
        torch.manual_seed(config.seed)
        if ckpt_path is not None and Path(ckpt_path).exists():
            step, history = load_train_state(ckpt_path, model, ema, optimizer, generator, device)
        start_step, start_time, pending = step, time.perf_counter(), []
        bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", unit="step",
                   mininterval=1.0)
        while step < config.steps:
            batch = _sample_batch(data, cond, cond_mask, empty, config, generator)  # (x0, cond, cond_mask)
            loss = train_step(model, ema, optimizer, schedule, batch, config, step, generator)
            pending.append(loss)  # no .item() here: it would sync the GPU every step
            step += 1
            bar.update(1)
            periodic = config.ckpt_every and step % config.ckpt_every == 0
            save_now = ckpt_path is not None and (step == config.steps or periodic)
            if save_now or step % config.log_every == 0 or step == config.steps:
                history.extend(torch.stack(pending).float().cpu().tolist())
                pending = []
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                if callback is not None:
                    callback(step, history)
            if save_now:
                save_train_state(ckpt_path, model, ema, optimizer, generator, step, history, config)
        bar.close()
    seconds = time.perf_counter() - start_time
    images_per_s = (step - start_step) * config.batch_size / seconds if step > start_step else 0.0
    return TrainResult(model, ema, history, step, start_step, seconds, images_per_s)


def train_step(model, ema, optimizer, schedule, batch, config, step, generator) -> torch.Tensor:
    """One AdamW step on the eps-loss of `batch` (bf16 autocast on CUDA), then the EMA update; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    x0, cond, cond_mask = batch
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=x0.device.type == "cuda"):
        loss = diffusion_loss(model, schedule, x0, generator=generator, cond=cond, cond_mask=cond_mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    update_ema(ema, model, ema_decay_at(step, config))
    return loss.detach()


def _prepare_data(x0_data, cond_data, empty_cond, config, device):
    """Move x0 (and cond tokens / masks) to the device once; check that they line up."""
    if not isinstance(x0_data, torch.Tensor) or not x0_data.is_floating_point() or x0_data.ndim < 2 or not len(x0_data):
        raise ValueError("x0_data must be a non-empty float tensor (N, ...), e.g. ShapesDataset(...).images()")
    data = x0_data.to(device)
    if cond_data is None:
        if config.cond_drop_prob > 0:
            raise ValueError("cond_drop_prob > 0 needs cond_data")
        return data, None, None, None
    cond, mask = cond_data if isinstance(cond_data, (tuple, list)) else (cond_data, None)
    if cond.ndim != 3 or len(cond) != len(data) or (mask is not None and mask.shape != cond.shape[:2]):
        raise ValueError(f"cond_data must be tokens ({len(data)}, L, D) [and a bool mask ({len(data)}, L)], "
                         f"one per x0; got {tuple(cond.shape)}")
    cond = cond.to(device)
    if mask is None and config.cond_drop_prob > 0 and empty_cond is None:
        mask = torch.ones(cond.shape[:2], dtype=torch.bool)  # dropping = masking out every token
    mask = mask.to(device, torch.bool) if mask is not None else None
    empty = None
    if empty_cond is not None:
        tokens, e_mask = empty_cond if isinstance(empty_cond, (tuple, list)) else (empty_cond, None)
        tokens = tokens.reshape(cond.shape[1:]).to(device)  # (L, D): one "empty" token sequence
        if (mask is None) != (e_mask is None):
            raise ValueError("give masks for both cond_data and empty_cond, or for neither")
        empty = (tokens, e_mask.reshape(cond.shape[1]).to(device, torch.bool) if e_mask is not None else None)
    return data, cond, mask, empty


def _sample_batch(data, cond, cond_mask, empty, config, generator):
    """A random batch (with replacement), with cond dropped to the empty cond at rate cond_drop_prob."""
    idx = torch.randint(0, len(data), (config.batch_size,), generator=generator, device=generator.device)
    idx = idx.to(data.device)
    if cond is None:
        return data[idx], None, None
    c = cond[idx]  # (B, L, D)
    c_mask = cond_mask[idx] if cond_mask is not None else None  # (B, L)
    if config.cond_drop_prob > 0:
        drop = torch.rand(config.batch_size, generator=generator, device=generator.device).to(data.device)
        drop = drop < config.cond_drop_prob  # (B,)
        if empty is None:
            c_mask = c_mask & ~drop[:, None]  # a fully masked sample gets no cross-attention at all
        else:
            c = torch.where(drop[:, None, None], empty[0], c)
            if c_mask is not None:
                c_mask = torch.where(drop[:, None], empty[1], c_mask)
    return data[idx], c, c_mask


#################################################################################
#                        Checkpoints of the training state                      #
#################################################################################

def save_train_state(path, model, ema, optimizer, generator, step, history, config) -> None:
    """Atomically write weights, EMA, AdamW state and RNG states (tensors) + step/history (metadata)."""
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():  # AdamW: step, exp_avg, exp_avg_sq per parameter
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()  # ByteTensor
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if generator.device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(generator.device)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": _STATE_FORMAT, "step": str(step), "history": json.dumps(history),
                "train_config": json.dumps(asdict(config))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # same directory, so os.replace is an atomic rename
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_train_state(path, model, ema, optimizer, generator, device) -> tuple[int, list[float]]:
    """Restore what `save_train_state` wrote into model, ema, optimizer and RNGs; returns (step, history)."""
    path = Path(path)
    hint = f"delete {path} to start over, or pass another ckpt_path"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
        step, history = int(metadata["step"]), json.loads(metadata["history"])
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read training checkpoint {path} ({e}); {hint}") from e
    if metadata.get("format") != _STATE_FORMAT:
        raise CheckpointError(f"{path} is not a course_lib training checkpoint; {hint}")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_matches(path, model, model_state, hint)
    model.load_state_dict(model_state)
    ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    optim_state = optimizer.state_dict()
    optim_state["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optim_state)
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)
    return step, history

