"""Sampling an autoregressive image transformer (models.ar): one token per model call, in raster order.

    for i in 0 .. N-1:   logits = net(token before i | the KV cache of tokens < i, caption)
                         logits = uncond + s * (cond - uncond)             classifier-free guidance on logits
                         token_i ~ softmax(top_k(logits) / temperature)   (or forced, where it is known)

N = H * W calls in a row, each waiting for the one before: 1024 for 32 x 32 pixels, 64 for an 8 x 8 grid of VQ
codes, against a diffusion sampler's 4-50. Forcing the known tokens is inpainting for this model: a raster model
sees only what comes *before* a position, so a known bottom half cannot shape the top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.guidance import cfg


@dataclass
class TokenRecord:
    """What sample_tokens reports after each model call (the live tensor, not a copy: clone it to keep it)."""

    step: int  # model calls so far, minus one: position `step` was just written
    tokens: torch.Tensor  # (B, N) the sequence so far; -1 where nothing is written yet


def check_sampling(temperature, top_k, vocab_size: int) -> None:
    """Clear errors for sampling options a user typed."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (1 = the model's distribution, 0 = always the most "
                         f"likely token), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, {vocab_size}] (the vocabulary), got {top_k!r}")


def _uniform(generator, batch: int) -> torch.Tensor:
    """One U(0, 1) draw per image (B,), on the CPU: from its own generator when a list gives one per image."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images: pass one per image")
        return torch.cat([torch.rand(1, generator=g) for g in generator])
    return torch.rand(batch, generator=generator)


@torch.no_grad()
def sample_tokens(model, n: int | None = None, *, cond=None, cond_mask=None, uncond=None, uncond_mask=None,
                  guidance_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None, known=None,
                  generator=None, callback=None) -> torch.Tensor:
    """Sample n token sequences (n, H * W) from an ARTransformer, position by position with a KV cache.

    cond, cond_mask       the prompt's token embeddings (1 or n, L, D) and mask (None: an unconditional model)
    uncond, uncond_mask   the empty prompt's, for classifier-free guidance (needed when guidance_scale != 1)
    temperature, top_k    softmax temperature (0: the most likely token) and keep only the k likeliest tokens
    known                 (n, N) tokens to force, -1 where the model chooses (autoregressive inpainting)
    generator             a torch.Generator, or one per image (then an image's draws are its own)
    callback(TokenRecord) after every call
    """
    cfg_ = model.config
    N, device = cfg_.seq_len, next(model.parameters()).device
    check_sampling(temperature, top_k, cfg_.vocab_size)
    if known is not None:
        if known.dim() != 2 or known.shape[1] != N:
            raise ValueError(f"known must be (n, {N}) tokens with -1 where the model chooses, got {tuple(known.shape)}")
        n = known.shape[0]
        known = known.to(device)
    if n is None or n < 1:
        raise ValueError("say how many sequences to sample: n >= 1 (or pass known)")
    guided = guidance_scale != 1.0
    if cond is not None:
        cond, cond_mask = cond.to(device).expand(n, *cond.shape[1:]), cond_mask.to(device).expand(n, -1)
        if guided:
            if uncond is None:
                raise ValueError("guidance_scale != 1 needs the empty prompt's tokens: pass uncond and uncond_mask")
            uncond = uncond.to(device).expand(n, *uncond.shape[1:])
            cond = torch.cat([cond, uncond])  # (2n, L, D): the conditional half, then the unconditional half
            cond_mask = torch.cat([cond_mask, uncond_mask.to(device).expand(n, -1)])
    guided = guided and cond is not None
    model.eval()
    caches = model.new_caches()
    tokens = torch.full((n, N), -1, dtype=torch.long, device=device)
    inputs = torch.full((n, 1), model.start_token, dtype=torch.long, device=device)  # (n, 1): what position 0 reads
    for i in range(N):
        logits = model.step(torch.cat([inputs, inputs]) if guided else inputs, i, caches, cond, cond_mask)
        logits = logits[:, -1].float()  # (n or 2n, V)
        if guided:
            logits_cond, logits_uncond = logits.chunk(2)
            logits = cfg(logits_uncond, logits_cond, guidance_scale)  # uncond + s * (cond - uncond)
        if temperature == 0:
            choice = logits.argmax(dim=-1)  # (n,)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (n, 1) the k-th largest logit
                logits = logits.masked_fill(logits < kth, float("-inf"))
            cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (n, V)
            u = _uniform(generator, n).to(device)[:, None] * cdf[:, -1:]  # (n, 1): inverse-CDF draw
            choice = torch.searchsorted(cdf, u).squeeze(1).clamp(max=cfg_.vocab_size - 1)  # (n,)
        if known is not None:
            choice = torch.where(known[:, i] >= 0, known[:, i], choice)  # a known token is copied, not drawn
        tokens[:, i] = choice
        inputs = choice[:, None]
        if callback is not None:
            callback(TokenRecord(step=i, tokens=tokens))
    return tokens
