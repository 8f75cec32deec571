"""From this course to Stable Diffusion: the published networks, built on PyTorch's meta device and counted.

`python -m course_lib.scale` builds Stable Diffusion 1.5's U-Net and VAE, SDXL's U-Net (diffusers classes), DiT-XL/2
(diffusers' DiTTransformer2DModel) and the ViT-L/14 CLIP whose text tower SD 1.5 reads prompts with (open_clip).
On the meta device a tensor has a shape and no memory, so every network is built in seconds without weights or a
network connection, and `metrics.count_flops` still counts each call. The configurations are public facts: each
is written below with the file it comes from. A table then sets every part of the course's pipeline beside its
real counterpart, and projects seconds per image from the FLOPs and a measured device throughput.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

import course_lib
from course_lib import pretrained
from course_lib.metrics import count_flops, decode_gflops, gflops_per_step
from course_lib.models import dit

# runwayml/stable-diffusion-v1-5, unet/config.json (diffusers UNet2DConditionModel); 860M parameters (model card)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
                 mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768,
                 attention_head_dim=8)
# runwayml/stable-diffusion-v1-5, vae/config.json (diffusers AutoencoderKL): 512x512x3 <-> 64x64x4
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512)
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json; 2.6B parameters (Podell et al. 2023, Table 1)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, act_fn="silu", norm_num_groups=32,
                 norm_eps=1e-5, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
# facebook/DiT-XL-2-256, transformer/config.json (diffusers DiTTransformer2DModel); 675M (Peebles & Xie 2023)
DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
VIT_L14 = "ViT-L-14"  # open_clip's config name: the CLIP whose text tower (123M parameters) SD 1.5 uses
SD_STEPS = 50  # diffusers' StableDiffusionPipeline default num_inference_steps

PUBLISHED_PARAMS = {"sd15_unet": 860e6, "sdxl_unet": 2.6e9, "dit_xl2": 675e6, "vit_l14_text": 123e6}


@dataclass
class Network:
    """One network: its parameters and the GFLOPs of one call (batch 1) on the input it is used with."""

    name: str
    params: int
    gflops: float
    call: str  # what one call is
    note: str = ""


def _meta(build, call):
    """(parameters, GFLOPs of call(model)) of build() on the meta device: shapes only, no weights."""
    with torch.device("meta"):
        model = build()
        return _count(model), count_flops(lambda: call(model)) / 1e9


def real_networks() -> dict[str, Network]:
    """The published networks, counted on the meta device (a few seconds on a CPU)."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel
    from open_clip.model import CLIP
    import open_clip

    found = {}
    params, gflops = _meta(lambda: UNet2DConditionModel(**SD15_UNET),
                           lambda m: m(torch.zeros(1, 4, 64, 64), torch.tensor([500]), torch.zeros(1, 77, 768)))
    found["sd15_unet"] = Network("SD 1.5 U-Net", params, gflops, "one 64x64x4 latent, 77 text tokens")
    params, gflops = _meta(lambda: AutoencoderKL(**SD15_VAE), lambda m: m.decode(torch.zeros(1, 4, 64, 64)))
    found["sd15_vae"] = Network("SD 1.5 VAE", params, gflops, "decode 64x64x4 -> 512x512x3")
    added = lambda: {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}  # noqa: E731 (on meta)
    params, gflops = _meta(lambda: UNet2DConditionModel(**SDXL_UNET),
                           lambda m: m(torch.zeros(1, 4, 128, 128), torch.tensor([500]), torch.zeros(1, 77, 2048),
                                       added_cond_kwargs=added()))
    found["sdxl_unet"] = Network("SDXL U-Net", params, gflops, "one 128x128x4 latent, 77 text tokens")
    params, gflops = _meta(lambda: DiTTransformer2DModel(**DIT_XL2),
                           lambda m: m(torch.zeros(1, 4, 32, 32), torch.tensor([500]), torch.tensor([1])))
    # diffusers keeps a copy of the timestep/class embedder in each of the 28 blocks; the paper's 675M count (and
    # the course's DiT, which converts it) has one
    with torch.device("meta"):
        shared = _count(dit("DiT-XL/2", learn_sigma=True))
    found["dit_xl2"] = Network("DiT-XL/2", shared, gflops, "one 32x32x4 latent, a class label",
                               f"{params / 1e6:.0f}M in diffusers, which copies the embedder into every block")
    with torch.device("meta"):
        clip = CLIP(**open_clip.get_model_config(VIT_L14))
        tokens = torch.zeros(1, 77, dtype=torch.long)
        gflops = count_flops(lambda: clip.encode_text(tokens)) / 1e9
    text = sum(p.numel() for n, p in clip.named_parameters() if not n.startswith("visual"))
    found["vit_l14_text"] = Network("CLIP ViT-L/14 text tower", text, gflops, "one prompt of 77 tokens")
    return found


def course_networks(model: str = "shapes64-latent-t2i", directory=None) -> dict[str, Network]:
    """The course's counterparts: a latent text-to-image U-Net, its VAE, and the CLIP text tower it reads with."""
    p = pretrained.load_checkpoint(model, "cpu", directory)
    vae = pretrained.load_vae(p, "cpu", directory)
    encoder = pretrained.load_text_encoder(p, "cpu", directory)
    c, h, w = pretrained.sample_shape(p)
    found = {"unet": Network(f"{model} U-Net", _count(p.model), gflops_per_step(p, guided=False, directory=directory),
                             f"one {h}x{w}x{c} latent"),
             "vae": Network(f"{p.meta['vae']}", _count(vae), decode_gflops(p, directory=directory),
                            f"decode {h}x{w}x{c} -> {8 * h}x{8 * w}x3")}
    found["text"] = Network(f"{p.meta['text_encoder']} text tower", _count(encoder),
                            count_flops(lambda: encoder("a large red circle")) / 1e9, "one prompt")
    return found


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def seconds_per_image(unet_gflops: float, steps: int, decode: float, text: float, gflops_per_s: float) -> float:
    """Projected seconds for one guided image: steps x 2 network calls (with and without the prompt), one decode,
    one prompt encoding, at a throughput of gflops_per_s (a lower bound: real layers run below a matmul's peak)."""
    return (2 * steps * unet_gflops + decode + text) / gflops_per_s


def matmul_gflops_per_s(device=None, n: int = 1024, repeats: int = 10) -> float:
    """The device's float32 matrix-multiply throughput: the peak a network's layers approach at best."""
    device = course_lib.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.scale",
                                     description="The course's networks beside Stable Diffusion's, counted.")
    parser.add_argument("--device", default=None, help="where to measure throughput (default: course_lib.device())")
    args = parser.parse_args(argv)
    real, ours = real_networks(), course_networks()
    print(f"{'network':>28}  {'params':>9}  {'GFLOPs per call':>15}  call")
    for net in [*ours.values(), *real.values()]:
        print(f"{net.name:>28}  {net.params / 1e6:8.1f}M  {net.gflops:15.2f}  {net.call}"
              + (f" ({net.note})" if net.note else ""))
    speed = matmul_gflops_per_s(args.device)
    sd = seconds_per_image(real["sd15_unet"].gflops, SD_STEPS, real["sd15_vae"].gflops,
                           real["vit_l14_text"].gflops, speed)
    course = seconds_per_image(ours["unet"].gflops, 20, ours["vae"].gflops, ours["text"].gflops, speed)
    print(f"\n{course_lib.device_name(course_lib.device(args.device))}: {speed:.0f} GFLOP/s (float32 matmul)")
    print(f"projected at that rate: SD 1.5, {SD_STEPS} steps: {sd:.1f} s per image; the course's latent model, "
          f"20 steps: {course:.4f} s")


if __name__ == "__main__":
    main()
