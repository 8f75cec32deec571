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


# ---- classifier-based metrics -----------------------------------------------------------------------------
import numpy as np  # noqa: E402

from course_lib.data import Attributes, ShapesDataset, render  # noqa: E402
from course_lib.metrics import (attribute_accuracy, classifier_features, feature_stats, frechet_distance,  # noqa: E402
                                frechet_distance_from_stats, prompt_accuracy, saturation)
from course_lib.models.classifier import shapes_classifier  # noqa: E402


class OracleClassifier:
    """A deterministic stand-in for a perfect classifier: it looks each image up in a table of known renders."""

    def __init__(self, images, attrs):
        self.table = {img.numpy().tobytes(): a for img, a in zip(images, attrs)}

    def predict(self, images):
        return [self.table[img.numpy().tobytes()] for img in images]


class PixelFeatures:
    """features(images) = the raw pixel values, so a test can put any point cloud into 'feature space'."""

    def features(self, images):
        return images.flatten(1)  # (B, C*H*W)


PROMPT = Attributes("star", "yellow", "large", "left", "black")
OTHER = Attributes("heart", "blue", "small", "right", "white")


@pytest.fixture(scope="module")
def oracle_and_renders():
    rng = np.random.default_rng(0)
    jitters = [dict(dx=float(rng.uniform(-0.03, 0.03)), dy=0.0, angle=float(rng.uniform(-10, 10))) for _ in range(4)]
    prompt_imgs = torch.stack([render(PROMPT, jitter=j) for j in jitters])  # (4, 3, 32, 32): varied renders
    other_imgs = torch.stack([render(OTHER, jitter=j) for j in jitters])
    oracle = OracleClassifier(torch.cat([prompt_imgs, other_imgs]), [PROMPT] * 4 + [OTHER] * 4)
    return oracle, prompt_imgs, other_imgs


def test_prompt_accuracy_is_one_on_renders_of_the_prompt_and_zero_on_others(oracle_and_renders):
    oracle, prompt_imgs, other_imgs = oracle_and_renders
    assert prompt_accuracy(prompt_imgs, PROMPT, oracle) == 1.0
    assert prompt_accuracy(prompt_imgs, PROMPT.as_dict(), oracle) == 1.0  # a dict works as well
    assert prompt_accuracy(other_imgs, PROMPT, oracle) == 0.0
    mixed = torch.cat([prompt_imgs[:3], other_imgs[:1]])
    assert prompt_accuracy(mixed, PROMPT, oracle) == 0.75
    assert prompt_accuracy(mixed, [PROMPT, OTHER, OTHER, OTHER], oracle) == 0.5  # one target per image: 1st, 4th right


def test_prompt_accuracy_only_checks_the_requested_keys(oracle_and_renders):
    oracle, prompt_imgs, _ = oracle_and_renders
    wrong_place = {"shape": "star", "color": "yellow", "size": "large", "position": "right"}
    assert prompt_accuracy(prompt_imgs, wrong_place, oracle) == 0.0
    assert prompt_accuracy(prompt_imgs, wrong_place, oracle, keys=("shape", "color", "size")) == 1.0
    # A partial prompt is fine when it names every checked key; the background is not checked by default.
    assert prompt_accuracy(prompt_imgs, {"shape": "star", "color": "yellow"}, oracle, keys=("shape", "color")) == 1.0
    assert prompt_accuracy(prompt_imgs, Attributes("star", "yellow", "large", "left", "white"), oracle) == 1.0
    assert prompt_accuracy(prompt_imgs, Attributes("star", "yellow", "large", "left", "white"), oracle,
                           keys=("background",)) == 0.0


def test_attribute_accuracy_per_key(oracle_and_renders):
    oracle, prompt_imgs, other_imgs = oracle_and_renders
    images = torch.cat([prompt_imgs, other_imgs[:2]])  # 4 matching + 2 not
    half_right = Attributes("star", "blue", "small", "left", "black")  # shape + position of the prompt
    acc = attribute_accuracy(images, half_right, oracle)
    assert acc == {"shape": 4 / 6, "color": 2 / 6, "size": 2 / 6, "position": 4 / 6}
    assert attribute_accuracy(images, half_right, oracle, keys=("background",)) == {"background": 4 / 6}


def test_classifier_metrics_reject_bad_input(oracle_and_renders):
    oracle, prompt_imgs, _ = oracle_and_renders
    with pytest.raises(ValueError, match=r"\(B>=1, 3, H, W\)"):
        prompt_accuracy(prompt_imgs[:, :1], PROMPT, oracle)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        prompt_accuracy(prompt_imgs[0], PROMPT, oracle)
    with pytest.raises(ValueError, match="got 2 attributes for 4 images; pass one per image"):
        prompt_accuracy(prompt_imgs, [PROMPT, PROMPT], oracle)
    with pytest.raises(ValueError, match="keys must be a non-empty subset of shape, color"):
        prompt_accuracy(prompt_imgs, PROMPT, oracle, keys=("shape", "hue"))
    with pytest.raises(ValueError, match=r"unknown keys \['hue'\].*valid keys"):
        prompt_accuracy(prompt_imgs, {"shape": "star", "hue": "red"}, oracle, keys=("shape",))
    with pytest.raises(ValueError, match=r"lacks requested keys \['position'\].*keys="):
        attribute_accuracy(prompt_imgs, {"shape": "star", "color": "red", "size": "large"}, oracle)
    with pytest.raises(ValueError, match="unknown color 'teal'; valid colors: red"):
        prompt_accuracy(prompt_imgs, {"shape": "star", "color": "teal"}, oracle, keys=("shape", "color"))
    with pytest.raises(ValueError, match="one object per image"):
        prompt_accuracy(prompt_imgs, [[PROMPT, OTHER]] * 4, oracle)


def test_frechet_formula_matches_closed_form_for_diagonal_covariances():
    # For diagonal covariances (S1 S2)^{1/2} = diag(sqrt(s1 s2)), so the distance is
    # ||mu1 - mu2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g), torch.randn(6, generator=g)
    v1, v2 = torch.rand(6, generator=g) + 0.1, torch.rand(6, generator=g) + 0.1
    expected = (mu1 - mu2).pow(2).sum() + (v1.sqrt() - v2.sqrt()).pow(2).sum()
    got = frechet_distance_from_stats(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected.item(), rel=1e-6)
    assert frechet_distance_from_stats([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + (2 - 1) ** 2)


def test_frechet_formula_for_full_covariances_against_eigenvalues_of_the_product():
    # Independent route: Tr (S1 S2)^{1/2} = sum of sqrt(eigenvalues of the non-symmetric S1 S2), all real >= 0.
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), b @ b.T
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    tr_sqrt = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    expected = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(frechet_distance_from_stats(mu2, s2, mu1, s1),
                                                                          rel=1e-9)
    # Identical Gaussians, even rank-deficient ones (fewer samples than features): exactly ~0, never negative noise.
    low_rank = a[:, :2] @ a[:, :2].T
    assert abs(frechet_distance_from_stats(mu1, low_rank, mu1, low_rank)) < 1e-9


def test_frechet_distance_of_two_gaussian_point_sets_matches_the_closed_form():
    # Features = pixels of (N, 3, 1, 1) "images". Each set is whitened, then scaled and shifted, so its sample
    # mean is exactly mu and its (unbiased) sample covariance exactly diag(sd^2): the distance must then equal
    # ||mu1 - mu2||^2 + sum (sd1 - sd2)^2 up to round-off, with no sampling noise.
    def gaussian_points(mu, sd, seed):
        z = torch.randn(200, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        z = z - z.mean(0)
        z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance = identity
        return (mu + sd * z).view(-1, 3, 1, 1)  # (N, 3, 1, 1)

    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    sd1, sd2 = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1.0, 1.0, 1.0])
    a, b = gaussian_points(mu1, sd1, 0), gaussian_points(mu2, sd2, 1)
    expected = ((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum()  # 1.25 + 1.25
    # rel 1e-6: features are handed over as float32 (the statistics are then computed in float64).
    assert frechet_distance(a, b, PixelFeatures()) == pytest.approx(expected.item(), rel=1e-6)
    mu, cov = feature_stats(a.flatten(1))
    assert mu.dtype == torch.float64
    torch.testing.assert_close(cov, torch.diag(sd1.double() ** 2))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return shapes_classifier()  # untrained is enough: the distance only needs some fixed feature map


def test_frechet_distance_zero_for_identical_sets_symmetric_and_growing_with_shift(net):
    images = ShapesDataset(n=48, seed=3).images()
    other = ShapesDataset(n=48, seed=4).images()
    feats = classifier_features(images, net)
    assert feats.shape == (48, net.feature_dim) and feats.dtype == torch.float32
    assert abs(frechet_distance(images, images, net)) < 1e-6
    d_ab, d_ba = frechet_distance(images, other, net), frechet_distance(other, images, net)
    assert d_ab > 0 and d_ab == pytest.approx(d_ba, rel=1e-9)
    distances = [frechet_distance(images, (images + shift).clamp(-1, 1), net) for shift in (0.0, 0.2, 0.5)]
    assert abs(distances[0]) < 1e-6 < distances[1] < distances[2]


def test_frechet_bad_input(net):
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_distance(torch.zeros(1, 3, 32, 32), torch.zeros(4, 3, 32, 32), net)
    with pytest.raises(ValueError, match=r"images_b must be a batch of images \(B, C, H, W\)"):
        frechet_distance(torch.zeros(4, 3, 32, 32), torch.zeros(3, 32, 32), net)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance_from_stats(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_saturation_on_constructed_images():
    clipped = torch.ones(2, 3, 8, 8)
    clipped[:, :, :4] = -1.0  # every value at an end of [-1, 1]
    assert saturation(clipped)["clipped_fraction"] == 1.0
    gray = torch.full((1, 3, 8, 8), 0.3)
    assert saturation(gray) == {"clipped_fraction": 0.0, "mean_chroma": 0.0}
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8)  # pure red
    assert saturation(red)["mean_chroma"] == pytest.approx(1.0)
    half = red.clone()
    half[..., 4:] = 0.0  # right half gray: chroma 0 there
    assert saturation(half) == pytest.approx({"clipped_fraction": 0.5, "mean_chroma": 0.5})
    near = torch.full((1, 3, 4, 4), 0.979)
    near[..., :2] = -0.98  # exactly at the threshold counts, just below does not
    assert saturation(near)["clipped_fraction"] == 0.5
    with pytest.raises(ValueError, match=r"RGB images \(B>=1, 3, H, W\)"):
        saturation(torch.zeros(1, 1, 8, 8))


def test_graininess_is_robust_to_one_failed_sample():
    clean = torch.zeros(9, 3, 32, 32)
    clean[:, :, 8:24, 8:24] = 0.9
    samples = clean.clone()
    samples[0] += torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2))  # one sample is pure grain
    assert graininess(samples, clean) == pytest.approx(1.0)
