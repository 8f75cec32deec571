"""course_lib.models: shapes, conditioning, masks, input validation, config round trips, sizes."""
import dataclasses
import json

import pytest
import torch
import torch.nn as nn
from diffusers.models.embeddings import get_timestep_embedding

from course_lib.models import (MODELS, MLPConfig, MLPDenoiser, UNet, UNetConfig, build_model, mlp_2d,
                               timestep_embedding, unet_small, unet_small_cond, unet_tiny)


def randomize_zero_layers(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised layers random weights, so every path (incl. attention) affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0, 1, 17, 500, 999])
    ours = timestep_embedding(t, 64)
    ref = get_timestep_embedding(t, 64, flip_sin_to_cos=False, downscale_freq_shift=0)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert timestep_embedding(t, 33).shape == (5, 33)  # odd sizes are zero-padded


@pytest.mark.parametrize("factory, low, high", [(unet_tiny, 0.2e6, 0.8e6), (unet_small, 2e6, 4e6),
                                                (lambda: unet_small_cond(cond_dim=64), 2e6, 6e6),
                                                (mlp_2d, 0.03e6, 0.15e6)])
def test_parameter_counts_in_expected_range(factory, low, high):
    assert low <= n_params(factory()) <= high


@pytest.mark.parametrize("factory", [unet_tiny, unet_small])
def test_unet_presets_output_shape_and_zero_init(factory):
    model = factory().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eps = model(x, torch.tensor([3, 900]))
    assert eps.shape == x.shape
    # zero-initialised output conv: a fresh network predicts eps = 0 (stable start of training)
    assert torch.count_nonzero(eps) == 0
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48), 5).shape == (1, 3, 64, 48)  # other sizes run too


def test_t_may_be_int_scalar_long_or_float_tensor():
    model = randomize_zero_layers(unet_tiny())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model(x, torch.full((3,), 250, dtype=torch.long))
        for t in (250, torch.tensor(250), torch.tensor([250]), torch.full((3,), 250.0)):
            torch.testing.assert_close(model(x, t), ref)
        assert not torch.allclose(model(x, 10), ref)  # t actually matters


def test_cross_attention_shapes_and_cond_effect():
    model = randomize_zero_layers(unet_tiny(cond_dim=24))
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        with_cond = model(x, 100, cond=cond)
        other_cond = model(x, 100, cond=torch.randn(2, 7, 24))
        without = model(x, 100)
    assert with_cond.shape == x.shape
    assert not torch.allclose(with_cond, other_cond)
    assert not torch.allclose(with_cond, without)


def test_cond_mask_hides_padding_tokens():
    model = randomize_zero_layers(unet_tiny(cond_dim=24))
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 6, 24)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 5 + [False]])
    changed_padding, changed_real = cond.clone(), cond.clone()
    changed_padding[0, 3:] = torch.randn(3, 24) * 10
    changed_padding[1, 5] = torch.randn(24) * 10
    changed_real[0, 1] = torch.randn(24)
    with torch.no_grad():
        ref = model(x, 100, cond=cond, cond_mask=mask)
        torch.testing.assert_close(model(x, 100, cond=changed_padding, cond_mask=mask), ref, atol=1e-5, rtol=1e-5)
        out = model(x, 100, cond=changed_real, cond_mask=mask)
    assert not torch.allclose(out[0], ref[0])  # a real token of sample 0 changed
    torch.testing.assert_close(out[1], ref[1])  # sample 1 is untouched


def test_fully_masked_cond_equals_no_cond_and_has_finite_gradients():
    model = randomize_zero_layers(unet_tiny(cond_dim=8)).train()
    x, cond = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    out = model(x, 10, cond=cond, cond_mask=mask)
    torch.testing.assert_close(out, model(x, 10), atol=1e-6, rtol=1e-6)
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_self_attention_at_attn_resolutions():
    model = unet_small()
    attn_sizes = {m.norm.num_channels for m in model.modules() if type(m).__name__ == "SelfAttention"}
    assert attn_sizes == {32 * 4}  # only at 8x8 (level 2: 4 x base) and in the middle block
    assert not any(type(m).__name__ == "CrossAttention" for m in model.modules())
    assert any(type(m).__name__ == "CrossAttention" for m in unet_small_cond(cond_dim=16).modules())


@pytest.mark.parametrize("shape, fragment", [((2, 1, 32, 32), "(B, 3, H, W)"), ((2, 3, 30, 32), "divisible by 4"),
                                             ((3, 32, 32), "(B, 3, H, W)")])
def test_bad_x_shape_raises_value_error_naming_expected_shape(shape, fragment):
    with pytest.raises(ValueError, match="x_t must have shape") as err:
        unet_tiny()(torch.randn(shape), 1)
    assert fragment in str(err.value) and str(tuple(shape)) in str(err.value)


def test_bad_cond_and_t_raise_value_errors():
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="no cross-attention"):
        unet_tiny()(x, 1, cond=torch.randn(2, 4, 8))
    cond_model = unet_tiny(cond_dim=8)
    with pytest.raises(ValueError, match=r"cond must have shape \(2, L, 8\)"):
        cond_model(x, 1, cond=torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match="bool tensor"):
        cond_model(x, 1, cond=torch.randn(2, 4, 8), cond_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="without cond"):
        cond_model(x, 1, cond_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cond_model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(base_channels=12, groups=8)


def test_mlp_denoiser_shapes_and_errors():
    model = mlp_2d()
    assert isinstance(model, MLPDenoiser) and model.config == MLPConfig()
    x = torch.randn(5, 2)
    assert model(x, torch.arange(5)).shape == (5, 2)
    assert model(x, 7).shape == (5, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(torch.randn(5, 3), 1)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, 1, cond=torch.randn(5, 1, 4))


@pytest.mark.parametrize("model", [unet_tiny(cond_dim=16, attn_resolutions=(16,)), mlp_2d(hidden=32)],
                         ids=["unet", "mlp"])
def test_build_model_round_trips_through_json(model):
    randomize_zero_layers(model)
    config = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples come back as lists
    rebuilt = build_model(model.kind, config)
    assert type(rebuilt) is MODELS[model.kind] and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16) if isinstance(model, UNet) else torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x, 3), model(x, 3), rtol=0, atol=0)


def test_build_model_errors_name_valid_kinds_and_fields():
    with pytest.raises(ValueError, match=r"valid kinds: \['ar', 'classifier', 'dit', 'mlp', 'open_clip', 'unet', 'vae', 'vq'\]"):
        build_model("transformer", {})
    with pytest.raises(ValueError, match="unknown UNetConfig fields \\['width'\\].*base_channels"):
        build_model("unet", {"width": 3})
