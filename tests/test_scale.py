"""course_lib.scale: Stable Diffusion's networks built on the meta device have their published sizes, and the
course's counterparts are counted the same way."""
import pytest

from course_lib.scale import PUBLISHED_PARAMS, course_networks, real_networks, seconds_per_image


@pytest.fixture(scope="module")
def real():
    return real_networks()


@pytest.mark.parametrize("key", sorted(PUBLISHED_PARAMS))
def test_published_networks_have_their_published_parameter_counts(real, key):
    """SD 1.5's U-Net 860M (model card), SDXL's 2.6B (paper), DiT-XL/2 675M (paper), ViT-L/14's text tower 123M."""
    assert real[key].params == pytest.approx(PUBLISHED_PARAMS[key], rel=0.015)


def test_published_networks_cost_what_is_known(real):
    assert real["dit_xl2"].gflops / 2 == pytest.approx(118.6, rel=0.01)  # the DiT paper's 118.6 "Gflops" (MACs)
    assert "750M in diffusers" in real["dit_xl2"].note  # the per-block embedder copies, counted once here
    assert real["sdxl_unet"].gflops > 5 * real["sd15_unet"].gflops  # 4x the latent pixels, a deeper middle
    assert real["sd15_vae"].gflops > real["sd15_unet"].gflops  # one decode outweighs one denoising call


def test_course_networks_are_far_smaller_than_their_counterparts(real):
    ours = course_networks()
    assert ours["unet"].params < real["sd15_unet"].params / 100 and ours["unet"].gflops > 0
    assert ours["vae"].gflops > 0 and ours["text"].params < real["vit_l14_text"].params / 10
    assert ours["unet"].call == "one 8x8x4 latent"  # 64x64x3 -> 8x8x4: SD's 48x compression, at 1/64 the area


def test_seconds_per_image_counts_two_calls_per_step_one_decode_and_one_prompt():
    assert seconds_per_image(10.0, steps=5, decode=20.0, text=1.0, gflops_per_s=11.0) == pytest.approx(11.0)
