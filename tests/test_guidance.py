"""Classifier-free guidance: the formula, the diffusers convention, and the batched wrapper."""
import pytest
import torch

from course_lib.guidance import GuidedModel, cfg


class ToyCondModel(torch.nn.Module):
    """eps = x * (1 + mean of masked tokens): conditional and unconditional answers differ in a known way."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, t, cond=None, cond_mask=None):
        self.calls.append(x_t.shape[0])
        m = cond_mask.float().unsqueeze(-1)  # (B, L, 1)
        c = (cond * m).sum((1, 2)) / (m.sum((1, 2)) * cond.shape[-1]).clamp(min=1)  # (B,) mean token value
        return x_t * (1 + c.view(-1, 1, 1, 1))


def _tokens(value, L=4, D=3):
    return torch.full((1, L, D), float(value)), torch.ones(1, L, dtype=torch.bool)


def test_cfg_matches_ho_salimans_with_w_equal_s_minus_1():
    g = torch.Generator().manual_seed(0)
    eu, ec = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for s in (0.0, 1.0, 3.0, 7.5):
        w = s - 1
        assert torch.allclose(cfg(eu, ec, s), (1 + w) * ec - w * eu, atol=1e-6)
    assert torch.equal(cfg(eu, ec, 0.0), eu) and torch.allclose(cfg(eu, ec, 1.0), ec)


def test_guided_model_batches_both_passes_and_applies_cfg():
    model = ToyCondModel()
    cond, cond_mask = _tokens(2.0)
    uncond, uncond_mask = _tokens(0.0)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 10)
    for s in (0.0, 1.0, 5.0):
        model.calls.clear()
        out = GuidedModel(model, cond, cond_mask, uncond, uncond_mask, s)(x, t)
        want = cfg(x * 1.0, x * 3.0, s)  # uncond: 1 + 0, cond: 1 + 2
        assert torch.allclose(out, want, atol=1e-6)
        assert model.calls == ([6] if s not in (0.0, 1.0) else [3])  # one batched pass of 2B, or a single pass


def test_guided_model_errors():
    cond, mask = _tokens(1.0)
    with pytest.raises(ValueError, match="guidance_scale must be a number >= 0"):
        GuidedModel(ToyCondModel(), cond, mask, cond, mask, -1)
    with pytest.raises(ValueError, match="guidance_scale"):
        GuidedModel(ToyCondModel(), cond, mask, cond, mask, "7")
    bad = GuidedModel(ToyCondModel(), cond.repeat(2, 1, 1), mask.repeat(2, 1), cond, mask, 3.0)
    with pytest.raises(ValueError, match="expected 1 or 3"):
        bad(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))


# ----- written against the mutants `make mutation` found surviving (mutation.md) ---------------------------
class TimeModel(torch.nn.Module):
    """eps = x * t / 1000 + mean cond token: answers depend on t and on the conditioning of each image."""

    def forward(self, x_t, t, cond=None, cond_mask=None):
        assert cond.shape[0] == x_t.shape[0] == t.shape[0]  # one conditioning per image, never broadcast here
        return x_t * t.view(-1, 1, 1, 1) / 1000 + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


@pytest.mark.parametrize("s", [0.0, 1.0, 4.0])
def test_guided_model_passes_t_and_per_image_conditioning_through(s):
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 1, 2, 2, generator=g), torch.tensor([100, 900])
    cond, uncond = torch.randn(2, 5, 3, generator=g), torch.zeros(1, 5, 3)  # one prompt per image; one ""
    mask, uncond_mask = torch.ones(2, 5, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    out = GuidedModel(TimeModel(), cond, mask, uncond, uncond_mask, s)(x, t)
    scaled = x * t.view(-1, 1, 1, 1) / 1000
    want = cfg(scaled, scaled + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1), s)
    torch.testing.assert_close(out, want)
