"""Latent diffusion glue (Rombach et al. 2022): the shapes VAE checkpoint, and images <-> scaled latents.

    z = scaling_factor * E(x),   x_hat = D(z / scaling_factor)

Diffusion then runs on z (8x8x4 for a 64x64x3 image) with the same schedules, U-Net and samplers as on pixels;
only the two ends change. `python -m course_lib.train shapes64-vae` recreates the shipped VAE;
`python -m course_lib.latent sweep` measures what the KL weight does (the numbers chapter 4 shows).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

import course_lib
from course_lib import pretrained
from course_lib.data import ShapesDataset
from course_lib.models.vae import VAE, VAETrainConfig, measure_scaling_factor, psnr, reconstruct, train_vae, vae_f8

VAE_NAME = "shapes64-vae"
SWEEP_PATH = pretrained.CHECKPOINT_DIR.parent / "vae_kl_sweep.json"  # what `python -m course_lib.latent sweep` writes


@dataclass
class VAERecipe:
    """How the shipped VAE is trained and evaluated."""

    size: int = 64  # image size: 64x64x3 -> 8x8x4 latents (the 48x of SD's 512x512x3 -> 64x64x4)
    n: int = 20000  # training renders (seed `seed`), the same scenes as the shapes32 recipes
    seed: int = 0  # data seed
    eval_n: int = 512  # fresh renders (seed eval_seed) for the PSNR in the checkpoint's JSON
    eval_seed: int = 999
    # GPU-sized: 3000 x 64 = 192k images (~10 epochs); minutes on one GPU, about 2 hours on a CPU core.
    train: VAETrainConfig = field(default_factory=lambda: VAETrainConfig(
        steps=3000, batch_size=64, lr=1e-3, warmup=100, lr_schedule="cosine", kl_weight=1e-6, seed=0, log_every=50))


def encode_latents(vae: VAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Scaled latents z = scaling_factor * mean of q(z | x), on the CPU: what the latent denoiser trains on.

    SD samples z ~ q(z | x) here; we take the mean (with kl_weight = 1e-6 the posterior's std is tiny anyway,
    and the mean makes the training data deterministic).
    """
    scale = _scaling_factor(vae)
    device = course_lib.device_of(vae)
    with torch.no_grad():
        parts = [vae.encode(images[i:i + batch_size].to(device)).mode().float().cpu()
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts) * scale  # (N, 4, H/8, W/8)


def decode_latents(vae: VAE, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, 8h, 8w) on the CPU from scaled latents (N, 4, h, w): D(z / scaling_factor)."""
    scale = _scaling_factor(vae)
    device = course_lib.device_of(vae)
    with torch.no_grad():
        parts = [vae.decode(latents[i:i + batch_size].to(device, torch.float32) / scale).float().cpu()
                 for i in range(0, len(latents), batch_size)]
    return torch.cat(parts)


def _scaling_factor(vae: VAE) -> float:
    if not isinstance(vae, VAE):
        raise ValueError(f"expected a course_lib VAE, got {type(vae).__name__}; load one with load_vae()")
    if vae.config.scaling_factor is None:
        raise ValueError("this VAE has no scaling_factor yet; set it with measure_scaling_factor(vae, images)")
    return vae.config.scaling_factor


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, directory: Path | None, device: torch.device) -> VAE:
    loaded = pretrained.load(name, device=device, directory=directory)
    if not isinstance(loaded.model, VAE):
        raise ValueError(f"checkpoint {name!r} holds a {type(loaded.model).__name__}, not a VAE")
    return loaded.model


def load_vae(name: str = VAE_NAME, device=None, directory=None) -> VAE:
    """The VAE checkpoint `name` (eval mode), loaded once per (name, directory, device)."""
    directory = Path(directory).resolve() if directory is not None else None
    return _load_cached(name, directory, course_lib.device(device))


def latent_decoder(name: str = VAE_NAME, device=None, directory=None):
    """decode(latents) -> images, for DenoisingPlayer(decode=...) and generate(); loads the VAE once."""
    vae = load_vae(name, device=device, directory=directory)
    return functools.partial(decode_latents, vae)


def evaluate(vae: VAE, recipe: VAERecipe) -> dict:
    """Reconstruction PSNR (dB) of the deterministic round trip on fresh renders, and the compression factor."""
    images = ShapesDataset(size=recipe.size, n=recipe.eval_n, seed=recipe.eval_seed).images()
    with torch.no_grad():
        z = vae.encode(images[:1].to(course_lib.device_of(vae))).mode()
    return {"psnr_db": round(psnr(reconstruct(vae, images), images), 2),
            "compression": images[0].numel() / z[0].numel(),  # 64*64*3 / (8*8*4) = 48
            "eval": f"{recipe.eval_n} fresh renders, seed {recipe.eval_seed}"}


def train_vae_recipe(out=None, *, device=None, command=None, steps=None, batch_size=None, progress=True,
                     recipe: VAERecipe | None = None, name: str = VAE_NAME) -> Path:
    """Recreate the shipped VAE (`python -m course_lib.train shapes64-vae`); returns its weights path."""
    recipe = recipe or VAERecipe()
    overrides = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    config = dataclasses.replace(recipe.train, **overrides)
    device = course_lib.device(device)
    torch.manual_seed(config.seed)  # the initial weights
    vae = vae_f8(image_size=recipe.size)
    images = ShapesDataset(size=recipe.size, n=recipe.n, seed=recipe.seed).images()
    result = train_vae(vae, images, config, device=device, progress=progress)
    measure_scaling_factor(vae, images[:2048])
    metrics = {**evaluate(vae, recipe), "scaling_factor": round(vae.config.scaling_factor, 5),
               "train_images_per_s": round(result["images_per_s"], 1), "device": _device_name(device)}
    tail = result["history"][-4:]  # histories hold one value per log_every steps
    meta = {"data": {"dataset": "shapes", "n": recipe.n, "seed": recipe.seed, "size": recipe.size},
            "steps": config.steps, "final_loss": sum(tail) / len(tail), "metrics": metrics,
            "command": command or f"python -m course_lib.train {name}", "train_config": dataclasses.asdict(config),
            "history": {"loss": result["history"], "reconstruction": result["reconstruction"], "kl": result["kl"],
                        "every": config.log_every}}
    out = Path(out) if out is not None else pretrained.CHECKPOINT_DIR
    path = pretrained.save(name, vae, schedule_name=None, meta=meta, directory=out)
    _save_preview(vae, recipe, out / f"{name}.png")
    print(f"saved {path} (+ .json, .png); PSNR {metrics['psnr_db']} dB on fresh renders, "
          f"scaling_factor {metrics['scaling_factor']}")
    return path


def _save_preview(vae: VAE, recipe: VAERecipe, path: Path) -> None:
    """Two rows: 8 fresh renders, and their reconstructions."""
    from course_lib.widgets.display import grid, png_bytes

    images = ShapesDataset(size=recipe.size, n=8, seed=recipe.eval_seed).images()
    path.write_bytes(png_bytes(grid(torch.cat([images, reconstruct(vae, images)]), nrow=8), scale=2))


def _device_name(device: torch.device) -> str:
    from course_lib.train import device_name

    return device_name(device)


def kl_sweep(kl_weights=(0.0, 1e-6, 1e-4, 1e-2), steps: int = 2000, batch_size: int = 64, device=None,
             progress: bool = True) -> list[dict]:
    """Train one VAE per KL weight (same data, seed and steps) and measure what the weight buys.

    Per weight: PSNR on fresh renders, the KL per image (nats), the latents' std (what scaling_factor undoes)
    and the PSNR after nudging each scaled latent by N(0, 0.1^2) noise: a latent space where small moves
    still decode to clean images is what a denoiser, whose predictions are never exact, needs.
    """
    recipe = VAERecipe()
    images = ShapesDataset(size=recipe.size, n=recipe.n, seed=recipe.seed).images()
    rows = []
    for kl_weight in kl_weights:
        config = dataclasses.replace(recipe.train, steps=steps, batch_size=batch_size, kl_weight=kl_weight)
        torch.manual_seed(config.seed)
        vae = vae_f8(image_size=recipe.size)
        result = train_vae(vae, images, config, device=device, progress=progress)
        scale = measure_scaling_factor(vae, images[:2048])
        rows.append({"kl_weight": kl_weight, **evaluate(vae, recipe), "kl_per_image": round(result["kl"][-1], 1),
                     "latent_std": round(1.0 / scale, 4), "psnr_nudged_db": round(_nudged_psnr(vae, recipe), 2),
                     "steps": steps, "batch_size": batch_size})
        print(rows[-1], flush=True)
    return rows


def _nudged_psnr(vae: VAE, recipe: VAERecipe, sigma: float = 0.1) -> float:
    """PSNR of D((z + sigma * eps) / scaling_factor) against the renders, z the scaled latents of fresh renders."""
    images = ShapesDataset(size=recipe.size, n=recipe.eval_n, seed=recipe.eval_seed).images()
    z = encode_latents(vae, images)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    return psnr(decode_latents(vae, z + sigma * eps), images)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.latent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="train one VAE per KL weight and write their PSNR / KL / latent std")
    sweep.add_argument("--kl-weights", type=float, nargs="+", default=[0.0, 1e-6, 1e-4, 1e-2])
    sweep.add_argument("--steps", type=int, default=2000)
    sweep.add_argument("--batch-size", type=int, default=64)
    sweep.add_argument("--device", default=None)
    sweep.add_argument("-o", "--output", default=str(SWEEP_PATH))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    if any(not w >= 0 for w in args.kl_weights):
        parser.error(f"--kl-weights must all be >= 0 (e.g. 0 1e-6 1e-4 1e-2), got {args.kl_weights}")
    try:
        device = course_lib.device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    rows = kl_sweep(args.kl_weights, args.steps, args.batch_size, device=device)
    from course_lib.train import device_name

    record = {"rows": rows, "device": device_name(device),
              "command": "python -m course_lib.latent sweep --kl-weights "
                         + " ".join(f"{w:g}" for w in args.kl_weights) + f" --steps {args.steps}"
                         + f" --batch-size {args.batch_size}"}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
