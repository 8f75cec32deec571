"""course_lib.training, the one loop: learning rate, EMA, what it logs, objectives' hooks, and kill-and-resume with
no lost step for every kind of model the course trains (denoiser, text-conditioned U-Net, VAE, classifier, CLIP)."""
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from course_lib.batches import CaptionBatches, TensorBatches
from course_lib.data import ShapesDataset, attribute_indices, toy2d
from course_lib.losses import ClassifierLoss, ContrastiveLoss, EpsilonLoss, VAELoss, diffusion_loss
from course_lib.models import ClassifierConfig, ShapesClassifier, mlp_2d, unet_tiny, vae_f8
from course_lib.pretrained import CheckpointError
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig, ema_decay_at, learning_rate, train

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
KINDS = ("mlp", "unet-text", "vae", "classifier", "clip")


def make_run(kind: str = "mlp", steps: int = 20):
    """A small, fully seeded run of each model kind: (model, loss_fn, data, config). Also used by the subprocess."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    config = dict(steps=steps, batch_size=8, lr=1e-3, warmup=5, lr_schedule="cosine", ckpt_every=5, log_every=1,
                  seed=3, ema_decay=0.9)
    if kind == "mlp":
        return mlp_2d(hidden=32, depth=2), EpsilonLoss(NoiseSchedule.linear()), torch.randn(512, 2, generator=g), \
            TrainConfig(**config)
    if kind == "unet-text":  # dropout layers (the global RNG) and caption dropout (the generator) both resume
        model = unet_tiny(image_size=8, base_channels=8, channel_mult=(1, 2), attn_resolutions=(4,), cond_dim=8,
                          dropout=0.1)
        x0, tokens = torch.randn(32, 3, 8, 8, generator=g), torch.randn(32, 5, 8, generator=g)
        mask = torch.arange(5)[None, :] < torch.randint(1, 6, (32, 1), generator=g)  # (32, 5), 1-5 real tokens
        empty = (torch.zeros(5, 8), torch.tensor([True, True, False, False, False]))
        return model, EpsilonLoss(NoiseSchedule.cosine(), 0.3, empty), (x0, tokens, mask), TrainConfig(**config)
    if kind == "vae":
        model = vae_f8(base_channels=8, channel_mult=(1, 2, 2, 2), groups=4, image_size=16)
        return model, VAELoss(1e-3), ShapesDataset(size=16, n=32, seed=0).images(), \
            TrainConfig(**{**config, "ema_decay": None, "grad_clip": 0.0})
    if kind == "classifier":
        ds = ShapesDataset(size=16, n=32, seed=0)
        targets = torch.stack(list(attribute_indices(ds.attributes()).values()), dim=1)  # (32, 5)
        model = ShapesClassifier(ClassifierConfig(image_size=16, width=8, groups=4))
        return model, ClassifierLoss(0.1, 0.5), TensorBatches(ds.images(), targets), \
            TrainConfig(**{**config, "weight_decay": 1e-4, "ema_decay": None, "grad_clip": 0.0})
    if kind == "clip":
        from course_lib.models.clip import create_clip

        return create_clip(TINY_CLIP), ContrastiveLoss(), CaptionBatches(ShapesDataset(size=16, n=64, seed=0)), \
            TrainConfig(**{**config, "weight_decay": 0.1, "betas": (0.9, 0.98), "eps": 1e-6, "ema_decay": None,
                           "grad_clip": 0.0})
    raise ValueError(kind)


# ----- the loop's pieces -----------------------------------------------------------------------------

def test_diffusion_loss_is_eps_mse_with_seeded_t_and_noise():
    schedule = NoiseSchedule.linear()
    model = mlp_2d(hidden=16)
    x0 = torch.randn(8, 2)
    loss = diffusion_loss(model, schedule, x0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the same draws by hand
    t = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn(8, 2, generator=g)
    a = schedule.alphas_cumprod[t][:, None]
    expected = ((model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t) - eps) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_learning_rate_warmup_then_cosine():
    config = TrainConfig(steps=110, lr=1.0, warmup=10, lr_schedule="cosine")
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(60, config) == pytest.approx(0.5)  # half-way through the cosine
    assert learning_rate(109, config) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert learning_rate(50, TrainConfig(lr=0.3, warmup=10)) == 0.3
    with pytest.raises(ValueError, match="'constant' or 'cosine'"):
        TrainConfig(lr_schedule="linear")


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be >= 1, got 0"), (dict(warmup=-1), "warmup must be >= 0, got -1"),
    (dict(lr=0.0), "lr and eps must be > 0"),
    (dict(betas=(0.9, 1.0)), "betas must be two numbers"), (dict(ema_decay=1.0), "ema_decay must be in"),
    (dict(grad_clip=-1.0), "grad_clip >= 0"),
])
def test_bad_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_loss_decreases_on_toy_data():
    data = toy2d("8gaussians", n=2000, seed=0)
    torch.manual_seed(0)
    config = TrainConfig(steps=200, batch_size=128, lr=3e-3, warmup=10, seed=0, log_every=50)
    result = train(mlp_2d(hidden=64), EpsilonLoss(NoiseSchedule.linear()), data, config, device="cpu",
                   progress=False)
    assert len(result.history) == 200 and result.steps == 200 and result.components == {}
    first, last = sum(result.history[:20]) / 20, sum(result.history[-50:]) / 50
    assert last < 0.75 * first, (first, last)
    assert not result.model.training and not result.ema.training and result.final is result.ema


def test_ema_is_the_exact_moving_average_of_the_weights():
    model, loss_fn, data, config = make_run("mlp", steps=12)
    snapshots = [[p.detach().clone() for p in model.parameters()]]  # the initial weights, then one per step
    result = train(model, loss_fn, data, config, device="cpu", progress=False,
                   callback=lambda step, history: snapshots.append([p.detach().clone() for p in model.parameters()]))
    assert len(snapshots) == 13 and all(not p.requires_grad for p in result.ema.parameters())
    ema = snapshots[0]
    for step, weights in enumerate(snapshots[1:]):
        decay = min(0.9, (1 + step) / (10 + step))  # warm-up: 0.1, 0.18, ... capped at ema_decay
        assert ema_decay_at(step, config) == pytest.approx(decay)
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights)]
    for got, want, raw in zip(result.ema.parameters(), ema, result.model.parameters()):
        torch.testing.assert_close(got, want)
        assert not torch.equal(got, raw)  # an average, not the last weights


def test_no_ema_when_ema_decay_is_none():
    model, loss_fn, data, config = make_run("vae", steps=2)
    result = train(model, loss_fn, data, config, device="cpu", progress=False)
    assert result.ema is None and result.final is result.model


class RecordingModel(nn.Module):
    """Stands in for a conditional eps-model; records the cond tokens and masks that the objective feeds it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x_t, t, cond=None, cond_mask=None):
        self.seen.append((cond.clone(), cond_mask.clone()))
        return x_t * self.w + cond.mean() * 0


@pytest.mark.parametrize("empty", [False, True])
def test_caption_dropout_replaces_the_expected_fraction_and_keeps_the_rest(empty):
    x0 = torch.randn(64, 2)
    ids = torch.arange(64, dtype=torch.float32)[:, None, None].expand(64, 3, 4)
    tokens = torch.rand(64, 3, 4) + 100 * ids + 5  # never 0, and which example a caption belongs to is readable
    mask = torch.ones(64, 3, dtype=torch.bool)
    empty_cond = (torch.zeros(3, 4), torch.tensor([True, False, False])) if empty else None
    model = RecordingModel()
    config = TrainConfig(steps=20, batch_size=100, warmup=0, log_every=10)
    train(model, EpsilonLoss(NoiseSchedule.linear(), 0.3, empty_cond), (x0, tokens, mask), config, device="cpu",
          progress=False)
    cond = torch.cat([c for c, _ in model.seen])  # (steps * B, L, D)
    masks = torch.cat([m for _, m in model.seen])  # (steps * B, L)
    if empty:
        dropped = (cond == 0).all(dim=(1, 2))  # the empty prompt's tokens, and its mask
        assert torch.equal(masks[dropped], empty_cond[1].expand(int(dropped.sum()), 3))
    else:
        dropped = ~masks.any(dim=1)  # a dropped caption has every token masked out
    kept = ~dropped
    assert masks[kept].all()  # the others keep all their tokens ...
    source = (cond[kept][:, 0, 0] / 100).round()  # ... and their own caption, unchanged
    assert torch.allclose(cond[kept], tokens[source.long()])
    assert 0.25 < dropped.float().mean() < 0.35


def test_objective_after_step_hook_and_logged_components():
    class Objective:
        calls = 0

        def __call__(self, model, batch, generator):
            error = (model(batch) - 1.0).square().mean()
            return {"error": error, "loss": 2 * error}  # "loss" need not come first

        def after_step(self, model):
            Objective.calls += 1
            with torch.no_grad():
                model.weight.clamp_(max=0.5)

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    config = TrainConfig(steps=7, batch_size=4, lr=0.5, warmup=0, ema_decay=None, log_every=3)
    result = train(model, Objective(), torch.ones(10, 3), config, device="cpu", progress=False)
    assert Objective.calls == 7 and model.weight.max() <= 0.5
    assert len(result.history) == len(result.components["error"]) == 7
    assert result.history == pytest.approx([2 * e for e in result.components["error"]])


def test_bad_data_and_batches_raise_value_errors():
    model, loss_fn, _, config = make_run(steps=2)
    with pytest.raises(ValueError, match="non-empty"):
        train(model, loss_fn, torch.zeros(0, 2), config, device="cpu", progress=False)
    with pytest.raises(ValueError, match="one row per example"):
        train(model, loss_fn, (torch.zeros(4, 2), torch.zeros(3, 2)), config, device="cpu", progress=False)
    with pytest.raises(ValueError, match="needs captions"):
        train(model, EpsilonLoss(NoiseSchedule.linear(), 0.1), torch.randn(8, 2), config, device="cpu",
              progress=False)
    with pytest.raises(ValueError, match="x0 must be a float tensor"):
        train(model, loss_fn, torch.zeros(8, 2, dtype=torch.long), config, device="cpu", progress=False)


def test_training_is_the_only_optimizer_loop():
    """One loop in course_lib: no other module builds an optimizer or steps one."""
    pattern = re.compile(r"torch\.optim\.|\.backward\(|optimizer\.step\(|zero_grad\(")
    offenders = sorted({str(path.relative_to(REPO)) for path in (REPO / "course_lib").rglob("*.py")
                        if pattern.search(path.read_text())})
    assert offenders == ["course_lib/training.py"]


# ----- kill and resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_is_bit_identical(tmp_path, kind):
    ckpt = tmp_path / "run.safetensors"
    # one thread, as in this process (conftest): bit-identical needs the same reduction order in every kernel
    script = ("import sys, time, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[2]); "
              "from test_training import make_run; from course_lib.training import train; "
              "model, loss_fn, data, config = make_run(sys.argv[3]); "
              "train(model, loss_fn, data, config, ckpt_path=sys.argv[1], device='cpu', progress=False, "
              "callback=lambda step, history: time.sleep(0.1))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(ckpt), str(Path(__file__).parent), kind], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert ckpt.exists(), "the subprocess never wrote its first checkpoint"
    with safe_open(str(ckpt), framework="pt") as f:
        killed_at = int(f.metadata()["step"])
    assert 0 < killed_at < 20  # it really was interrupted mid-run

    model, loss_fn, data, config = make_run(kind)
    resumed = train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    assert resumed.start_step == killed_at and resumed.steps == 20
    model, loss_fn, data, config = make_run(kind)
    straight = train(model, loss_fn, data, config, device="cpu", progress=False)

    assert resumed.history == straight.history and resumed.components == straight.components
    pairs = [(resumed.model, straight.model)] + ([(resumed.ema, straight.ema)] if straight.ema is not None else [])
    for a, b in pairs:
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    assert meta["step"] == "20" and json.loads(meta["history"]) == straight.history


def test_resume_refuses_another_model_another_config_and_a_corrupt_file(tmp_path):
    ckpt = tmp_path / "other.safetensors"
    model, loss_fn, data, config = make_run(steps=5)
    train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="other.safetensors do not match the model") as err:
        train(mlp_2d(hidden=48, depth=2), loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    assert "shape mismatches" in str(err.value) and "delete" in str(err.value)
    for change in (dict(steps=9), dict(batch_size=16), dict(lr=5e-4)):  # --steps, --batch-size, --time-budget
        other = TrainConfig(**{**config.__dict__, **change})
        with pytest.raises(CheckpointError, match="belongs to a run with another configuration"):
            train(make_run()[0], loss_fn, data, other, ckpt_path=ckpt, device="cpu", progress=False)
    relaxed = TrainConfig(**{**config.__dict__, "log_every": 2, "ckpt_every": 0})  # change no number: allowed
    assert train(make_run(steps=5)[0], loss_fn, data, relaxed, ckpt_path=ckpt, device="cpu",
                 progress=False).start_step == 5
    ckpt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint .*other.safetensors"):
        train(make_run()[0], loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)


def test_resume_error_names_the_saved_steps(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    model, loss_fn, data, config = make_run(steps=5)
    train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"steps: saved 5, now 9.*--steps 5 --batch-size 8"):
        train(make_run(steps=9)[0], loss_fn, data, make_run(steps=9)[3], ckpt_path=ckpt, device="cpu",
              progress=False)


def test_a_constant_rate_run_continues_past_its_steps_and_equals_one_long_run(tmp_path):
    """Under a constant learning rate no number depends on `steps`: 5 steps, then continued to 12 (chapter 6 evaluates
    its curves this way), give the weights, EMA and losses of one 12-step run. A cosine run still refuses (above)."""
    def constant(steps):
        model, loss_fn, data, config = make_run(steps=steps)
        return model, loss_fn, data, dataclasses.replace(config, lr_schedule="constant")

    ckpt = tmp_path / "pieces.safetensors"
    model, loss_fn, data, config = constant(5)
    train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    model, loss_fn, data, config = constant(12)
    pieces = train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    model, loss_fn, data, config = constant(12)
    whole = train(model, loss_fn, data, config, device="cpu", progress=False)
    assert pieces.start_step == 5 and pieces.steps == 12 and pieces.history == whole.history
    for a, b in zip([*pieces.model.parameters(), *pieces.ema.parameters()],
                    [*whole.model.parameters(), *whole.ema.parameters()]):
        assert torch.equal(a, b)
    model, loss_fn, data, config = constant(8)  # fewer steps than the state holds: refused, not silently past
    with pytest.raises(CheckpointError, match="at step 12, past the 8 steps asked for: pass --steps 12 or more"):
        train(model, loss_fn, data, config, ckpt_path=ckpt, device="cpu", progress=False)


def test_ema_copies_buffers_and_averages_parameters():
    """Written against a surviving mutant (mutation.md): the course's networks have no buffers, so a
    broken buffer copy went unnoticed."""
    from course_lib.training import update_ema

    model, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    update_ema(ema, model, 0.75)
    torch.testing.assert_close(ema.weight, torch.full((3,), 0.75 * 1.0 + 0.25 * 2.0))  # decay * ema + (1 - decay) * w
    assert torch.equal(ema.running_mean, model.running_mean)  # buffers are copied, not averaged


def test_resume_names_what_the_file_is_when_it_is_no_training_state(tmp_path):
    from safetensors.torch import save_file

    model, loss_fn, data, config = make_run(steps=5)
    weights = tmp_path / "weights.safetensors"  # a model's weights passed as ckpt_path by mistake
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    with pytest.raises(CheckpointError, match="not a training state .*a model's weights.*does not exist yet") as err:
        train(model, loss_fn, data, config, ckpt_path=weights, device="cpu", progress=False)
    assert "delete" not in str(err.value)  # never advise deleting what may be someone's trained weights
    state = tmp_path / "state.safetensors"
    train(make_run(steps=5)[0], loss_fn, data, config, ckpt_path=state, device="cpu", progress=False)
    with safe_open(str(state), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(state), metadata={**metadata, "device_type": "cuda"})  # as if written on a GPU
    with pytest.raises(CheckpointError, match="written on cuda, this run trains on cpu.*--device cuda"):
        train(make_run(steps=5)[0], loss_fn, data, config, ckpt_path=state, device="cpu", progress=False)
    save_file(tensors, str(state), metadata={**metadata, "format": "course_lib.train_state/1"})
    with pytest.raises(CheckpointError, match="an older course_lib's training state.*or delete"):
        train(make_run(steps=5)[0], loss_fn, data, config, ckpt_path=state, device="cpu", progress=False)
