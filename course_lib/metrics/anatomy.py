"""A network's anatomy, measured: which blocks a forward pass runs, in order, the tensor shapes in and out of each,
and the parameters each holds (chapter 2 opens the shipped U-Net with it).

    for block in trace_blocks(model, x_t, t):
        print(block.name, block.in_shape, "->", block.out_shape, block.parameters)

Forward hooks on the blocks record every call; they are removed again before trace_blocks returns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class BlockRecord:
    """One call of one block during a traced forward pass."""

    name: str  # the block's name in the model, e.g. "down.2" (as model.named_modules() spells it)
    kind: str  # its class, with the classes of its direct parts, e.g. "ResAttnBlock(ResBlock, SelfAttention)"
    in_shape: tuple[int, ...]  # shape of the block's first tensor input
    out_shape: tuple[int, ...]  # shape of its output (the first tensor, if it returns several)
    parameters: int  # number of parameters the block holds (counted once, however often it is called)


def top_level_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's direct children, with containers (ModuleList, ModuleDict) opened one level: for a U-Net
    time_embed, conv_in, down.0, down.1, ..., mid.0, mid.1, up.0, ..., norm_out, conv_out."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            blocks.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            blocks.append((name, child))
    return blocks


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (scalars) of a module, its parts included."""
    return sum(p.numel() for p in module.parameters())


def describe(module: nn.Module) -> str:
    """A module's class, followed by the classes of its direct parts when it has any: "Name(PartA, PartB)"."""
    parts = [type(child).__name__ for child in module.children()]
    return f"{type(module).__name__}({', '.join(parts)})" if parts else type(module).__name__


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in map(_first_tensor, value) if v is not None), None)
    return None


def trace_blocks(model: nn.Module, *inputs, blocks=None, **kwargs) -> list[BlockRecord]:
    """Run model(*inputs, **kwargs) once without gradients; one BlockRecord per block call, in the order of the calls.

    blocks: (name, module) pairs to watch (default `top_level_blocks(model)`). A block that is not called (an
    unused branch) does not appear; a block called twice appears twice.
    """
    blocks = top_level_blocks(model) if blocks is None else list(blocks)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks to trace: pass blocks=[(name, module), ...]")
    records, handles = [], []

    def hook_for(name: str, module: nn.Module):
        def hook(_module, args, output):
            first_in, first_out = _first_tensor(args), _first_tensor(output)
            records.append(BlockRecord(name, describe(module),
                                       tuple(first_in.shape) if first_in is not None else (),
                                       tuple(first_out.shape) if first_out is not None else (),
                                       count_parameters(module)))
        return hook

    try:
        for name, module in blocks:
            handles.append(module.register_forward_hook(hook_for(name, module)))
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return records


def parameters_by_block(model: nn.Module) -> dict[str, int]:
    """Parameters of each direct child of the model, by name (for a U-Net: time_embed, conv_in, down, mid, up,
    norm_out, conv_out); the values add up to count_parameters(model) when the model holds no loose parameters."""
    return {name: count_parameters(child) for name, child in model.named_children()}
