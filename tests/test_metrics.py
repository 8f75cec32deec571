"""Quality metrics against closed forms: white noise spreads its power evenly over frequencies."""
import math

import pytest
import torch

from course_lib.metrics import graininess, high_frequency_energy


def test_white_noise_high_band_share_matches_area():
    # White noise of variance s^2 has flat spectrum: the high band holds s^2 times its share of frequency area.
    g = torch.Generator().manual_seed(0)
    s = 0.3
    x = s * torch.randn(64, 3, 32, 32, generator=g)
    fy = torch.fft.fftfreq(32)[:, None]
    fx = torch.fft.fftfreq(32)[None, :]
    share = ((fy**2 + fx**2).sqrt() > 0.25).float().mean().item()
    got = high_frequency_energy(x).mean().item()
    assert got == pytest.approx(s**2 * share, rel=0.03)


def test_smooth_images_have_almost_no_high_frequency_energy():
    xx = torch.arange(32.0) / 32  # periodic grid: the FFT sees one seamless cycle, no edge leakage
    smooth = (0.8 * torch.sin(2 * math.pi * xx)).expand(2, 3, 32, 32)  # (B, C, H, W), one cycle per row
    assert high_frequency_energy(smooth).max().item() < 1e-6


def test_graininess_orders_clean_grainy_and_blurry():
    g = torch.Generator().manual_seed(1)
    clean = torch.zeros(16, 3, 32, 32)
    clean[:, :, 8:24, 8:24] = 0.9  # sharp-edged squares
    grainy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    blurry = torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2)
    assert graininess(clean, clean) == pytest.approx(1.0)
    assert graininess(grainy, clean) > 2.0
    assert graininess(blurry, clean) < 0.5


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        high_frequency_energy(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_energy(torch.zeros(1, 3, 8, 8), cutoff=0.7)
