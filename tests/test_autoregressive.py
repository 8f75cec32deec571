"""Chapter 8's pieces: the autoregressive transformer (causality, KV cache, sampling, CFG on logits, forced
tokens), palettes, the VQ tokenizer, the token loss and inpainting with any diffusion sampler."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.autoregressive import sample_tokens
from course_lib.data import ShapesDataset
from course_lib.inpainting import KnownRegion
from course_lib.losses import TokenLoss, VQLoss, next_token_loss
from course_lib.models import ARConfig, ARTransformer, VQConfig, VQModel, build_model
from course_lib.models.ar import palette_of, pixels_to_tokens
from course_lib.samplers import get_sampler, make_timesteps
from course_lib.schedules import NoiseSchedule
from course_lib.tokens import ImageTokenizer


def tiny(cond_dim=8, **overrides) -> ARTransformer:
    torch.manual_seed(0)
    return ARTransformer(ARConfig(**{"vocab_size": 5, "height": 3, "width": 4, "d_model": 16, "depth": 2,
                                     "num_heads": 2, "cond_dim": cond_dim, **overrides})).eval()


def conditioning(batch=2, length=3, dim=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g), torch.tensor([[True, True, False]] * batch)


def test_later_tokens_never_change_earlier_logits():
    model = tiny()
    cond, mask = conditioning()
    tokens = torch.randint(0, 5, (2, 12), generator=torch.Generator().manual_seed(0))
    base = model(tokens, cond, mask)
    for j in (0, 5, 11):
        changed = tokens.clone()
        changed[:, j] = (changed[:, j] + 1) % 5
        out = model(changed, cond, mask)
        assert torch.allclose(out[:, :j + 1], base[:, :j + 1], atol=1e-6)  # positions <= j read tokens < j... and j
        if j < 11:
            assert not torch.allclose(out[:, j + 1:], base[:, j + 1:], atol=1e-4)  # later positions do read it


def test_kv_cache_steps_equal_the_teacher_forced_pass():
    model = tiny()
    cond, mask = conditioning()
    tokens = torch.randint(0, 5, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(tokens, cond, mask)  # (2, 12, 5)
    inputs = torch.cat([torch.full((2, 1), model.start_token), tokens[:, :-1]], dim=1)  # shifted right
    caches, pieces, first = model.new_caches(), [], 0
    for n in (1, 4, 2, 5):  # uneven chunks: the mask must line up with the cache
        pieces.append(model.step(inputs[:, first:first + n], first, caches, cond, mask))
        first += n
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_greedy_sampling_is_the_argmax_of_a_full_pass_at_every_position():
    model = tiny()
    cond, mask = conditioning(batch=1)
    sampled = sample_tokens(model, 1, cond=cond, cond_mask=mask, temperature=0)
    logits = model(sampled, cond, mask)  # teacher-forced on its own output
    assert torch.equal(logits.argmax(-1), sampled)


def test_guidance_on_logits_at_scale_0_ignores_the_prompt_and_at_1_ignores_the_empty_prompt():
    model = tiny()
    cond, mask = conditioning(batch=1, seed=1)
    uncond, umask = conditioning(batch=1, seed=2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    kwargs = dict(uncond=uncond, uncond_mask=umask, temperature=1.0)
    assert torch.equal(sample_tokens(model, 3, cond=cond, cond_mask=mask, guidance_scale=0.0, generator=g(), **kwargs),
                       sample_tokens(model, 3, cond=uncond, cond_mask=umask, generator=g()))
    assert torch.equal(sample_tokens(model, 3, cond=cond, cond_mask=mask, guidance_scale=1.0, generator=g(), **kwargs),
                       sample_tokens(model, 3, cond=cond, cond_mask=mask, generator=g()))
    with pytest.raises(ValueError, match="uncond"):
        sample_tokens(model, 1, cond=cond, cond_mask=mask, guidance_scale=3.0)


def test_forced_tokens_are_kept_and_each_image_draws_from_its_own_generator():
    model = tiny()
    cond, mask = conditioning(batch=1)
    known = torch.full((3, 12), -1)
    known[:, 6:] = torch.tensor([4, 3, 2, 1, 0, 4])
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(3)]  # noqa: E731
    out = sample_tokens(model, cond=cond, cond_mask=mask, known=known, generator=gens())
    assert torch.equal(out[:, 6:], known[:, 6:])
    alone = sample_tokens(model, cond=cond, cond_mask=mask, known=known[2:], generator=gens()[2:])
    assert torch.equal(alone[0], out[2])


def test_top_k_1_is_greedy_and_bad_options_are_clear_errors():
    model = tiny()
    cond, mask = conditioning(batch=1)
    greedy = sample_tokens(model, 1, cond=cond, cond_mask=mask, temperature=0)
    top1 = sample_tokens(model, 1, cond=cond, cond_mask=mask, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(model, 1, cond=cond, cond_mask=mask, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        sample_tokens(model, 1, cond=cond, cond_mask=mask, top_k=6)
    with pytest.raises(ValueError, match="caption-conditioned"):
        model(torch.zeros(1, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 12\) LongTensor"):
        model(torch.zeros(1, 11, dtype=torch.long), cond, mask)


def test_the_loss_is_next_token_cross_entropy_and_uniform_logits_give_log_v():
    model = tiny()
    cond, mask = conditioning()
    tokens = torch.randint(0, 5, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = model(tokens, cond, mask)
    expected = F.cross_entropy(logits.reshape(-1, 5), tokens.reshape(-1))
    assert torch.allclose(next_token_loss(model, tokens, cond, mask), expected)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    loss = TokenLoss()(model, (tokens, cond, mask), torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(5.0)).item(), abs=1e-6)


def test_a_palette_from_the_renders_is_lossless_and_the_config_round_trips():
    images = ShapesDataset(size=32, n=200, seed=0).images()
    palette = palette_of(images)
    assert 20 < len(palette) < 300  # blends of 7 colours with 2 backgrounds: a couple of hundred at most
    tokenizer = ImageTokenizer.from_palette(palette, 32)
    back = tokenizer.decode(tokenizer.encode(images))
    assert (back - images).abs().max().item() * 127.5 <= 0.5 + 1e-4  # only the rounding to 0..255
    model = ARTransformer(ARConfig(vocab_size=len(palette), palette=[list(c) for c in palette], d_model=16,
                                   num_heads=2, depth=1))
    rebuilt = build_model("ar", {**model.config.__dict__, "palette": [list(c) for c in palette]})
    assert rebuilt.config == model.config
    decode = ImageTokenizer.from_palette(rebuilt.config.palette, 32).decode  # the rebuilt model's own palette
    assert torch.equal(decode(pixels_to_tokens(images[:2], palette)), back[:2])
    with pytest.raises(ValueError, match="vocab_size"):
        ARConfig(vocab_size=3, palette=palette)


def test_the_canvas_shows_written_tokens_and_grey_elsewhere():
    palette = ((255, 0, 0), (0, 0, 255))
    tokenizer = ImageTokenizer.from_palette(palette, 2)
    canvas = tokenizer.canvas(torch.tensor([[1, 0, -1, -1]]))
    assert torch.allclose(canvas[0, :, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    assert torch.allclose(canvas[0, :, 0, 1], torch.tensor([1.0, -1.0, -1.0]))
    assert canvas[0, :, 1].abs().max() == 0


def test_vq_codes_round_trip_and_the_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    vq = VQModel(VQConfig(image_size=16, channels=16, code_dim=4, codebook_size=8))
    images = ShapesDataset(size=16, n=4, seed=0).images()
    codes = vq.encode(images)
    assert codes.shape == (4, 4, 4) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 8
    assert torch.equal(vq.encode(images), vq.quantize(F.normalize(vq.encoder(images), dim=1)))
    recon, z, z_q = vq(images)
    assert torch.allclose(recon, vq.decode(codes), atol=1e-5)  # straight-through: the forward value is the codes'
    losses = VQLoss()(vq, images, None)
    losses["loss"].backward()
    assert vq.encoder[0].weight.grad.abs().sum() > 0 and vq.codebook.weight.grad.abs().sum() > 0
    assert losses["commitment"].item() == pytest.approx(losses["codebook"].item(), rel=1e-5)  # same distance


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmpp_2m"])
def test_known_region_inpaints_with_any_sampler(sampler):
    schedule = NoiseSchedule.from_name("linear")
    known = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, :] = True
    seen = []

    def eps_model(x_t, t):  # a stand-in network that predicts zero noise, and notes what it was shown
        seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t)

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = get_sampler(sampler)(KnownRegion(eps_model, schedule, known, mask), x_T, schedule,
                               make_timesteps(schedule, 10), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out[..., :4, :], known[..., :4, :], atol=1e-4)  # the known half comes out as given
    assert not torch.allclose(out[..., 4:, :], known[..., 4:, :], atol=0.1)  # the rest is the model's
    x_t, t = seen[len(seen) // 2]  # mid-way the model sees the known half noised to its level
    alpha_bar = 1 / (1 + schedule.sigma_at(t.float())[0] ** 2)
    residual = (x_t - alpha_bar.sqrt() * known)[..., :4, :] / (1 - alpha_bar).sqrt()
    assert 0.5 < residual.std().item() < 1.5  # unit-scale noise around sqrt(alpha_bar) * known


def test_known_region_rejects_a_mask_of_the_wrong_kind():
    schedule = NoiseSchedule.from_name("linear")
    with pytest.raises(ValueError, match="bool"):
        KnownRegion(lambda x, t: x, schedule, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
