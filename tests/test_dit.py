"""course_lib.models.dit: equal to diffusers' DiTTransformer2DModel, patches, positions, adaLN-Zero, conditioning,
and that a DiT plugs into guidance, the samplers and checkpoints like a U-Net."""
import pytest
import torch
from diffusers import DiTTransformer2DModel

from course_lib.guidance import GuidedModel
from course_lib.models import DiT, DiTConfig, build_model, dit
from course_lib.models.dit import modulate, patchify, sincos_pos_embed, unpatchify
from course_lib.samplers import ddim, make_timesteps
from course_lib.schedules import NoiseSchedule


def diffusers_dit(learn_sigma: bool, seed: int = 0, **overrides) -> DiTTransformer2DModel:
    """A small diffusers DiT with every weight random (zero-initialised layers would hide a wrong mapping) and, as
    in converted checkpoints, the same timestep/class embedder in every block."""
    torch.manual_seed(seed)
    config = {**dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=3, sample_size=8,
                     patch_size=2, num_embeds_ada_norm=10, out_channels=8 if learn_sigma else 4), **overrides}
    model = DiTTransformer2DModel(**config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
    return model


@pytest.mark.parametrize("learn_sigma, overrides", [(False, {}), (True, {}),
                                                    (False, dict(patch_size=4, norm_eps=1e-6, sample_size=16))])
def test_from_diffusers_reproduces_diffusers_outputs(learn_sigma, overrides):
    ref = diffusers_dit(learn_sigma, **overrides)
    ours = DiT.from_diffusers(ref).eval()
    size = ref.config.sample_size
    x = torch.randn(3, 4, size, size, generator=torch.Generator().manual_seed(1))
    t, labels = torch.tensor([0, 417, 999]), torch.tensor([0, 7, 10])  # 10 = the null class CFG uses
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=labels).sample
        full = ours.forward_full(x, t, labels)
    assert full.shape == expected.shape == (3, 8 if learn_sigma else 4, size, size)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, t, labels), expected[:, :4], atol=1e-5, rtol=1e-5)  # eps comes first
    assert ours.config.learn_sigma == learn_sigma and ours.config.downscale_freq_shift == 1.0


def test_from_diffusers_refuses_blocks_whose_embedders_differ():
    ref = diffusers_dit(False)
    with torch.no_grad():
        ref.transformer_blocks[2].norm1.emb.timestep_embedder.linear_1.bias.add_(0.01)
    with pytest.raises(ValueError, match="block 2's timestep/class embedder differs from block 0's"):
        DiT.from_diffusers(ref)


def test_the_paper_frequencies_differ_from_diffusers_so_the_shift_is_a_config_field():
    """With downscale_freq_shift=0 (the paper's) the converted weights give other outputs: the field matters."""
    ref = diffusers_dit(False)
    ours = DiT.from_diffusers(ref)
    paper = DiT(DiTConfig(**{**ours.config.__dict__, "downscale_freq_shift": 0.0}))
    paper.load_state_dict(ours.state_dict())
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([300, 900]), torch.tensor([1, 2])
    assert (paper(x, t, y) - ours(x, t, y)).abs().max() > 1e-3


def test_position_embedding_equals_diffusers():
    ref = diffusers_dit(False, sample_size=16)
    torch.testing.assert_close(sincos_pos_embed(32, 8)[None], ref.pos_embed.pos_embed, atol=1e-6, rtol=0)


def test_patchify_and_unpatchify_are_inverse_and_in_raster_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 4 * 4 * 3)  # (B, T, p*p*C): 2x2 patches of 4x4x3 numbers
    assert torch.equal(unpatchify(tokens, 4, 3), x)
    # token 1 is the top-right patch: its first entry is pixel (row 0, column 4) of channel 0
    assert tokens[0, 1, 0] == x[0, 0, 0, 4] and tokens[0, 2, 0] == x[0, 0, 4, 0]


def test_modulate_scales_then_shifts_every_token():
    x = torch.ones(2, 5, 3)
    shift, scale = torch.tensor([[1.0, 2, 3], [0, 0, 0]]), torch.tensor([[0.0, 1, -1], [1, 1, 1]])
    out = modulate(x, shift, scale)
    assert torch.equal(out[0, 4], torch.tensor([2.0, 4, 3])) and torch.equal(out[1, 0], torch.tensor([2.0, 2, 2]))


@pytest.mark.parametrize("kwargs", [dict(num_classes=5), dict(cond_dim=16, text_conditioning="pooled"),
                                    dict(cond_dim=16, text_conditioning="cross"), dict(cond_dim=16,
                                                                                      text_conditioning="both")])
def test_adaln_zero_starts_at_eps_zero_and_every_block_is_the_identity(kwargs):
    model = dit("DiT-Ti/2", **kwargs)
    x = torch.randn(2, 4, 8, 8)
    cond = torch.tensor([1, 5]) if "num_classes" in kwargs else torch.randn(2, 4, 16)
    assert torch.equal(model(x, 10, cond), torch.zeros_like(x))
    tokens = torch.randn(2, 16, 64)  # DiT-Ti/2 on 8x8 latents: 16 tokens of width 64
    c = torch.randn(2, 64)
    assert torch.equal(model.blocks[0](tokens, c, cond if "cond_dim" in kwargs else None), tokens)


def trained_like(model: DiT, seed: int = 0) -> DiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("mode", ["pooled", "cross", "both"])
def test_text_dit_listens_to_the_caption_and_ignores_padding(mode):
    model = trained_like(dit("DiT-Ti/2", cond_dim=8, text_conditioning=mode))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    out = model(x, t, tokens, mask)
    assert not torch.allclose(out, model(x, t, torch.randn(2, 5, 8), mask))  # another caption, another output
    padded = tokens.clone()
    padded[:, 2:] = 99.0  # what the mask hides cannot matter
    torch.testing.assert_close(model(x, t, padded, mask), out)
    assert not torch.allclose(model(x, t), out)  # cond=None: the unconditional input


def test_class_dit_null_class_is_what_cond_none_means():
    model = trained_like(dit("DiT-Ti/2", num_classes=4))
    x, t = torch.randn(2, 4, 8, 8), 50
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([4, 4])))
    assert not torch.allclose(model(x, t, torch.tensor([0, 1])), model(x, t))


def test_bad_inputs_name_the_fix():
    text = dit("DiT-Ti/2", cond_dim=8)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 4, 8, 8\)"):
        text(torch.zeros(1, 3, 16, 16), 5)
    with pytest.raises(ValueError, match=r"cond must have shape \(1, L, 8\)"):
        text(torch.zeros(1, 4, 8, 8), 5, torch.zeros(1, 4, 9))
    with pytest.raises(ValueError, match="cond_mask must be a bool tensor"):
        text(torch.zeros(1, 4, 8, 8), 5, torch.zeros(1, 4, 8), torch.ones(1, 4))
    classes = dit("DiT-Ti/2", num_classes=3)
    with pytest.raises(ValueError, match="class-conditional: cond must be a \\(2,\\) LongTensor"):
        classes(torch.zeros(2, 4, 8, 8), 5, torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\] \(3 = the null class\), got 0..7"):
        classes(torch.zeros(2, 4, 8, 8), 5, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="unconditional"):
        dit("DiT-Ti/2")(torch.zeros(1, 4, 8, 8), 5, torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="unknown DiT 'DiT-Q/2'.*'DiT-S/2'"):
        dit("DiT-Q/2")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DiTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="patch_size and image_size must be >= 1"):
        DiTConfig(patch_size=0)
    with pytest.raises(ValueError, match="hidden_size must be a multiple of 4"):
        DiTConfig(hidden_size=6, num_heads=2)
    with pytest.raises(ValueError, match="text_conditioning must be one of"):
        DiTConfig(cond_dim=8, text_conditioning="concat")


@pytest.mark.parametrize("overrides, fragment", [(dict(activation_fn="gelu"), "'gelu'"),
                                                 (dict(attention_bias=False), "attention_bias True"),
                                                 (dict(norm_elementwise_affine=True), "norm_elementwise_affine False")])
def test_from_diffusers_refuses_what_the_course_dit_cannot_hold(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        DiT.from_diffusers(diffusers_dit(False, **overrides))


def test_paper_presets_have_the_published_parameter_counts():
    """The DiT paper's Table 1 / 4: DiT-S/2 33M, DiT-B/2 130M (1% tolerance: the paper rounds)."""
    for name, millions in (("DiT-S/2", 33.0), ("DiT-B/2", 130.0)):
        count = sum(p.numel() for p in dit(name).parameters()) / 1e6
        assert count == pytest.approx(millions, rel=0.01), name


def test_a_text_dit_samples_with_guidance_and_round_trips_through_a_checkpoint_config(tmp_path):
    from course_lib import pretrained

    model = trained_like(dit("DiT-Ti/2", cond_dim=8))
    schedule = NoiseSchedule.linear()
    cond, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    uncond, uncond_mask = torch.zeros(1, 3, 8), torch.tensor([[True, False, False]])
    guided = GuidedModel(model, cond, mask, uncond, uncond_mask, guidance_scale=3.0)
    x0 = ddim(guided, torch.randn(2, 4, 8, 8), schedule, make_timesteps(schedule, 3))
    assert x0.shape == (2, 4, 8, 8) and torch.isfinite(x0).all()
    pretrained.save("tiny-dit", model, schedule_name="linear", directory=tmp_path)
    loaded = pretrained.load("tiny-dit", device="cpu", directory=tmp_path)
    assert isinstance(loaded.model, DiT) and loaded.model.config == model.config
    rebuilt = build_model("dit", {**model.config.__dict__})
    assert rebuilt.config == model.config
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(loaded.model(x, 5, cond[:1], mask[:1]), model(x, 5, cond[:1], mask[:1]),
                               atol=1e-2, rtol=1e-2)  # the checkpoint stores fp16


SHIPPED = "shapes64-latent-dit"


def test_the_shipped_dit_generates_from_a_prompt_in_python_the_cli_and_the_player(tmp_path):
    from course_lib.generate import generate, main
    from course_lib.widgets import DenoisingPlayer

    result = generate("a large red circle", model=SHIPPED, sampler="dpmpp_2m", steps=4, n=2, device="cpu")
    assert result.images.shape == (2, 3, 64, 64) and result.latents.shape == (2, 4, 8, 8)
    out = tmp_path / "circle.png"
    main(["a large red circle", "--model", SHIPPED, "-n", "1", "--steps", "4", "-o", str(out), "--device", "cpu"])
    assert out.stat().st_size > 0
    player = DenoisingPlayer.from_pretrained(SHIPPED, device="cpu", n=1, steps=3, prompt="a red circle")
    player.run()
    assert player.prompt_box.value == "a red circle" and len(player.trajectory.frames) == 3
