"""Data parallelism with torch.distributed: two CPU processes (gloo) train like one process on the same global
batches, end with identical weights, resume after an interruption, and `torchrun ... -m course_lib.train` (the
README's command) writes a checkpoint that says how many processes made it."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from course_lib import distributed
from course_lib.batches import TensorBatches
from course_lib.data import ShapesDataset, attribute_indices
from course_lib.losses import ClassifierLoss, EpsilonLoss
from course_lib.models import ClassifierConfig, ShapesClassifier, mlp_2d
from course_lib.schedules import NoiseSchedule
from course_lib.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 8


def make_run(kind: str, steps: int = STEPS):
    """(model, loss_fn, data, config). "classifier" has no randomness in its objective (no augmentation), so two
    processes must reproduce one process exactly; "mlp" draws timesteps and noise, which differ per process."""
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=2, lr_schedule="cosine", ema_decay=0.9,
                         grad_clip=1.0, seed=5, ckpt_every=4, log_every=2)
    if kind == "classifier":
        ds = ShapesDataset(size=16, n=48, seed=0)
        targets = torch.stack(list(attribute_indices(ds.attributes()).values()), dim=1)  # (48, 5)
        model = ShapesClassifier(ClassifierConfig(image_size=16, width=8, groups=4))
        return model, ClassifierLoss(noise_std=0.0, blur_prob=0.0), TensorBatches(ds.images(), targets), config
    return mlp_2d(hidden=32, depth=2), EpsilonLoss(NoiseSchedule.linear()), torch.randn(256, 2), config


class Recording:
    """Wraps an objective and keeps the first batch it sees (to check which rows each process got)."""

    def __init__(self, loss_fn):
        self.loss_fn, self.first = loss_fn, None

    def __call__(self, model, batch, generator):
        if self.first is None:
            self.first = batch[0].clone() if isinstance(batch, tuple) else batch.clone()
        return self.loss_fn(model, batch, generator)


def _save(path: Path, model, history, first) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file({**tensors, "history": torch.tensor(history), "first": first.contiguous()}, str(path))


def _worker(rank: int, out: str, kind: str, tag: str, state: str, stop_after: int):
    """One of two gloo processes: train, then save this rank's weights, losses and first batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous-{tag}", rank=rank, world_size=2)
    try:
        model, loss_fn, data, config = make_run(kind)
        recording = Recording(loss_fn)

        def stop(step, history):
            if step == stop_after:
                raise KeyboardInterrupt  # an interruption on both ranks, after the step-4 state was written

        try:
            result = train(model, recording, data, config, ckpt_path=Path(out) / state, device="cpu",
                           progress=False, callback=stop)
        except KeyboardInterrupt:
            return
        _save(Path(out) / f"{tag}-rank{rank}.safetensors", model, result.history, recording.first)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, kind, tag, state, stop_after=-1):
    mp.spawn(_worker, args=(str(tmp_path), kind, tag, state, stop_after), nprocs=2, join=True)


def _single(kind):
    model, loss_fn, data, config = make_run(kind)
    recording = Recording(loss_fn)
    result = train(model, recording, data, config, device="cpu", progress=False)
    return model, result, recording.first


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Both kinds on two processes, once straight through and once interrupted at step 6 then resumed."""
    out = tmp_path_factory.mktemp("ddp")
    for kind in ("classifier", "mlp"):
        _spawn(out, kind, f"{kind}-straight", state=f"{kind}.safetensors")
    _spawn(out, "classifier", "interrupted", state="resume.safetensors", stop_after=6)
    _spawn(out, "classifier", "resumed", state="resume.safetensors")  # the same file: continues from step 4
    return out


@pytest.mark.parametrize("kind", ["classifier", "mlp"])
def test_both_processes_end_with_identical_weights(ddp_runs, kind):
    ranks = [load_file(str(ddp_runs / f"{kind}-straight-rank{r}.safetensors")) for r in (0, 1)]
    for key in ranks[0]:
        if key.startswith("model.") or key == "history":  # the losses are averaged over the ranks as well
            assert torch.equal(ranks[0][key], ranks[1][key]), key
    # each process trained on its own half of the global batch
    assert not torch.equal(ranks[0]["first"], ranks[1]["first"])


def test_two_processes_train_like_one_on_the_same_global_batches(ddp_runs):
    model, result, first = _single("classifier")
    rank0, rank1 = (load_file(str(ddp_runs / f"classifier-straight-rank{r}.safetensors")) for r in (0, 1))
    assert torch.equal(torch.cat([rank0["first"], rank1["first"]]), first)  # the global batch, split in two
    torch.testing.assert_close(rank0["history"], torch.tensor(result.history), rtol=1e-5, atol=1e-6)
    moved = 0.0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rank0[f"model.{key}"], value, rtol=1e-4, atol=1e-5)
        moved = max(moved, (value - make_run("classifier")[0].state_dict()[key]).abs().max().item())
    assert moved > 1e-3  # it did train: the comparison is not between two untouched models


def test_an_interrupted_two_process_run_resumes_with_no_lost_step(ddp_runs):
    straight = load_file(str(ddp_runs / "classifier-straight-rank0.safetensors"))
    for rank in (0, 1):
        resumed = load_file(str(ddp_runs / f"resumed-rank{rank}.safetensors"))
        for key, value in straight.items():
            if key != "first":  # (the resumed run's first batch is that of step 4)
                assert torch.equal(resumed[key], value), key
    assert not (ddp_runs / "interrupted-rank0.safetensors").exists()  # it really was stopped


def test_resuming_with_another_number_of_processes_is_refused(ddp_runs, tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes((ddp_runs / "classifier.safetensors").read_bytes())  # written by 2 processes
    model, loss_fn, data, config = make_run("classifier")
    from course_lib.pretrained import CheckpointError

    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1.*--nproc_per_node=2"):
        train(model, loss_fn, data, config, ckpt_path=state, device="cpu", progress=False)


def test_a_batch_that_does_not_split_evenly_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    model, loss_fn, data, config = make_run("mlp")
    with pytest.raises(ValueError, match="batch_size 8 must be a multiple of the 3 processes"):
        train(model, loss_fn, data, config, device="cpu", progress=False)


def test_shard_splits_tensors_and_tuples_into_contiguous_slices():
    batch = (torch.arange(8), torch.arange(8) * 10)
    first, second = distributed.shard(batch, 0, 2), distributed.shard(batch, 1, 2)
    assert first[0].tolist() == [0, 1, 2, 3] and second[1].tolist() == [40, 50, 60, 70]
    assert distributed.shard(torch.arange(4), 0, 1).tolist() == [0, 1, 2, 3]


def test_readme_torchrun_command_trains_and_records_the_world_size(tmp_path):
    """The README's CPU command, as written but for where it writes and how long it trains."""
    readme = (REPO / "README.md").read_text()
    line = next(l for l in readme.splitlines() if "torchrun --standalone --nproc_per_node=2" in l)
    words = shlex.split(line[line.index("torchrun"):].rstrip("` ."))
    assert words[:4] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m"]
    out_index = words.index("--out")
    words[out_index + 1] = str(tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), *words[1:], "--steps", "40"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": str(torchrun.parent), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "toy2d-mlp.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 40
    assert meta["command"].startswith("torchrun --nproc_per_node=2 -m course_lib.train toy2d-mlp")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("toy2d")) == \
        ["toy2d-mlp.json", "toy2d-mlp.png", "toy2d-mlp.safetensors"]  # rank 0 alone wrote, and cleaned up


def test_a_world_without_torchrun_variables_is_refused_with_the_launch_command(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not set.*torchrun --nproc"):
        distributed.setup("cpu")
