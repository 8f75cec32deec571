"""course_lib.losses, the objectives, beyond what test_training / test_vae / test_classifier / test_clip check:
every random draw comes from the run's generator (never the global RNG), the draws are exactly the documented
ones (replayed by hand), dtypes follow the data, and the settings' boundaries are where the docstrings put them.
Written against the mutants `make mutation` found surviving (mutation.md)."""
import math

import pytest
import torch
import torch.nn as nn

from course_lib.data import ShapesDataset, attribute_indices
from course_lib.losses import ClassifierLoss, ContrastiveLoss, EpsilonLoss, VAELoss, augment, blur3x3, \
    diffusion_loss, drop_captions
from course_lib.models import ClassifierConfig, ShapesClassifier, mlp_2d, unet_tiny, vae_f8
from course_lib.schedules import NoiseSchedule

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def objectives():
    """(name, model, objective, batch) for every objective, each on a small seeded model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    text = unet_tiny(image_size=8, base_channels=8, channel_mult=(1, 2), attn_resolutions=(4,), cond_dim=8)
    with torch.no_grad():  # the zero-initialised output layers too, so a dropped caption changes the loss
        for weight in text.parameters():
            weight.add_(0.1 * torch.randn(weight.shape, generator=g))
    tokens, mask = torch.randn(6, 5, 8, generator=g), torch.ones(6, 5, dtype=torch.bool)
    empty = (torch.zeros(5, 8), torch.tensor([True, True, False, False, False]))
    ds = ShapesDataset(size=16, n=6, seed=0)
    targets = torch.stack(list(attribute_indices(ds.attributes()).values()), dim=1)
    from course_lib.batches import CaptionBatches
    from course_lib.models.clip import create_clip

    clip_batch = CaptionBatches(ShapesDataset(size=16, n=32, seed=0)).sample(6, torch.Generator().manual_seed(0))
    return [
        ("eps", mlp_2d(hidden=16), EpsilonLoss(NoiseSchedule.linear()), torch.randn(6, 2, generator=g)),
        ("eps+captions", text, EpsilonLoss(NoiseSchedule.linear(), 0.5, empty),
         (torch.randn(6, 3, 8, 8, generator=g), tokens, mask)),
        ("vae", vae_f8(base_channels=8, channel_mult=(1, 2, 2, 2), groups=4, image_size=16), VAELoss(1e-3),
         ds.images()),
        ("classifier", ShapesClassifier(ClassifierConfig(image_size=16, width=8, groups=4)), ClassifierLoss(0.1, 0.5),
         (ds.images(), targets)),
        ("clip", create_clip(TINY_CLIP), ContrastiveLoss(), clip_batch),
    ]


def loss_value(out):
    return (out["loss"] if isinstance(out, dict) else out).item()


@pytest.mark.parametrize("case", range(5), ids=["eps", "eps+captions", "vae", "classifier", "clip"])
def test_objectives_draw_only_from_the_generator_they_are_given(case):
    name, model, objective, batch = objectives()[case]
    model.eval()  # dropout off: only the objective's own draws may vary
    values = []
    for global_seed in (1, 2):  # the global RNG changes between the calls; the generator does not
        torch.manual_seed(global_seed)
        values.append(loss_value(objective(model, batch, torch.Generator().manual_seed(7))))
    assert values[0] == values[1], name
    if name != "clip":  # every other objective is random: another seed, another loss
        assert loss_value(objective(model, batch, torch.Generator().manual_seed(8))) != values[0], name


def test_diffusion_loss_works_without_a_generator_and_keeps_the_data_dtype():
    def model(x_t, t, cond=None, cond_mask=None):  # any eps-model; this one reads t, so t's draw matters too
        return x_t * (t[:, None].to(x_t.dtype) / 1000)

    x0 = torch.randn(8, 2, dtype=torch.float64)
    torch.manual_seed(3)
    loss = diffusion_loss(model, NoiseSchedule.linear(), x0)  # no generator: the global RNG, on x0's device
    torch.manual_seed(3)
    t = torch.randint(0, 1000, (8,))
    eps = torch.randn(8, 2, dtype=torch.float64)  # drawn in x0's dtype
    a = NoiseSchedule.linear().alphas_cumprod[t].double()[:, None]
    expected = ((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).mean()
    torch.testing.assert_close(loss, expected.float())


def test_drop_captions_replays_its_one_draw_by_hand():
    g = torch.Generator().manual_seed(4)
    cond, mask = torch.randn(10, 3, 2) + 10, torch.ones(10, 3, dtype=torch.bool)
    empty = (torch.zeros(3, 2), torch.tensor([True, False, False]))
    new_cond, new_mask = drop_captions(cond, mask, 0.4, g, empty)
    drop = torch.rand(10, generator=torch.Generator().manual_seed(4)) < 0.4  # (B,): the documented draw
    assert 0 < drop.sum() < 10
    assert torch.equal(new_cond[drop], torch.zeros(int(drop.sum()), 3, 2)) and torch.equal(new_cond[~drop], cond[~drop])
    assert torch.equal(new_mask[drop], empty[1].expand(int(drop.sum()), 3)) and new_mask[~drop].all()
    masked_cond, masked = drop_captions(cond, mask, 0.4, torch.Generator().manual_seed(4))  # no empty prompt
    assert torch.equal(masked_cond, cond) and torch.equal(masked, mask & ~drop[:, None])


def test_augment_replays_its_draws_by_hand():
    x = ShapesDataset(size=16, n=6, seed=0).images()
    for noise_std, blur_prob in ((0.1, 0.5), (0.2, 0.0), (0.0, 0.7)):
        g = torch.Generator().manual_seed(5)
        expected = x
        if blur_prob > 0:  # 1. which images to blur (drawn only when blurring is on)
            soft = torch.rand(6, generator=g) < blur_prob
            expected = torch.where(soft[:, None, None, None], blur3x3(x), expected)
        if noise_std > 0:  # 2. a noise level per image, 3. the noise
            sigma = torch.rand(6, 1, 1, 1, generator=g) * noise_std
            expected = expected + sigma * torch.randn(x.shape, generator=g)
        generator = torch.Generator().manual_seed(5)
        got = augment(x, generator, noise_std=noise_std, blur_prob=blur_prob)
        assert torch.equal(got, expected), (noise_std, blur_prob)
        assert torch.equal(generator.get_state(), g.get_state())  # and nothing else was drawn


def test_blur_keeps_the_image_dtype():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    assert blur3x3(x).dtype == torch.float64
    torch.testing.assert_close(blur3x3(x).float(), blur3x3(x.float()))


@pytest.mark.parametrize("make, ok", [
    (lambda: EpsilonLoss(NoiseSchedule.linear(), 0.0), True), (lambda: EpsilonLoss(NoiseSchedule.linear(), 0.99), True),
    (lambda: EpsilonLoss(NoiseSchedule.linear(), 1.0), False), (lambda: EpsilonLoss(NoiseSchedule.linear(), -0.1), False),
    (lambda: VAELoss(0.0), True), (lambda: VAELoss(-1e-9), False),
    (lambda: ClassifierLoss(noise_std=0.0, blur_prob=1.0), True), (lambda: ClassifierLoss(noise_std=-0.1), False),
    (lambda: ClassifierLoss(blur_prob=1.01), False),
])
def test_objective_settings_accept_exactly_their_documented_range(make, ok):
    if ok:
        make()
    else:
        with pytest.raises(ValueError):
            make()


def test_eps_loss_with_caption_dropout_needs_both_tokens_and_mask():
    model = unet_tiny(image_size=8, base_channels=8, channel_mult=(1, 2), attn_resolutions=(4,), cond_dim=8)
    x0, tokens = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="needs captions"):
        EpsilonLoss(NoiseSchedule.linear(), 0.2)(model, (x0, tokens, None), torch.Generator())


def test_contrastive_loss_of_two_pairs_is_the_two_way_cross_entropy():
    image_features = nn.functional.normalize(torch.randn(2, 4), dim=1)
    text_features = nn.functional.normalize(torch.randn(2, 4), dim=1)

    class Fixed(nn.Module):  # stands in for CLIP: fixed features, s = 10
        def forward(self, images, tokens):
            return image_features, text_features, torch.tensor(10.0)

    loss = ContrastiveLoss()(Fixed(), (torch.zeros(2, 3, 16, 16), torch.zeros(2, 32, dtype=torch.long)), None)
    logits = 10.0 * image_features @ text_features.T
    labels = torch.arange(2)
    expected = (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(loss, expected)
    assert math.isfinite(loss.item())


def test_random_helpers_fall_back_to_the_global_rng_without_a_generator():
    cond, mask = torch.randn(8, 3, 2), torch.ones(8, 3, dtype=torch.bool)
    torch.manual_seed(0)
    first = drop_captions(cond, mask, 0.5, None)[1]
    torch.manual_seed(0)
    assert torch.equal(drop_captions(cond, mask, 0.5, None)[1], first)
    x = torch.zeros(4, 3, 5, 5)
    torch.manual_seed(0)
    assert augment(x, None, noise_std=0.1, blur_prob=0.5).shape == x.shape


def test_eps_loss_says_what_a_batch_must_hold():
    with pytest.raises(ValueError, match=r"x0, or \(x0, cond tokens, cond mask\); got 2 tensors"):
        EpsilonLoss(NoiseSchedule.linear())(mlp_2d(), (torch.randn(2, 2), torch.randn(2, 3, 4)), torch.Generator())
