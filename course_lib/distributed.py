"""Data parallelism over the processes `torchrun` starts: one rank per GPU (or per CPU process), one model each.

    torchrun --nproc_per_node=N -m course_lib.train NAME ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in every process it starts; `setup` joins their process group
(NCCL on CUDA, gloo on the CPU) and picks the rank's device. `course_lib.training.train` then wraps the model
in DistributedDataParallel, which averages the gradients of all ranks during backward, so every rank takes the
same optimizer step; each rank works on its own slice of every batch, and rank 0 alone writes files.
A process that torchrun did not start is a world of one: everything here then does nothing.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

import course_lib


def is_distributed() -> bool:
    """True inside a process group (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's index in the group, 0..world_size()-1 (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def setup(device=None) -> torch.device:
    """Join torchrun's process group when this process is one of several; returns the device this rank uses.

    `device` ("cpu", "cuda", None = course_lib.device()) picks the kind; under torchrun each rank takes the GPU
    numbered LOCAL_RANK. Without torchrun (WORLD_SIZE unset or 1) this is just course_lib.device(device).
    """
    device = course_lib.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start the "
                         f"processes with torchrun, e.g. torchrun --nproc_per_node=2 -m course_lib.train NAME")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs here; "
                             f"pass --nproc_per_node={torch.cuda.device_count()} or fewer to torchrun")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"torchrun training runs on CUDA (nccl) or the CPU (gloo), not on {device.type}; "
                         f"pass --device cpu or --device cuda")
    return device


def cleanup() -> None:
    """Leave the process group (at the end of a torchrun run)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable object); `obj` itself when not distributed."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object); [obj] when not distributed."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over all ranks (elementwise), on every rank; `values` when not distributed."""
    if not is_distributed():
        return values
    total = values.clone()
    dist.all_reduce(total)  # a sum: gloo has no AVG
    return total / world_size()


def shard(batch, rank_: int, world: int):
    """This rank's contiguous slice of a batch (a tensor or a tuple of tensors sharing their first dimension)."""
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(world)[rank_]  # (B / world, ...)
    return tuple(shard(part, rank_, world) for part in batch)
