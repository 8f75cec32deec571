"""The open_clip "shapes-clip" model (course_lib.models.clip): tokenizer checks, per-token text features, training
with the one loop and ContrastiveLoss, zero-shot evaluation (course_lib.metrics) and checkpoints."""
import json
import logging
import math

import open_clip
import pytest
import torch

from course_lib import metrics, pretrained
from course_lib.batches import CaptionBatches
from course_lib.data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ShapesDataset
from course_lib.losses import ContrastiveLoss
from course_lib.models import clip, unet_tiny
from course_lib.pretrained import CheckpointError, CheckpointNotFoundError
from course_lib.training import TrainConfig, train

RETRAIN = "python -m course_lib.train shapes-clip"
# A smaller architecture of the same family, so that training and evaluation tests take seconds.
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 1, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return clip.create_clip().eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return clip.create_clip(TINY).eval()


# ----- the registered architecture ---------------------------------------------------------------

def test_registered_config_builds_the_expected_clip(model):
    clip.register()
    clip.register()  # idempotent: the config file is added to open_clip's search path once
    assert open_clip.factory._MODEL_CONFIG_PATHS.count(clip.CONFIG_PATH) == 1
    assert clip.MODEL_NAME == "shapes-clip" and "shapes-clip" in open_clip.list_models()
    assert isinstance(model, open_clip.CLIP)
    assert model.visual.image_size == (32, 32) and model.visual.patch_size == (8, 8)
    assert model.visual.transformer.width == 128 and len(model.visual.transformer.resblocks) == 4
    assert model.transformer.width == 64 and len(model.transformer.resblocks) == 4 and model.context_length == 32
    assert model.vocab_size == 49408 and model.token_embedding.weight.shape == (49408, 64)
    assert model.text_projection.shape == (64, 64) and model.visual.proj.shape == (128, 64)  # embed_dim 64
    features = model.encode_image(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 64)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 2 <= 9e6  # fp16 checkpoint of at most 9 MB


def test_create_clip_and_tokenizer_never_touch_the_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.factory, "HFTokenizer", refuse)  # a hub tokenizer would be fetched by name
    handlers = list(logging.getLogger().handlers)
    clip.get_tokenizer.cache_clear()
    assert isinstance(clip.get_tokenizer(), open_clip.tokenizer.SimpleTokenizer)
    assert isinstance(clip.create_clip(TINY), open_clip.CLIP)
    assert logging.getLogger().handlers == handlers  # open_clip's logging did not install a root handler


# ----- tokenize -----------------------------------------------------------------------------------

def test_tokenize_pads_to_the_context_length():
    tokenizer = clip.get_tokenizer()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    tokens = clip.tokenize(["a red circle", ""])
    assert tokens.dtype == torch.long and tokens.shape == (2, 32)
    words = tokenizer.encode("a red circle")
    assert tokens[0, : len(words) + 2].tolist() == [sot, *words, eot] and not tokens[0, len(words) + 2:].any()
    assert tokens[1, :2].tolist() == [sot, eot] and not tokens[1, 2:].any()  # "" = unconditional
    assert clip.tokenize("a red circle").shape == (1, 32)
    assert torch.equal(clip.tokenize(("a red circle",)), tokens[:1])
    assert clip.tokenize(" ".join(["red"] * 30)).shape == (1, 32)  # exactly 30 tokens still fit


@pytest.mark.parametrize("bad, error, message", [
    (5, TypeError, "str or a list/tuple of str; got int"),
    (["a circle", 3], TypeError, "got an element of type int"),
    ([], ValueError, "non-empty"),
    (" ".join(["red"] * 31), ValueError, "has 31 tokens; the maximum is 30 tokens"),
])
def test_tokenize_rejects_bad_prompts(bad, error, message):
    with pytest.raises(error, match=message):
        clip.tokenize(bad)


# ----- per-token text features --------------------------------------------------------------------

def test_encode_text_tokens_shapes_and_mask(model):
    prompts = ["a large red circle on the left", "", "star"]
    tokens = clip.tokenize(prompts)
    with torch.no_grad():
        features, mask = clip.encode_text_tokens(model, tokens)
    assert features.shape == (3, 32, 64) and mask.shape == (3, 32) and mask.dtype == torch.bool
    lengths = [len(clip.get_tokenizer().encode(p)) + 2 for p in prompts]  # + SOT and EOT
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()  # True up to and including EOT, then False
    with pytest.raises(ValueError, match="LongTensor"):
        clip.encode_text_tokens(model, tokens.float())
    with pytest.raises(TypeError, match="open_clip.CLIP"):
        clip.encode_text_tokens(torch.nn.Linear(2, 2), tokens)


def test_pooled_eot_feature_equals_open_clip_encode_text(model):
    tokens = clip.tokenize(["a tiny blue heart at the top", "", "green square, small, left side"])
    with torch.no_grad():
        features, mask = clip.encode_text_tokens(model, tokens)
        eot = mask.sum(dim=1) - 1  # the last True position is the EOT token
        pooled = features[torch.arange(3), eot] @ model.text_projection  # (3, embed_dim)
        reference = model.encode_text(tokens)
    torch.testing.assert_close(pooled, reference, rtol=0, atol=1e-6)


def test_text_encoder_is_frozen(tiny):
    encoder = clip.TextEncoder(tiny)
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.clip.training  # stays in eval mode
    tokens, mask = encoder(["a red circle", ""])
    assert tokens.shape == (2, 32, 32) and encoder.width == 32 and not tokens.requires_grad
    assert mask.sum(dim=1).tolist() == [5, 2]  # SOT a red circle EOT / SOT EOT
    with torch.no_grad():
        expected, _ = clip.encode_text_tokens(tiny, clip.tokenize(["a red circle", ""]))
    torch.testing.assert_close(tokens, expected)
    single, _ = encoder("a red circle")
    assert single.shape == (1, 32, 32)
    chunked, chunked_mask = encoder(["a red circle", "", "a blue star"], batch_size=2)  # chunks of 2 + 1
    torch.testing.assert_close(chunked[:2], tokens)
    assert chunked.shape == (3, 32, 32) and chunked_mask[:2].equal(mask)


# ----- training and evaluation --------------------------------------------------------------------

def test_training_lowers_the_contrastive_loss():
    torch.manual_seed(0)
    model = clip.create_clip(TINY)
    # 16 images, each captioned with a random template every step: overfitting them is enough to see learning.
    config = TrainConfig(steps=40, batch_size=16, lr=2e-3, weight_decay=0.0, betas=(0.9, 0.98), eps=1e-6, warmup=5,
                         lr_schedule="cosine", ema_decay=None, grad_clip=0.0, seed=1, log_every=10)
    data = CaptionBatches(ShapesDataset(size=32, n=16, seed=1))
    result = train(model, ContrastiveLoss(), data, config, device="cpu", progress=False)
    history = result.history
    assert len(history) == 40 and result.images_per_s > 0 and result.seconds > 0
    early, late = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert early > math.log(16) - 0.3  # starts near chance: ln(batch size)
    assert late < 0.75 * early and late < math.log(16) - 0.5
    assert not model.training  # returned in eval mode


def test_after_step_clamps_the_temperature_as_clip_does():
    model, objective = clip.create_clip(TINY), ContrastiveLoss()
    for start, expected in ((math.log(200.0), 100.0), (-1.0, 1.0), (math.log(14.3), 14.3)):
        with torch.no_grad():
            model.logit_scale.fill_(start)
        objective.after_step(model)
        assert model.logit_scale.exp().item() == pytest.approx(expected, rel=1e-5)  # s in [1, 100]


def test_contrastive_batches_need_negatives_and_distinct_combinations():
    data = CaptionBatches(ShapesDataset(size=32, n=4, seed=0))
    with pytest.raises(ValueError, match="distinct attribute combinations"):
        data.sample(8, torch.Generator())
    images, tokens = data.sample(len(data), torch.Generator().manual_seed(0))
    assert images.shape == (len(data), 3, 32, 32) and tokens.shape == (len(data), 32)
    with pytest.raises(ValueError, match="negatives"):
        ContrastiveLoss()(clip.create_clip(TINY), (images[:1], tokens[:1]), torch.Generator())


def test_zero_shot_helpers_return_valid_labels(tiny):
    ds = ShapesDataset(size=32, n=12, seed=5)
    valid = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS,
             "background": BACKGROUNDS}
    for attribute, values in valid.items():
        labels = metrics.zero_shot_predict(tiny, ds.images(), attribute)
        assert len(labels) == 12 and set(labels) <= set(values)
    for ensemble in (False, True):
        accuracy = metrics.zero_shot_accuracy(tiny, ds, ensemble=ensemble)
        assert set(accuracy) == set(valid) and all(0.0 <= a <= 1.0 for a in accuracy.values())
    values, prompts = metrics.zero_shot_prompts("color")
    assert values == tuple(COLORS) and prompts[0] == "something red"
    # the accuracy is the agreement of zero_shot_predict with the true attributes
    labels = metrics.zero_shot_predict(tiny, ds.images(), "size", ensemble=True)
    assert accuracy["size"] == sum(lab == a.size for lab, a in zip(labels, ds.attributes())) / 12
    with pytest.raises(ValueError, match="valid attributes: shape, color"):
        metrics.zero_shot_predict(tiny, ds.images(), "texture")


def test_zero_shot_labels_each_image_with_its_best_scoring_prompt(tiny):
    """The rule itself: argmax over prompts of the cosine similarity (an inverted rule would pick the worst)."""
    images = ShapesDataset(size=32, n=12, seed=5).images()
    for attribute in ("shape", "color", "position"):
        values, prompts = metrics.zero_shot_prompts(attribute)
        scores = metrics.encode_images(tiny, images) @ metrics.encode_texts(tiny, prompts).T  # (12, V)
        assert metrics.zero_shot_predict(tiny, images, attribute) == [values[i] for i in scores.argmax(1).tolist()]
        assert metrics.zero_shot_predict(tiny, images, attribute) != [values[i] for i in scores.argmin(1).tolist()]


def test_similarity_matrix_and_retrieval(tiny):
    ds = ShapesDataset(size=32, n=6, seed=7)
    sims = metrics.similarity_matrix(tiny, ds.images(), ds.captions())
    assert sims.shape == (6, 6) and sims.abs().max() <= 1.0 + 1e-5
    expected = (sims.argmax(dim=0) == torch.arange(6)).float().mean().item()
    assert metrics.retrieval_top1(tiny, ds.images(), ds.captions()) == pytest.approx(expected)
    twins = ds.images()[[0, 0]]  # two identical images with the same attributes: either one is a hit
    attrs = [ds.attributes()[0]] * 2
    assert metrics.retrieval_top1(tiny, twins, [ds.captions()[0]] * 2, attrs) == 1.0
    with pytest.raises(ValueError, match="one caption per image"):
        metrics.retrieval_top1(tiny, ds.images(), ds.captions()[:5])


# ----- checkpoints --------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = clip.create_clip()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # every tensor differs from a fresh init
    meta = {"data": {"n": 100, "seed": 0}, "steps": 3, "final_loss": 1.5, "metrics": {"retrieval_top1": 0.5},
            "command": RETRAIN}
    path = pretrained.save("shapes-clip", model, schedule_name=None, meta=meta, directory=tmp_path)
    assert path == tmp_path / "shapes-clip.safetensors" and path.stat().st_size <= 9e6
    info = json.loads((tmp_path / "shapes-clip.json").read_text())
    assert info["kind"] == "open_clip" and info["config"]["model_cfg"] == clip.clip_config()
    assert info["steps"] == 3 and info["command"] == RETRAIN and "library_version" in info
    loaded = pretrained.load("shapes-clip", device="cpu", directory=tmp_path)
    assert isinstance(loaded.model, open_clip.CLIP) and not loaded.model.training
    assert loaded.schedule is None and loaded.meta["final_loss"] == 1.5
    for key, value in model.state_dict().items():
        assert loaded.model.state_dict()[key].dtype == torch.float32
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=1e-3, atol=1e-3)  # fp16 storage
    encoder = pretrained.load_text_encoder("shapes-clip", device="cpu", directory=tmp_path)
    assert isinstance(encoder, clip.TextEncoder) and encoder.width == 64


def test_missing_and_corrupt_checkpoints_name_the_retrain_command(tmp_path, tiny):
    with pytest.raises(CheckpointNotFoundError, match=RETRAIN):
        pretrained.load("shapes-clip", directory=tmp_path)
    pretrained.save("shapes-clip", tiny, schedule_name=None, directory=tmp_path)
    pretrained.save("tiny-unet", unet_tiny(), schedule_name="linear", directory=tmp_path)
    with pytest.raises(CheckpointError, match="'tiny-unet' holds a UNet, not a CLIP"):
        pretrained.load_text_encoder("tiny-unet", device="cpu", directory=tmp_path)
    weights = tmp_path / "shapes-clip.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=f"corrupted.*{RETRAIN}"):
        pretrained.load("shapes-clip", device="cpu", directory=tmp_path)
    meta_path = tmp_path / "shapes-clip.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "kind": "unet"}))
    with pytest.raises(CheckpointError, match=f"describes no valid model.*{RETRAIN}"):
        pretrained.load("shapes-clip", device="cpu", directory=tmp_path)
