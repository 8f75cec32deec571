"""End to end: the widgets render in a real JupyterLab (headless Chromium) and react to the keyboard.

Each test runs a notebook with Run > Run All Cells, waits for the kernel to go idle, then moves a slider
by pressing keys on its noUiSlider handle and checks that the widget's <img> shows a new frame (its src is a
fresh blob: URL for every new PNG the kernel sends). Fixtures and the LabPage helper live in conftest.py.
"""
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTER_1 = REPO / "notebooks" / "01_forward_noising.ipynb"

STATUS = re.compile(r"step \d+/\d+")  # the player's status label, e.g. "step 7/20 · NFE 7 · t=649 · 0.41 s"

pytestmark = pytest.mark.browser


def _notebook(*cells: str):
    """A notebook of code cells with the python3 kernelspec (so Lab asks no kernel question)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def test_chapter1_noising_explorer_scrubs(lab, tmp_path):
    """Chapter 1 as shipped: the NoisingExplorer shows the photo and a new frame per slider key press."""
    name = lab.server.add_notebook(CHAPTER_1)
    lab.open(name)
    lab.run_all()

    explorer = lab.widget("course-noising-explorer")
    img = explorer.locator("img").first
    handle = lab.slider_handle(explorer, "t")
    before_src, before_t = img.get_attribute("src"), float(handle.get_attribute("aria-valuenow"))
    lab.press_keys(handle, ["ArrowRight"] * 3 + ["PageUp"] * 30)  # 3 + 30 * 5 steps: t = 153

    after_src = lab.wait_src_change(img, before_src)
    after_t = round(float(handle.get_attribute("aria-valuenow")))
    assert after_src.startswith("blob:") and after_src != before_src
    assert after_t == before_t + 153, f"slider did not move as keyed: t {before_t} -> {after_t}"
    # the kernel caught up with the last key press: its caption names the slider's t
    explorer.locator(".widget-label", has_text=f"t = {after_t} ·").wait_for(timeout=30_000)
    lab.screenshot(tmp_path / "chapter1_noising_explorer.png", explorer)

    # Play is jslinked to the slider in the browser: pressing it moves t (by 10 per tick) and the frames follow
    play_button = explorer.locator(".widget-play button").first
    play_button.click()
    lab.wait_handle_value(handle, lambda v: v >= after_t + 20)
    play_button.click()  # the same button pauses
    explorer.locator(".widget-play .fa-play").wait_for(timeout=10_000)
    lab.wait_src_change(img, after_src)


def test_denoising_player_reruns_on_steps_key(lab, tmp_path):
    """A DenoisingPlayer samples live: one ArrowRight on 'steps' reruns the sampler and shows new frames."""
    nb = _notebook(
        "from course_lib import pretrained\n"
        "from course_lib.widgets import DenoisingPlayer\n"
        "p = pretrained.load('shapes32-unet')  # the shipped model\n"
        "model, schedule = p.model, p.schedule",
        "player = DenoisingPlayer(model, schedule, steps=5)\nplayer",
    )
    name = lab.server.add_notebook(name="player.ipynb", nb=nb)
    lab.open(name)
    lab.run_all()

    player = lab.widget("course-denoising-player")
    img = player.locator("img").first
    status = player.locator(".widget-label", has_text=STATUS).first  # not the "steps" slider's own label
    assert "step 5/5" in status.inner_text()
    handle = lab.slider_handle(player, "steps")
    before_src = img.get_attribute("src")
    lab.press_keys(handle, ["ArrowRight"])  # steps 5 -> 6: a new trajectory is sampled

    # the kernel sampled 6 steps (its status counts them as they stream in) and pushed new frames
    player.locator(".widget-label", has_text="step 6/6").wait_for(timeout=60_000)
    assert img.get_attribute("src") != before_src
    assert float(handle.get_attribute("aria-valuenow")) == 6
    lab.screenshot(tmp_path / "denoising_player.png", player)


def test_a_saved_notebook_reopens_with_the_players_picture_not_an_error(lab, tmp_path):
    """JupyterLab saves widget state with the notebook (jupyter/overrides.json, installed by make): reopened with a
    fresh kernel, the player's output shows its last picture instead of 'Error displaying widget: model not found'."""
    import json
    import shutil

    nb = _notebook("from course_lib import pretrained\n"
                   "from course_lib.widgets import DenoisingPlayer\n"
                   "p = pretrained.load('shapes32-unet')",
                   "player = DenoisingPlayer(p.model, p.schedule, steps=3, n=2)\nplayer")
    name = lab.server.add_notebook(name="saved.ipynb", nb=nb)
    lab.open(name)
    lab.run_all()
    lab.widget("course-denoising-player").locator(".widget-label", has_text="step 3/3").wait_for(timeout=60_000)
    lab.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    saved = lab.server.root / name
    for _ in range(120):  # the save is asynchronous: wait for the widget state in the file
        state = json.loads(saved.read_text()).get("metadata", {}).get("widgets", {})
        if state:
            break
        lab.page.wait_for_timeout(250)
    assert "application/vnd.jupyter.widget-state+json" in state, "JupyterLab did not save the widget state"
    lab.shutdown_kernels()  # the live widget models are gone with the kernel
    shutil.copy(saved, lab.server.root / "reopened.ipynb")
    lab.open("reopened.ipynb")  # a fresh kernel that never ran the cells
    restored = lab.page.locator(".course-denoising-player img").first
    restored.wait_for(state="visible", timeout=60_000)
    assert restored.get_attribute("src"), "the saved picture is not shown"
    assert lab.page.get_by_text("Error displaying widget").count() == 0
    lab.screenshot(tmp_path / "reopened_player.png", lab.page.locator(".course-denoising-player").first)


def _displayed_pixels(img):
    """What the <img> shows right now, as an RGB array (a screenshot of the element, so it is what a student sees)."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("RGB"))


def check_text_player(lab, tmp_path, load_args: str = "", model: str = "shapes32-t2i") -> None:
    """A text-to-image DenoisingPlayer: typing a prompt (Enter) and keying the guidance_scale slider each show new
    images. `load_args` are extra from_pretrained arguments (e.g. a directory of throwaway checkpoints)."""
    nb = _notebook(
        "from course_lib.widgets import DenoisingPlayer",
        f"player = DenoisingPlayer.from_pretrained({model!r}, steps=5, n=2{load_args})\nplayer",
    )
    name = lab.server.add_notebook(name=f"{model}_player.ipynb", nb=nb)
    lab.open(name)
    lab.run_all()

    player = lab.widget("course-denoising-player")
    img = player.locator("img").first
    player.locator(".widget-label", has_text="step 5/5").wait_for(timeout=60_000)
    before_src, before_pixels = img.get_attribute("src"), _displayed_pixels(img)

    # type a prompt; the box sends it to the kernel on Enter (continuous_update=False)
    box = player.locator(".widget-text").filter(has=lab.page.locator(".widget-label", has_text="prompt"))
    box.locator("input").first.fill("a large blue star at the top")
    box.locator("input").first.press("Enter")
    lab.wait_src_change(img, before_src)
    lab.wait_kernel_idle(timeout_s=90)  # the whole trajectory was sampled
    prompt_src, prompt_pixels = img.get_attribute("src"), _displayed_pixels(img)
    assert not (prompt_pixels == before_pixels).all(), "the image did not change after a new prompt"
    assert "error" not in player.inner_text()

    # guidance_scale 5.0 -> 6.0: two ArrowRight presses of 0.5 each on the slider's handle
    handle = lab.slider_handle(player, "guidance_scale")
    lab.press_keys(handle, ["ArrowRight", "ArrowRight"])
    lab.wait_src_change(img, prompt_src)
    lab.wait_kernel_idle(timeout_s=90)
    assert float(handle.get_attribute("aria-valuenow")) == 6.0
    player.locator(".widget-label", has_text="step 5/5").wait_for(timeout=60_000)
    assert not (_displayed_pixels(img) == prompt_pixels).all(), "the image did not change with guidance_scale"
    lab.screenshot(tmp_path / f"{model}_player.png", player)


def test_text_to_image_player_prompt_and_guidance(lab, tmp_path):
    """The shipped shapes32-t2i (with its shapes-clip text encoder) in a DenoisingPlayer, driven by the keyboard."""
    check_text_player(lab, tmp_path)


def test_latent_text_to_image_player(lab, tmp_path):
    """The latent model (shapes64-latent-t2i): the player samples 8x8x4 latents and shows them decoded by
    shapes64-vae; a prompt and the guidance slider change the decoded images."""
    check_text_player(lab, tmp_path, model="shapes64-latent-t2i")
    player = lab.widget("course-denoising-player")
    width = lab.page.evaluate("(img) => img.naturalWidth", player.locator("img").first.element_handle())
    assert width >= 2 * 64, f"frames should show decoded 64x64 images, not 8x8 latents (PNG is {width} px wide)"
