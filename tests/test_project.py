"""The project's promises to a newcomer: pinned, agreeing environment files and a CI that runs the README."""
import json
import re
from pathlib import Path

import course_lib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert m, f"requirements.txt line {line!r} is not an exact pin (name==version)"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_requirements_pin_everything_the_course_needs():
    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    needed = {"torch", "torchvision", "numpy", "matplotlib", "ipywidgets", "jupyterlab", "open-clip-torch",
              "diffusers", "nbval", "pytest", "safetensors", "tqdm", "playwright"}
    assert needed <= set(pins), f"missing pins: {sorted(needed - set(pins))}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_environment_yml_installs_exactly_the_requirements():
    """conda users get the same pins: python 3.11 and pip from conda, everything else from requirements.txt, so
    no version is written twice (and none can disagree)."""
    text = (ROOT / "environment.yml").read_text()
    entries = [line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("- ")]
    assert entries == ["conda-forge", "python=3.11", "pip", "pip:", "-r requirements.txt", "-e ."], entries


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


def test_device_env_override(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert course_lib.device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "toaster")
    with pytest.raises(ValueError, match="'cpu'"):
        course_lib.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSE_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            course_lib.device()


def test_shipped_data_fits_the_budget_and_every_checkpoint_loads_and_is_documented():
    """data/ stays within 80 MB; every checkpoint loads, names the command that made it and has a README row."""
    from course_lib import pretrained

    total = sum(p.stat().st_size for p in (ROOT / "data").rglob("*") if p.is_file())
    assert total <= 80 * 2**20, f"data/ holds {total / 2**20:.1f} MB; the budget is 80 MB"
    readme = (ROOT / "README.md").read_text()
    names = pretrained.list_checkpoints()
    assert {"shapes32-unet", "shapes32-t2i", "shapes-clip", "shapes-classifier", "shapes64-vae",
            "shapes64-latent-t2i", "shapes64-t2i"} <= set(names)
    for name in names:
        meta = json.loads((pretrained.CHECKPOINT_DIR / f"{name}.json").read_text())
        pretrained.load(name, device="cpu")  # one loader for every kind, the CLIP included
        assert meta["command"].startswith("python -m course_lib.train "), name
        assert f"`{name}`" in readme, f"README's checkpoint table lacks {name}"


def test_shipped_loss_curves_say_truthfully_what_each_entry_is():
    """A curve of means over `every` steps has ceil(steps / every) entries (the VAE's once held one per step)."""
    from course_lib import pretrained

    curves = 0
    for path in sorted(pretrained.CHECKPOINT_DIR.glob("*.json")):
        meta = json.loads(path.read_text())
        curve = meta.get("loss_curve")
        assert "history" not in meta, f"{path.name}: an unlabelled history"
        if curve is None:
            continue
        curves += 1
        expected = -(-meta["steps"] // curve["every"])
        for name in set(curve) - {"every", "note"}:
            assert len(curve[name]) == expected, (path.name, name, len(curve[name]), expected)
        every, last = curve["every"], meta["steps"] % curve["every"] or curve["every"]
        # final_loss is the mean of the last 100 steps: the last window holds `last` of them, the windows before
        # `every` each; when steps is not a multiple of every, one window is only partly among the 100 (weighted by
        # the part that is, the sum is then exact only up to how that window's steps differ from its mean)
        weights, losses, left = [], curve["loss"][::-1], 100
        for i, loss in enumerate(losses):
            take = min(left, last if i == 0 else every)
            weights.append((take, loss))
            left -= take
            if left == 0:
                break
        tail_mean = sum(n * loss for n, loss in weights) / 100
        exact = meta["steps"] % every == 0 and 100 % every == 0
        assert meta["final_loss"] == pytest.approx(tail_mean, rel=1e-6 if exact else 1e-2), path.name
    assert curves >= 1


def test_every_shipped_json_names_a_command_that_exists():
    """The command in each JSON of data/ parses with today's command line: the file can be regenerated."""
    import shlex

    from course_lib.evaluation.cli import _parser
    from course_lib.recipes import RECIPES

    for path in sorted((ROOT / "data").rglob("*.json")):
        words = shlex.split(json.loads(path.read_text())["command"])
        assert words[:2] == ["python", "-m"], path.name
        if words[2] == "course_lib.train":
            assert words[3] in RECIPES, path.name
        else:
            assert words[2] == "course_lib.evaluation", path.name
            _parser().parse_args(words[3:])  # SystemExit if an option no longer exists


def test_no_test_can_write_into_data(tmp_path):
    """The session-wide guard (conftest.py) refuses writes, renames, removals and new folders under data/."""
    from course_lib import pretrained
    from course_lib.models import unet_tiny

    data = ROOT / "data"
    with pytest.raises(RuntimeError, match="write into data/"):
        (data / "stray.txt").write_text("x")
    with pytest.raises(RuntimeError, match="write into data/"):
        pretrained.save("stray", unet_tiny(), schedule_name="linear")  # the default directory is data/checkpoints
    with pytest.raises(RuntimeError, match="write into data/"):
        (data / "checkpoints" / "shapes32-unet.json").unlink()
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(RuntimeError, match="write into data/"):
        (tmp_path / "x.json").replace(data / "x.json")  # the atomic rename every checkpoint writer ends with
    assert not any(p.name.startswith(("stray", "x.json")) for p in data.rglob("*"))
    assert (data / "checkpoints" / "shapes32-unet.json").read_text()  # reading is fine
    (tmp_path / "fine.txt").write_text("fine")  # and so is writing anywhere else


def test_browser_tests_find_chromium_or_say_in_one_line_how_to_install_it(tmp_path, monkeypatch):
    import os

    from conftest import find_chromium

    fake = tmp_path / "chromium-browser"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() == str(fake)  # a name people have on PATH
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="CHROMIUM=.*missing is not an executable"):
        find_chromium()
    monkeypatch.delenv("CHROMIUM")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # nothing on PATH, no /usr/bin/chromium
    with pytest.raises(RuntimeError, match=r"apt-get install chromium; macOS: brew install --cask chromium"):
        find_chromium()


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGETS = ("DenoisingPlayer", "NoisingExplorer(", "FillPlayer(")


def _cells(path: Path, kind: str) -> list[tuple[str, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(c.get("id"), "".join(c["source"])) for c in cells if c["cell_type"] == kind]


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in ("01", "02", "03", "04", "05")],
                         ids=lambda p: p.name)
def test_notebook_code_is_one_statement_per_line_within_the_cell_width(path):
    """As in course_lib: no `;`-packed lines, and at most 100 characters, so nothing runs past JupyterLab's cell."""
    import io
    import tokenize

    for cell_id, source in _cells(path, "code"):
        long = [line for line in source.splitlines() if len(line) > 100]
        assert not long, f"{path.name} cell {cell_id}: {len(long[0])} characters: {long[0][:60]}..."
        tokens = tokenize.generate_tokens(io.StringIO(source + "\n").readline)
        assert not any(t.type == tokenize.OP and t.string == ";" for t in tokens), f"{path.name} cell {cell_id}: `;`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_widget_cell_says_how_to_bring_the_widget_back(path):
    """A reopened notebook shows saved widget state at best; the first line of each widget cell says to run it."""
    widget_cells = [(i, s) for i, s in _cells(path, "code") if any(w in s for w in WIDGETS) and "import" not in s]
    for cell_id, source in widget_cells:
        assert source.startswith("# Run this cell to bring the "), f"{path.name} cell {cell_id} has no hint line"
    assert widget_cells or path.name[:2] in ("05",), f"{path.name}: no widget cell found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_state_claims_in_plain_words(path):
    """Students never saw the text the course grew from: no 'seed text' or "the seed's claim" in a notebook."""
    for cell_id, source in _cells(path, "markdown") + _cells(path, "code"):
        assert not re.search(r"seed text|the seed'?s (claim|text|chapter)|seed chapter", source, re.I), \
            f"{path.name} cell {cell_id} speaks of the seed text"
