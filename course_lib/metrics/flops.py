"""How much work a network does: floating-point operations per call, attention included.

torch's FlopCounterMode counts matrix multiplications and convolutions (2 FLOPs per multiply-add). Left to
itself, F.scaled_dot_product_attention on the CPU runs a fused kernel that the counter has no formula for, and
attention counts as 0 (a 256-token transformer then looks 25% cheaper than it is). Under the MATH backend the
same call is the two batched matmuls it is on paper, Q K^T and softmax(.) V, and those are counted.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import course_lib
from course_lib import pretrained
from course_lib.latent import latent_decoder


def count_flops(fn) -> int:
    """FLOPs torch counts while running fn() (without gradients): matmuls, convolutions and attention."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def forward_gflops(model, shape, encoder=None, *, batch: int = 1) -> float:
    """GFLOPs of one call of a denoiser on `batch` inputs of shape (C, H, W), with a caption's tokens when an
    encoder is given (a text model's work grows with the caption's tokens: every call here reads the same one)."""
    device = course_lib.device_of(model)
    tokens, mask = encoder(["a red circle"] * batch) if encoder is not None else (None, None)
    x = torch.zeros(batch, *shape, device=device)  # (batch, C, H, W)
    t = torch.full((batch,), 500, device=device)
    return count_flops(lambda: model(x, t, cond=tokens, cond_mask=mask)) / 1e9


def gflops_per_step(model="shapes64-latent-t2i", *, guided: bool = True, directory=None) -> float:
    """GFLOPs of one denoising step for ONE image: a network call on a batch of 2 (cond + uncond) if guided.

    model: a checkpoint name or a loaded Pretrained. An unconditional checkpoint has nothing to guide: one plain
    call, whatever `guided` says.
    """
    p = pretrained.load_checkpoint(model, "cpu", directory)  # (a loaded Pretrained stays on its device)
    device = course_lib.device_of(p.model)
    encoder = pretrained.load_text_encoder(p, device, directory)
    batch = 2 if guided and encoder is not None else 1
    return forward_gflops(p.model, pretrained.sample_shape(p), encoder, batch=batch)  # in the sampler's space


def decode_gflops(model="shapes64-latent-t2i", *, directory=None) -> float:
    """GFLOPs of turning one sample into an image: the VAE decode for a latent model, 0 for a pixel model."""
    p = pretrained.load_checkpoint(model, "cpu", directory)  # (a loaded Pretrained stays on its device)
    decode = latent_decoder(p, directory=directory)  # on the model's device
    if decode is None:
        return 0.0
    z = torch.zeros(1, *pretrained.sample_shape(p))  # (1, 4, h, w); decode moves it to the VAE
    return count_flops(lambda: decode(z)) / 1e9
