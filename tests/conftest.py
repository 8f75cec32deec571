"""Shared fixtures. Browser tests (marker `browser`) drive a real JupyterLab in headless Chromium.

`jupyter_server` (session): a throw-away JupyterLab on a free port, with its own config / data / runtime /
workspaces / settings dirs under a temp dir, so nothing from ~/.jupyter leaks in and nothing is written there.
`lab` (function): a `LabPage` helper around one Playwright page; on failure it saves a screenshot and the page
HTML next to the test's tmp_path (and into $COURSE_SCREENSHOT_DIR when set).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")  # looked up on PATH after $CHROMIUM
CHROMIUM_INSTALL = ("no Chromium for the browser tests: install it (Debian/Ubuntu: sudo apt-get install chromium; "
                    "macOS: brew install --cask chromium) or point CHROMIUM=/path/to/chrome at one; never `playwright "
                    "install` (it downloads)")


def find_chromium() -> str:
    """The Chromium the browser tests drive: $CHROMIUM, else the first of CHROMIUM_NAMES on PATH, else Debian's
    /usr/bin/chromium; RuntimeError(CHROMIUM_INSTALL) when there is none."""
    given = os.environ.get("CHROMIUM")
    if given:
        if not os.access(given, os.X_OK):
            raise RuntimeError(f"CHROMIUM={given} is not an executable file; {CHROMIUM_INSTALL}")
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    raise RuntimeError(CHROMIUM_INSTALL)
SERVER_START_TIMEOUT_S = 120
NOTEBOOK_RUN_TIMEOUT_S = 180  # the notebook's own cells (imports, model loading) run inside this

# JupyterLab user settings for a quiet, deterministic UI: no news/update toasts over the notebook, and no
# virtual scrolling (cells outside the viewport must still render their widgets).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


# ----- failure artifacts ----------------------------------------------------------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach each phase's report to the item (item.rep_setup / rep_call) so fixtures can see failures."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(node) -> bool:
    """True when the setup or call phase of this test failed."""
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def export_artifact(path: Path) -> None:
    """Copy a screenshot / HTML dump to $COURSE_SCREENSHOT_DIR when that is set (CI artifacts, reviews)."""
    target = os.environ.get("COURSE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


# ----- throwaway text-to-image checkpoints ----------------------------------------------------
# A tiny CLIP text tower (width 32) and a small cross-attention U-Net, saved like the shipped shapes-clip and
# shapes32-t2i, so generate() and the player's prompt box are tested without the shipped (trained) files.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def save_t2i_checkpoints(directory: Path) -> Path:
    """Write random-weight `shapes-clip` + `shapes32-t2i` checkpoints into directory (also `shapes32-unet`, an
    unconditional one); returns directory. No weight is zero, so prompts and guidance change the samples."""
    import torch

    from course_lib import pretrained
    from course_lib.models import unet_small_cond, unet_tiny
    from course_lib.models.clip import create_clip

    torch.manual_seed(0)
    pretrained.save("shapes-clip", create_clip(TINY_CLIP), schedule_name=None, directory=directory)
    unet = unet_small_cond(cond_dim=TINY_CLIP["text_cfg"]["width"], base_channels=16, dropout=0.0)
    uncond = unet_tiny()
    with torch.no_grad():
        for p in [*unet.parameters(), *uncond.parameters()]:
            if p.ndim > 1 and not p.any():  # output / residual / cross-attention projections start at zero
                torch.nn.init.normal_(p, std=0.05)
    pretrained.save("shapes32-t2i", unet, schedule_name="linear", directory=directory,
                    meta={"text_encoder": "shapes-clip", "data": {"dataset": "shapes", "size": 32}})
    pretrained.save("shapes32-unet", uncond, schedule_name="linear", directory=directory,
                    meta={"data": {"dataset": "shapes", "size": 32}})
    return directory


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Unit tests run torch on one thread: the models are tiny, the numbers repeat, and a shared 2-core machine
    does not thrash (notebooks and browser kernels run in their own processes and keep their defaults)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----- data/ is read-only for the tests ------------------------------------------------------------
# The shipped checkpoints and tables are what the course stands on: a test that writes there (a regressed error
# check that goes on to train "for real", a default --out) would silently replace them. An audit hook (PEP 578)
# sees every open-for-writing, rename, removal and mkdir this process makes and refuses those under data/.
DATA_DIR = os.path.realpath(REPO / "data") + os.sep
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_data_guard = {"on": False}


def _writes_into_data(event: str, args: tuple) -> bool:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        paths = [path] if writing else []
    elif event == "os.rename":  # (src, dst): moving a file out of data/ is as bad as moving one in
        paths = list(args[:2])
    elif event in ("os.symlink", "os.link"):  # (target, new link): only the new link is written
        paths = [args[1]]
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate"):
        paths = [args[0]]
    else:
        return False
    return any(isinstance(p, (str, os.PathLike)) and os.path.abspath(p).startswith(DATA_DIR) for p in paths)


class DataIsReadOnly(RuntimeError):
    """Not an OSError on purpose: `Path.mkdir(exist_ok=True)` and friends swallow OSErrors."""


def _audit(event: str, args: tuple) -> None:
    if _data_guard["on"] and _writes_into_data(event, args):
        raise DataIsReadOnly(f"a test tried to write into data/ ({event} {args[0]!r}); write into tmp_path instead")


sys.addaudithook(_audit)


@pytest.fixture(scope="session", autouse=True)
def data_is_read_only():
    """Every test of the session runs with data/ read-only (see _audit)."""
    _data_guard["on"] = True
    yield
    _data_guard["on"] = False


@pytest.fixture(scope="session")
def t2i_checkpoints(tmp_path_factory) -> Path:
    """A directory holding throwaway shapes-clip, shapes32-t2i and shapes32-unet checkpoints (see above)."""
    return save_t2i_checkpoints(tmp_path_factory.mktemp("checkpoints"))


# ----- JupyterLab server ----------------------------------------------------------------------
def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """Handle of the running server: base `url`, notebook `root` dir, `log` file path."""

    def __init__(self, url: str, root: Path, log: Path, proc: subprocess.Popen):
        self.url, self.root, self.log, self.proc = url, root, log, proc

    def log_tail(self, n: int = 60) -> str:
        """Last n lines of the server log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def add_notebook(self, source: Path | None = None, *, name: str | None = None, nb=None) -> str:
        """Copy a notebook file (or write an nbformat object) into the server root; returns its file name."""
        name = name or source.name
        if nb is not None:
            import nbformat

            nbformat.write(nb, self.root / name)
        else:
            shutil.copy(source, self.root / name)
        return name


def _wait_for_status(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll /api/status until the server answers; fail with the log tail if it dies or times out."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with code {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer {url}/api/status in {SERVER_START_TIMEOUT_S} s:\n"
                f"{log.read_text(errors='replace')[-4000:]}")


def _stop_server(server: JupyterServer) -> None:
    """Ask the server to shut down (it stops its kernels), then terminate / kill only its own process."""
    proc = server.proc
    try:
        req = urllib.request.Request(f"{server.url}/api/shutdown", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory):
    """A JupyterLab server in a temp root, isolated from the user's Jupyter dirs; stopped after the session."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root, dirs = base / "root", {k: base / k for k in ("config", "data", "runtime", "workspaces", "settings")}
    for d in (root, *dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
    for rel, value in LAB_SETTINGS.items():
        path = dirs["settings"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = dict(os.environ)
    env.update(
        # A temp JUPYTER_DATA_DIR only replaces the *user* data dir: the labextensions (ipywidgets'
        # jupyterlab_widgets) and the python3 kernelspec under sys.prefix/share/jupyter are still found.
        JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]), MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={dirs['workspaces']}", f"--LabApp.user_settings_dir={dirs['settings']}",
           "--LabApp.extension_manager=readonly",  # offline: never ask PyPI about extensions
           "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: read kernel status, run commands
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers / CI often run as root; Jupyter refuses that by default
    log = base / "server.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT)
    server = JupyterServer(url, root, log, proc)
    try:
        _wait_for_status(url, proc, log)
        yield server
    finally:
        _stop_server(server)


# ----- Playwright ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (sync API)."""
    from playwright.sync_api import sync_playwright

    try:
        chromium = find_chromium()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)  # one line that names the fix, not a traceback from Playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class LabPage:
    """One browser page on the JupyterLab server, with the few steps a notebook test needs."""

    def __init__(self, page, server: JupyterServer):
        self.page, self.server = page, server

    def open(self, name: str) -> None:
        """Open a notebook from the server root and wait until its kernel is idle."""
        # ?reset: start from an empty workspace, so tabs of earlier tests are not reopened (each with a kernel)
        self.page.goto(f"{self.server.url}/lab/tree/{name}?reset", wait_until="domcontentloaded", timeout=60_000)
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        self.wait_kernel_idle(timeout_s=90)

    def _dismiss_dialogs(self) -> None:
        """Accept any modal (e.g. 'Select Kernel' if a notebook lacks kernelspec metadata)."""
        dialog = self.page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count():
            try:
                dialog.first.click(timeout=2_000)
            except Exception:  # it may close by itself between count() and click()
                pass

    def _notebook_state(self) -> dict:
        """Kernel status and how many code cells are still queued/running ('[*]')."""
        return self.page.evaluate("""() => {
            const app = window.jupyterapp; const w = app && app.shell.currentWidget;
            const ctx = w && w.sessionContext; const k = ctx && ctx.session && ctx.session.kernel;
            const pending = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
                .filter(p => p.textContent.includes('*')).length;
            return {ready: !!(ctx && ctx.isReady), status: k ? k.status : null, pending};
        }""")

    def wait_kernel_idle(self, timeout_s: float = 90, settle_s: float = 1.0) -> None:
        """Wait until the kernel is idle with no cell running, for settle_s in a row."""
        deadline, idle_since = time.monotonic() + timeout_s, None
        state = {}
        while time.monotonic() < deadline:
            self._dismiss_dialogs()
            state = self._notebook_state()
            if state["ready"] and state["status"] == "idle" and state["pending"] == 0:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= settle_s:
                    return
            else:
                idle_since = None
            time.sleep(0.25)
        raise TimeoutError(f"kernel not idle after {timeout_s} s (last state {state}); server log:\n"
                           f"{self.server.log_tail()}")

    def run_all(self, timeout_s: float = NOTEBOOK_RUN_TIMEOUT_S) -> None:
        """Run > Run All Cells from the menu bar (the command registry as a fallback); wait for the run to end."""
        page = self.page
        try:
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=10_000)
            page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click(timeout=10_000)
        except Exception:
            page.keyboard.press("Escape")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        # The run has started once some prompt shows '*' or the kernel is busy; then wait for it to end.
        started = time.monotonic()
        while time.monotonic() - started < 10:
            st = self._notebook_state()
            if st["pending"] or st["status"] == "busy":
                break
            time.sleep(0.1)
        self.wait_kernel_idle(timeout_s=timeout_s)
        result = self.page.evaluate("""() => {
            // read the notebook model: error outputs (the DOM renders them like any stderr text), unrun cells
            const cells = window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
            const errors = cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                .map(o => o.ename + ': ' + o.evalue));
            const unrun = cells.filter(c => c.model.sharedModel.getSource().trim() && c.model.executionCount === null);
            return {errors, unrun: unrun.length, total: cells.length};
        }""")
        assert not result["errors"], f"a notebook cell raised {result['errors'][0]} (see the failure screenshot / HTML)"
        assert result["unrun"] == 0, f"Run All Cells left {result['unrun']} of {result['total']} code cells unrun"

    def shutdown_kernels(self) -> None:
        """Stop every kernel of the server (the notebook's live widget models go with them)."""
        _shutdown_kernels(self.server)

    def widget(self, css_class: str, timeout_s: float = NOTEBOOK_RUN_TIMEOUT_S):
        """The (first) rendered widget with this CSS class, once visible and showing its image."""
        loc = self.page.locator(f".{css_class}").first
        loc.wait_for(state="visible", timeout=timeout_s * 1000)
        loc.locator("img").first.wait_for(state="visible", timeout=30_000)
        loc.scroll_into_view_if_needed()
        return loc

    def slider_handle(self, widget, description: str):
        """The keyboard-focusable noUiSlider handle of the ipywidgets IntSlider labelled `description`."""
        slider = widget.locator(".widget-slider").filter(has=self.page.locator(".widget-label", has_text=description))
        return slider.first.locator(".noUi-handle").first

    def press_keys(self, handle, keys) -> None:
        """Focus a slider handle and press keys on it (noUiSlider moves by a step per arrow, 5 steps per page)."""
        handle.focus()
        for key in keys:
            handle.press(key)
            time.sleep(0.05)

    def wait_src_change(self, img, old_src: str, timeout_s: float = 60) -> str:
        """Wait until an <img> shows something other than old_src; returns the new src."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            src = img.get_attribute("src")
            if src and src != old_src:
                return src
            time.sleep(0.1)
        raise AssertionError(f"image src did not change within {timeout_s} s")

    def wait_handle_value(self, handle, predicate, timeout_s: float = 30) -> float:
        """Wait until a slider handle's aria-valuenow satisfies predicate; returns the value."""
        deadline, value = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            value = float(handle.get_attribute("aria-valuenow"))
            if predicate(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"slider value {value} did not reach the expected range within {timeout_s} s")

    def screenshot(self, path: Path, locator=None) -> Path:
        """Save a PNG of the widget (or the page) and export it to $COURSE_SCREENSHOT_DIR."""
        (locator or self.page).screenshot(path=str(path))
        export_artifact(path)
        return path


@pytest.fixture
def lab(request, browser, jupyter_server, tmp_path):
    """A fresh browser context + LabPage; on failure saves <test>-failure.png/.html for debugging."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    lab_page = LabPage(page, jupyter_server)
    try:
        yield lab_page
    finally:
        if _test_failed(request.node):
            stem = request.node.name.replace("/", "_")
            for suffix, save in ((".png", lambda p: page.screenshot(path=str(p), full_page=True)),
                                 (".html", lambda p: p.write_text(page.content()))):
                path = tmp_path / f"{stem}-failure{suffix}"
                try:
                    save(path)
                    export_artifact(path)
                    print(f"saved {path}")
                except Exception as e:  # the page may be gone; never mask the real failure
                    print(f"could not save {path}: {e}")
        context.close()
        _shutdown_kernels(jupyter_server)  # 2 CPU cores: do not leave an idle torch kernel per test


def _shutdown_kernels(server: JupyterServer) -> None:
    """DELETE every kernel the server runs (REST API), so the next test starts from a quiet machine."""
    try:
        with urllib.request.urlopen(f"{server.url}/api/kernels", timeout=10) as r:
            kernels = json.load(r)
        for k in kernels:
            req = urllib.request.Request(f"{server.url}/api/kernels/{k['id']}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        pass
