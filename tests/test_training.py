"""course_lib.training: the eps-loss, learning, EMA, conditioning dropout, and bit-exact kill-and-resume."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from course_lib.data import toy2d
from course_lib.models import mlp_2d
from course_lib.pretrained import CheckpointError
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig, diffusion_loss, learning_rate, train

REPO = Path(__file__).resolve().parents[1]


def make_run(steps: int = 40):
    """The small, fully seeded training run used by the resume tests (also imported by the subprocess)."""
    torch.manual_seed(0)
    model = mlp_2d(hidden=32, depth=2)
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    config = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup=5, lr_schedule="cosine", ckpt_every=5,
                         log_every=1, seed=3, ema_decay=0.9)
    return model, NoiseSchedule.linear(), data, config


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


def test_loss_decreases_on_toy_data():
    data = toy2d("8gaussians", n=2000, seed=0)
    torch.manual_seed(0)
    config = TrainConfig(steps=200, batch_size=128, lr=3e-3, warmup=10, seed=0, log_every=50)
    result = train(mlp_2d(hidden=64), NoiseSchedule.linear(), data, config, device="cpu", progress=False)
    assert len(result.history) == 200 and result.steps == 200
    first, last = sum(result.history[:20]) / 20, sum(result.history[-50:]) / 50
    assert last < 0.75 * first, (first, last)


def test_ema_differs_from_model_and_lags_behind():
    model, schedule, data, config = make_run(steps=60)
    init = [p.detach().clone() for p in model.parameters()]
    result = train(model, schedule, data, config, device="cpu", progress=False)
    assert not result.ema.training and result.model.training
    assert all(not p.requires_grad for p in result.ema.parameters())

    def distance(params):
        return sum((p - q).square().sum() for p, q in zip(params, init)).sqrt()

    d_model, d_ema = distance(list(result.model.parameters())), distance(list(result.ema.parameters()))
    assert 0 < d_ema < d_model  # the average moved off the initial weights, but less far than the raw weights


class RecordingModel(nn.Module):
    """Stands in for a conditional eps-model; records the cond masks that train() feeds it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.masks = []

    def forward(self, x_t, t, cond=None, cond_mask=None):
        self.masks.append(cond_mask.clone())
        return x_t * self.w + cond.mean() * 0


def test_cond_dropout_masks_out_the_expected_fraction():
    x0 = torch.randn(64, 2)
    cond = torch.randn(64, 3, 4)
    model = RecordingModel()
    config = TrainConfig(steps=20, batch_size=100, warmup=0, cond_drop_prob=0.3, log_every=10)
    train(model, NoiseSchedule.linear(), x0, config, cond_data=cond, device="cpu", progress=False)
    masks = torch.stack(model.masks)  # (steps, B, L)
    dropped = ~masks.any(dim=2)  # a dropped sample has every token masked out
    assert torch.equal(masks.all(dim=2), ~dropped)  # the others keep all their tokens
    assert 0.25 < dropped.float().mean() < 0.35


def test_kill_and_resume_is_bit_identical(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    script = ("import sys, time; sys.path.insert(0, sys.argv[2]); from test_training import make_run; "
              "from course_lib.training import train; model, schedule, data, config = make_run(); "
              "train(model, schedule, data, config, ckpt_path=sys.argv[1], device='cpu', progress=False, "
              "callback=lambda step, history: time.sleep(0.1))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(ckpt), str(Path(__file__).parent)], cwd=REPO)
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
    assert 0 < killed_at < 40  # it really was interrupted mid-run

    model, schedule, data, config = make_run()
    resumed = train(model, schedule, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    assert resumed.start_step == killed_at and resumed.steps == 40
    model, schedule, data, config = make_run()
    straight = train(model, schedule, data, config, device="cpu", progress=False)

    assert resumed.history == straight.history
    for a, b in ((resumed.model, straight.model), (resumed.ema, straight.ema)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    assert meta["step"] == "40" and json.loads(meta["history"]) == straight.history


def test_resume_from_a_checkpoint_of_another_model_names_the_file(tmp_path):
    ckpt = tmp_path / "other.safetensors"
    model, schedule, data, config = make_run(steps=5)
    train(model, schedule, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="other.safetensors do not match the model") as err:
        train(mlp_2d(hidden=48, depth=2), schedule, data, config, ckpt_path=ckpt, device="cpu", progress=False)
    assert "shape mismatches" in str(err.value) and "delete" in str(err.value)
    ckpt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint .*other.safetensors"):
        train(make_run()[0], schedule, data, config, ckpt_path=ckpt, device="cpu", progress=False)


def test_bad_data_raises_value_error():
    model, schedule, _, config = make_run(steps=2)
    with pytest.raises(ValueError, match="x0_data must be"):
        train(model, schedule, torch.zeros(0, 2), config, device="cpu", progress=False)
    with pytest.raises(ValueError, match="needs cond_data"):
        bad = TrainConfig(steps=2, cond_drop_prob=0.1)
        train(model, schedule, torch.randn(8, 2), bad, device="cpu", progress=False)
