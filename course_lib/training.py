"""The one training loop of the course: every model it ships (denoisers, VAE, classifier, CLIP) trains here.

    result = train(model, loss_fn, data, config)

`loss_fn(model, batch, generator)` is the objective (course_lib.losses), `data` draws batches (a tensor, or a
course_lib.batches source), `config` a TrainConfig. The loop is the same for all of them: AdamW (fused where the
device has a fused kernel), linear warm-up then a constant or cosine learning rate, gradient clipping, an EMA of
the weights, bf16 autocast on CUDA, a tqdm progress bar, the loss of every step, atomic safetensors checkpoints
of the whole state that a killed run resumes from with no lost step (on the CPU bit-identical to an
uninterrupted run), and data parallelism over the processes torchrun starts (course_lib.distributed).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import course_lib
from course_lib import distributed
from course_lib.batches import TensorBatches
from course_lib.pretrained import CheckpointError, check_state_matches, write_atomic

_STATE_FORMAT = "course_lib.train_state/2"
_RESUMABLE_CHANGES = ("ckpt_every", "log_every")  # config fields a resumed run may change: they alter no number


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; every model's recipe fills in its own (course_lib.recipes)."""

    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this number)
    batch_size: int = 64  # examples per step (as the data source draws them); under torchrun the global batch
    lr: float = 2e-4  # peak AdamW learning rate (DDPM used 2e-4 on CIFAR-10)
    weight_decay: float = 0.0  # AdamW decoupled weight decay, on weight matrices and kernels only (not on biases,
    #                            normalisation gains or scalars, as nanoGPT and open_clip do)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decays (CLIP: 0.9, 0.98)
    eps: float = 1e-8  # AdamW's denominator epsilon (CLIP: 1e-6)
    warmup: int = 100  # steps of linear learning-rate warm-up from ~0 to lr
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decay to 0 at `steps`)
    ema_decay: float | None = 0.999  # EMA of the weights (what a denoiser is sampled from); None = keep no EMA
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off), as in DDPM
    seed: int = 0  # seeds the batches, the objective's draws and dropout layers
    ckpt_every: int = 0  # write ckpt_path every this many steps (0 = only at the end)
    log_every: int = 50  # move the losses to the CPU, update the progress bar and call the callback this often

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)  # JSON round trips give lists
        for name, least in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("ckpt_every", 0), ("warmup", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0 or not self.eps > 0:
            raise ValueError("lr and eps must be > 0; weight_decay and grad_clip >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999); got {self.betas}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None (no EMA), got {self.ema_decay}")


@dataclass
class TrainResult:
    """What `train` returns: the trained model, its EMA copy and the loss of every step."""

    model: nn.Module  # the last step's weights, in eval mode
    ema: nn.Module | None  # exponential moving average of the weights, in eval mode (None without EMA)
    history: list[float] = field(repr=False)  # the loss of every step from step 0 (also across resumes)
    components: dict[str, list[float]] = field(repr=False)  # other scalars the objective logs, every step
    steps: int  # steps done in total
    start_step: int = 0  # step this call resumed from (0 for a fresh run)
    seconds: float = 0.0  # wall time of this call's training loop
    images_per_s: float = 0.0  # throughput of this call, all ranks together: (steps - start_step) * batch / seconds
    world_size: int = 1  # processes that trained together (torchrun)

    @property
    def final(self) -> nn.Module:
        """The weights to use: the EMA if there is one, else the last step's."""
        return self.ema if self.ema is not None else self.model


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay (Loshchilov & Hutter 2017) — a pure function of step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)), so short runs still get a useful EMA."""
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D tensors only; fused (one kernel for every tensor) where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype: the per-tensor implementation
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


#################################################################################
#                                 The loop                                      #
#################################################################################

def train(model: nn.Module, loss_fn, data, config: TrainConfig, *, ckpt_path=None, device=None,
          progress: bool = True, callback=None) -> TrainResult:
    """Train `model` on batches of `data` to minimise `loss_fn`; resumes from ckpt_path if that file exists.

    data: a tensor (N, ...), a tuple of tensors with one row per example, or a batch source (course_lib.batches).
    callback(step, history) is called every `log_every` steps. Under torchrun every rank calls `train` with the
    same arguments: each draws the same global batch and keeps its slice, and rank 0 alone writes ckpt_path.
    """
    device = torch.device(device) if device is not None else course_lib.device()
    rank, world = distributed.rank(), distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {world} processes (it is the "
                         f"global batch, split evenly between them)")
    data = (data if hasattr(data, "sample") else TensorBatches(*(data if isinstance(data, tuple) else (data,))))
    data = data.to(device)
    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval() if config.ema_decay is not None else None
    # The objective calls `net`: under torchrun the DDP wrapper, whose backward averages gradients over ranks.
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    optimizer = make_optimizer(model, config)
    # One generator draws the batches and the objective's randomness. Under torchrun the batches come from a
    # second generator with the same seed on every rank (so all ranks agree on the global batch), and each rank
    # seeds its own stream for the objective's draws, so no two ranks draw the same noise.
    generator = torch.Generator(device=device)
    data_generator = generator if world == 1 else torch.Generator(device=device)
    seed = config.seed if world == 1 else config.seed + 100_003 * (rank + 1)
    # fork_rng: seed (and restore) the global RNG that dropout uses, without leaking into the caller's RNG. It
    # saves every device torch.manual_seed reseeds: the CPU and each GPU (or the MPS device) there is.
    accelerator = torch.accelerator.current_accelerator()
    rng_devices = range(torch.get_device_module(accelerator).device_count()) if accelerator is not None else []
    with torch.random.fork_rng(devices=rng_devices, device_type=accelerator.type if accelerator else None):
        generator.manual_seed(seed)
        data_generator.manual_seed(config.seed)
        torch.manual_seed(seed)
        step, history, components = 0, [], {}
        rngs = (generator, data_generator)
        if ckpt_path is not None and Path(ckpt_path).exists():
            step, history, components = load_train_state(ckpt_path, model, ema, optimizer, rngs, config, device)
        start_step, start_time, pending = step, time.perf_counter(), []
        bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step",
                   mininterval=1.0)
        while step < config.steps:
            batch = distributed.shard(data.sample(config.batch_size, data_generator), rank, world)
            losses = train_step(net, model, ema, optimizer, loss_fn, batch, config, step, generator)
            pending.append(losses)  # no .item() here: it would wait for the GPU every step
            step += 1
            bar.update(1)
            periodic = config.ckpt_every and step % config.ckpt_every == 0
            save_now = ckpt_path is not None and (step == config.steps or periodic)
            if save_now or step % config.log_every == 0 or step == config.steps:
                _flush(pending, history, components)
                pending = []
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                if callback is not None:
                    callback(step, history)
            if save_now:
                save_train_state(ckpt_path, model, ema, optimizer, rngs, step, history, components, config)
        bar.close()
    seconds = time.perf_counter() - start_time
    model.eval()
    images_per_s = (step - start_step) * config.batch_size / seconds if step > start_step else 0.0
    return TrainResult(model, ema, history, components, step, start_step, seconds, images_per_s, world)


def time_steps(model: nn.Module, loss_fn, data, config: TrainConfig, *, steps: int, warmup_steps: int,
               device=None) -> TrainResult:
    """Train throwaway copies: `warmup_steps` untimed (kernel autotuning, the allocator, lazy initialisation), then
    `steps` timed. What --time-budget plans with and `bench train` reports; `model` itself is left untouched."""
    probe = dataclasses.replace(config, steps=warmup_steps, warmup=0, ckpt_every=0)
    train(copy.deepcopy(model), copy.deepcopy(loss_fn), data, probe, device=device, progress=False)
    return train(copy.deepcopy(model), copy.deepcopy(loss_fn), data, dataclasses.replace(probe, steps=steps),
                 device=device, progress=False)


def train_step(net, model, ema, optimizer, loss_fn, batch, config, step, generator) -> dict[str, torch.Tensor]:
    """One AdamW step on loss_fn(net, batch) (bf16 autocast on CUDA), then the EMA update.

    Returns the detached loss, and any other scalars the objective logs: {"loss": ..., name: ...}.
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        # (consistency distillation's objective compares the model with its own EMA, the "target network")
        out = loss_fn(net, batch, generator, ema=ema) if getattr(loss_fn, "needs_ema", False) else \
            loss_fn(net, batch, generator)
    out = out if isinstance(out, dict) else {"loss": out}
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    if hasattr(loss_fn, "after_step"):
        loss_fn.after_step(model)
    if ema is not None:
        update_ema(ema, model, ema_decay_at(step, config))
    return {name: value.detach().float() for name, value in out.items()}


def _flush(pending: list[dict], history: list[float], components: dict[str, list[float]]) -> None:
    """Move the pending per-step losses (averaged over ranks) to the CPU: one GPU sync per `log_every` steps."""
    names = ["loss", *(name for name in pending[0] if name != "loss")]
    values = torch.stack([torch.stack([p[name] for name in names]) for p in pending])  # (steps, names)
    values = distributed.mean(values).cpu()
    history.extend(values[:, 0].tolist())
    for i, name in enumerate(names[1:], start=1):
        components.setdefault(name, []).extend(values[:, i].tolist())


#################################################################################
#                        Checkpoints of the training state                      #
#################################################################################

def save_train_state(path, model, ema, optimizer, rngs, step, history, components, config) -> None:
    """Atomically write weights, EMA, AdamW state and every rank's RNG states (tensors) + step/history (metadata).

    Under torchrun every rank calls this (the RNG states are gathered) and rank 0 writes the file.
    """
    generator, data_generator = rngs
    states = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}  # ByteTensors
    if data_generator is not generator:
        states["data_generator"] = data_generator.get_state()
    if generator.device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(generator.device)
    every_rank = distributed.gather({k: v.cpu() for k, v in states.items()})
    if distributed.rank() != 0:
        return
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():  # AdamW: step, exp_avg, exp_avg_sq per parameter
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    for rank, rank_states in enumerate(every_rank):
        tensors.update({f"rng.{rank}.{name}": state for name, state in rank_states.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": _STATE_FORMAT, "step": str(step), "history": json.dumps(history),
                "components": json.dumps(components), "train_config": json.dumps(asdict(config)),
                "world_size": str(len(every_rank)), "device_type": generator.device.type}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def saved_train_config(path) -> dict | None:
    """The TrainConfig (as a dict) a training-state file of this course_lib was written with; None if none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return json.loads(metadata["train_config"]) if metadata.get("format") == _STATE_FORMAT else None
    except (SafetensorError, OSError, ValueError, KeyError):
        return None  # load_train_state says what is wrong with the file


def load_train_state(path, model, ema, optimizer, rngs, config, device) -> tuple[int, list[float], dict]:
    """Restore what `save_train_state` wrote into model, ema, optimizer and RNGs; returns (step, history, components).

    A state written with another TrainConfig (other than ckpt_every / log_every, and `steps` under a constant
    learning rate) or another number of processes is refused: resuming it would silently train a different run than
    the one the file belongs to.
    """
    path = Path(path)
    hint = f"delete {path} to start over, or pass another ckpt_path"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__}: {e}); {hint}") from e
    found = metadata.get("format")
    if found != _STATE_FORMAT:
        what = "an older course_lib's training state" if str(found).startswith("course_lib.train_state") else \
            "not a training state (a model's weights, perhaps)"
        raise CheckpointError(f"{path} is {what}, so training cannot resume from it; pass a ckpt_path that does not "
                              f"exist yet to start over" + (f", or delete {path}" if found else ""))
    try:
        tensors = load_file(str(path))
        step, history = int(metadata["step"]), json.loads(metadata["history"])
        components, saved = json.loads(metadata["components"]), json.loads(metadata["train_config"])
        world, device_type = int(metadata["world_size"]), metadata["device_type"]
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read training checkpoint {path} ({type(e).__name__}: {e}); {hint}") from e
    if device_type != device.type:
        raise CheckpointError(f"{path} was written on {device_type}, this run trains on {device.type}: the random "
                              f"states differ between them; resume with --device {device_type}, or {hint}")
    resumable = _RESUMABLE_CHANGES
    if config.lr_schedule == saved.get("lr_schedule") == "constant":
        # no number of the steps done depends on `steps` (the learning rate and the EMA do not): a finished run
        # can be continued, and one long run equals the same run trained in pieces (chapter 6's curves)
        resumable = (*resumable, "steps")
    changed = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(asdict(config))).items()
               if k not in resumable and saved.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise CheckpointError(f"{path} belongs to a run with another configuration ({detail}); resume with the "
                              f"saved settings (e.g. --steps {saved.get('steps')} --batch-size "
                              f"{saved.get('batch_size')}), or {hint}")
    if step > config.steps:
        raise CheckpointError(f"{path} is at step {step}, past the {config.steps} steps asked for: pass --steps {step} "
                              f"or more to continue it, or {hint}")
    if world != distributed.world_size():
        raise CheckpointError(f"{path} was written by {world} processes, this run has {distributed.world_size()}; "
                              f"resume with torchrun --nproc_per_node={world} (the batches and noise depend on it), "
                              f"or {hint}")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_matches(path, model, model_state, hint)
    model.load_state_dict(model_state)
    if ema is not None:
        ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    optim_state = optimizer.state_dict()
    optim_state["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optim_state)
    generator, data_generator = rngs
    mine = f"rng.{distributed.rank()}."
    generator.set_state(tensors[mine + "generator"])
    if data_generator is not generator:
        data_generator.set_state(tensors[mine + "data_generator"])
    torch.set_rng_state(tensors[mine + "torch_cpu"])
    if device.type == "cuda" and mine + "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors[mine + "torch_cuda"], device)
    return step, history, components
