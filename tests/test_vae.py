"""The VAE (course_lib.models.vae): shapes, the Gaussian posterior (vs closed forms and diffusers), its loss
(losses.VAELoss), PSNR, the scaling factor (latent), a short run of the one training loop, a checkpoint round trip
and input validation."""
import dataclasses
import json
import math

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file

from course_lib import models, pretrained
from course_lib.data import ShapesDataset
from course_lib.latent import measure_scaling_factor, reconstruct
from course_lib.losses import VAELoss, vae_loss
from course_lib.metrics import psnr
from course_lib.models.vae import VAE, DiagonalGaussian, VAEConfig, vae_f8
from course_lib.training import TrainConfig, train


def vae_config(**overrides) -> TrainConfig:
    """The shapes64-vae recipe's kind of run: AdamW, no EMA, no clipping."""
    return TrainConfig(**{**dict(ema_decay=None, grad_clip=0.0), **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """2 CPU cores shared with other work: one thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae(**overrides) -> VAE:
    """Same layout as vae_f8 (3 halvings, 4 latent channels) but narrow, so tests run in milliseconds."""
    torch.manual_seed(0)
    return vae_f8(**{**dict(base_channels=8, channel_mult=(1, 2, 2, 2), groups=4), **overrides})


def posterior_from(mean: torch.Tensor, logvar: torch.Tensor) -> DiagonalGaussian:
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1))  # (B, 2C, h, w): the encoder's "moments"


# ---- shapes and sizes --------------------------------------------------------------------------------

def test_64x64_image_becomes_8x8x4_latent_and_back():
    vae = tiny_vae().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    posterior = vae.encode(x)
    assert posterior.mean.shape == posterior.std.shape == (2, 4, 8, 8)
    assert vae.config.downsample_factor == 8
    z = posterior.sample()
    assert vae.decode(z).shape == (2, 3, 64, 64)
    recon, post = vae(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and isinstance(post, DiagonalGaussian)
    assert vae.encode(torch.zeros(1, 3, 32, 48)).mean.shape == (1, 4, 4, 6)  # any multiple of 8 runs


def test_compression_of_a_512_image_is_48x():
    cfg = VAEConfig()
    f = cfg.downsample_factor
    pixels, latents = 512 * 512 * cfg.in_channels, (512 // f) * (512 // f) * cfg.latent_channels
    assert (512 // f, cfg.latent_channels) == (64, 4)  # SD 1.x: 512x512x3 -> 64x64x4
    assert pixels / latents == 48


def test_vae_f8_size():
    vae = vae_f8()
    n = sum(p.numel() for p in vae.parameters())
    assert 0.5e6 <= n <= 2e6, n
    assert vae.kind == "vae" and vae.config_class is VAEConfig and vae.config.image_size == 64


# ---- the posterior -----------------------------------------------------------------------------------

def test_kl_of_standard_normal_is_zero():
    post = posterior_from(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2))
    assert post.kl().shape == (3,)
    torch.testing.assert_close(post.kl(), torch.zeros(3))


def test_kl_matches_closed_form_and_mode_is_mean():
    mean = torch.tensor([1.0, -2.0, 0.5, 0.0]).reshape(1, 4, 1, 1).expand(2, 4, 3, 3)  # (B, C, h, w)
    sigma = torch.tensor([2.0, 0.5, 1.0, 3.0]).reshape(1, 4, 1, 1).expand(2, 4, 3, 3)
    post = posterior_from(mean, 2 * sigma.log())
    # KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2)/2 - 1/2, per dimension; 9 pixels per channel
    per_channel = [math.log(1 / s) + (s * s + m * m) / 2 - 0.5 for m, s in [(1, 2), (-2, 0.5), (0.5, 1), (0, 3)]]
    expected = 9 * sum(per_channel)
    torch.testing.assert_close(post.kl(), torch.full((2,), expected), rtol=1e-5, atol=1e-5)
    assert torch.equal(post.mode(), mean)
    torch.testing.assert_close(post.std, sigma)


def test_logvar_is_clamped_like_diffusers():
    post = posterior_from(torch.zeros(1, 4, 1, 1), torch.tensor([-100.0, -30.0, 20.0, 100.0]).reshape(1, 4, 1, 1))
    assert post.logvar.flatten().tolist() == [-30.0, -30.0, 20.0, 20.0]
    assert torch.isfinite(post.kl()).all() and torch.isfinite(post.std).all()


def test_seeded_sample_repeats():
    post = posterior_from(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    c = post.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reparameterised_sample_has_the_posterior_mean_and_std():
    mean = torch.tensor([1.0, -2.0, 0.0, 3.0]).reshape(1, 4, 1, 1).expand(20000, 4, 1, 1)  # 20000 draws each
    std = torch.tensor([0.5, 2.0, 1.0, 0.1]).reshape(1, 4, 1, 1).expand(20000, 4, 1, 1)
    z = posterior_from(mean, 2 * std.log()).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(dim=0).flatten(), torch.tensor([1.0, -2.0, 0.0, 3.0]), atol=0.04, rtol=0)
    torch.testing.assert_close(z.std(dim=0).flatten(), torch.tensor([0.5, 2.0, 1.0, 0.1]), atol=0, rtol=0.03)


def test_matches_diffusers_diagonal_gaussian():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 8, 5, 5, generator=g) * 3  # some logvars beyond the clamp range too
    moments[0, 4:, 0, 0] = torch.tensor([-50.0, 40.0, -30.0, 20.0])
    ours, ref = DiagonalGaussian(moments), DiagonalGaussianDistribution(moments)
    torch.testing.assert_close(ours.kl(), ref.kl())
    assert torch.equal(ours.mode(), ref.mode()) and torch.equal(ours.logvar, ref.logvar)
    torch.testing.assert_close(ours.std, ref.std)
    # diffusers' randn_tensor draws from the same CPU generator the same way
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(ours.sample(seeded()), ref.sample(seeded()))


# ---- loss, PSNR, scaling factor ----------------------------------------------------------------------

def test_vae_loss_parts():
    x = torch.zeros(2, 3, 8, 8)
    post = posterior_from(torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1))  # KL = 0.5 * 4 per image
    parts = vae_loss(x, x + 0.5, post, kl_weight=0.1)
    torch.testing.assert_close(parts["reconstruction"], torch.tensor(0.5 * 3 * 8 * 8))  # L1 summed per image
    torch.testing.assert_close(parts["kl"], torch.tensor(2.0))
    torch.testing.assert_close(parts["loss"], torch.tensor(96.0 + 0.1 * 2.0))


def test_psnr():
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    assert psnr(a, a.clone()) == math.inf
    b = a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    mse = ((a - b) ** 2).mean().item()
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / mse))
    assert psnr(torch.full((1, 3, 4, 4), -1.0), torch.ones(1, 3, 4, 4)) == pytest.approx(0.0)  # peak-to-peak error
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:1])


def test_scaling_factor_gives_unit_variance_latents():
    vae = tiny_vae().eval()
    images = ShapesDataset(size=32, n=64, seed=0).images()
    factor = measure_scaling_factor(vae, images, seed=0)
    assert vae.config.scaling_factor == factor > 0
    with torch.no_grad():  # fresh samples (another seed) of the scaled latents: unit std
        z = vae.encode(images).sample(torch.Generator().manual_seed(1)) * vae.config.scaling_factor
    assert z.std().item() == pytest.approx(1.0, rel=0.05)


# ---- training ----------------------------------------------------------------------------------------

def test_short_training_run_lowers_the_loss():
    images = ShapesDataset(size=64, n=128, seed=0).images()
    vae = tiny_vae()
    before = psnr(reconstruct(vae, images[:32]), images[:32])
    config = vae_config(steps=60, batch_size=8, lr=2e-3, warmup=5, lr_schedule="constant", log_every=10)
    result = train(vae, VAELoss(kl_weight=1e-6), images, config, device="cpu", progress=False)  # ~10 s, 1 thread
    h = result.history
    assert len(h) == len(result.components["kl"]) == len(result.components["reconstruction"]) == 60
    assert result.images_per_s > 0 and result.ema is None
    for total, rec, kl in zip(h, result.components["reconstruction"], result.components["kl"]):
        assert total == pytest.approx(rec + 1e-6 * kl, rel=1e-5)  # each logged part belongs to its step
    assert sum(h[-10:]) / 10 < 0.5 * sum(h[:5]) / 5, (h[:5], h[-10:])
    assert not vae.training
    after = psnr(reconstruct(vae, images[:32]), images[:32])
    assert after > before + 5, (before, after)


def test_training_is_seeded():
    images = ShapesDataset(size=16, n=16, seed=0).images()
    config = vae_config(steps=3, batch_size=4, warmup=1, log_every=1)
    runs = [train(tiny_vae(), VAELoss(), images, config, device="cpu", progress=False).history for _ in range(2)]
    assert runs[0] == runs[1]


# ---- checkpoints -------------------------------------------------------------------------------------

def test_save_and_rebuild_from_config(tmp_path, monkeypatch):
    vae = tiny_vae().eval()
    with torch.no_grad():  # trained-looking weights, so the zero-initialised layers are checked too
        for p in vae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    vae.config.scaling_factor = 0.25
    pretrained.save("tiny-vae", vae, schedule_name=None, directory=tmp_path)
    info = json.loads((tmp_path / "tiny-vae.json").read_text())
    assert info["kind"] == "vae" and info["schedule"] is None

    rebuilt = VAE(VAEConfig(**info["config"]))
    assert rebuilt.config == vae.config and rebuilt.config.scaling_factor == 0.25
    rebuilt.load_state_dict({k: v.float() for k, v in load_file(str(tmp_path / "tiny-vae.safetensors")).items()})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reconstruct(rebuilt.eval(), x), reconstruct(vae, x), rtol=0.02, atol=0.02)

    monkeypatch.setitem(models.MODELS, "vae", VAE)  # what registering the kind will do
    loaded = pretrained.load("tiny-vae", device="cpu", directory=tmp_path)
    assert isinstance(loaded.model, VAE) and loaded.schedule is None
    assert dataclasses.asdict(loaded.model.config) == dataclasses.asdict(vae.config)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_inputs_name_the_fix():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*got \(2, 1, 64, 64\)"):
        vae.encode(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8.*resized or cropped"):
        vae.encode(torch.zeros(2, 3, 60, 64))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        vae.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"latents z must have shape \(B, 4, H, W\).*scaling_factor"):
        vae.decode(torch.zeros(2, 8, 8, 8))  # e.g. the moments, not a sample
    with pytest.raises(ValueError, match="multiples of 8"):
        train(vae, VAELoss(), torch.zeros(4, 3, 20, 20), vae_config(steps=1), device="cpu", progress=False)


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible by groups"):
        VAEConfig(base_channels=12, groups=8)
    with pytest.raises(ValueError, match="at least one level"):
        VAEConfig(channel_mult=())
    with pytest.raises(ValueError, match="measure_scaling_factor"):
        VAEConfig(scaling_factor=-1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="kl_weight"):
        VAELoss(kl_weight=-1.0)
    assert VAEConfig(channel_mult=[1, 2, 4, 4]) == VAEConfig()  # JSON lists become tuples again
