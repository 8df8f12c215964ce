"""The capacity-planning notebook, seen and used in a real browser.

Starts JupyterLab (from this venv) on a free loopback port over a temporary
root holding a *copy* of ``notebooks/02-capacity-planning.ipynb``, opens it in
headless Chromium driven by Playwright, runs all cells, moves the dashboard's
``workers`` slider and checks that the summary table and the chart follow.
Screenshots of the dashboard before and after, of the browser window, and of
the whole notebook page by page go to ``reports/browser/`` (git-ignored).

It needs Debian's ``chromium`` (``apt-get install -y chromium``; a Playwright
browser download is not possible here) and the ``browser`` extra. Nothing is
skipped when they are missing: the test errors at setup and says what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02-capacity-planning.ipynb"
SHOTS = REPO / "reports" / "browser"

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 1000}
BUDGET_S = 60.0  # the whole browser session (typically 15-35 s); each wait has its own cap
SERVER_START_S = 25.0
ARROW_PRESSES = 3
SETTLE_MS = 700

# JupyterLab and ipywidgets 8 DOM
WORKERS_SLIDER = ".widget-slider:has(.widget-label:text-is('workers'))"
DASHBOARD = f".widget-vbox:has({WORKERS_SLIDER}):has(.widget-image)"
SUMMARY = ".widget-html:has(table)"
CHART = "img.widget-image, .widget-image img"
KERNEL_IDLE = ".jp-StatusBar-Widget:has-text('| Idle')"
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
PROBLEMS = (f"{STDERR}:has-text('Traceback'), "
            ".jp-OutputArea-output:has-text('Error displaying widget')")
SCROLLER = ".jp-NotebookPanel .jp-WindowedPanel-outer"
LEFT_SIDEBAR_OPEN = ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"

LAB_SETTINGS = {  # no news or update toasts over the outputs, no blank page past the last cell
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                     "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"scrollPastEnd": False,
                                               "windowingMode": "none"},
}

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@dataclasses.dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    root: Path
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server then shuts its kernels down), then SIGKILL to its process group
    (kernels run in sessions of their own; only the graceful path stops them)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _server_url(runtime: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The URL the server listens on, from the ``jpserver-<pid>.json`` it writes once it
    listens, then confirmed by ``/api/status`` answering."""
    deadline = time.monotonic() + SERVER_START_S
    info = runtime / f"jpserver-{proc.pid}.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n"
                                 + log.read_text(errors="replace")[-4000:])
        if info.exists():
            try:
                url = str(json.loads(info.read_text())["url"]).rstrip("/")
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        return url
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise AssertionError(f"jupyter lab did not answer within {SERVER_START_S:.0f} s:\n"
                         + log.read_text(errors="replace")[-4000:])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab over a temporary root with a copy of the notebook; stopped whatever happens."""
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), (f"{jupyter} is missing: install the browser extra "
                              "(pip install -e '.[browser]')")
    assert NOTEBOOK.exists(), f"{NOTEBOOK} is missing"
    root = tmp_path / "root"
    root.mkdir()
    _copy_without_outputs(NOTEBOOK, root / NOTEBOOK.name)
    home = tmp_path / "jupyter"  # own config, data, runtime and IPython dirs: no user settings
    for extension, settings in LAB_SETTINGS.items():
        path = home / "config" / "lab" / "user-settings" / f"{extension}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = _free_port()
    command = [str(jupyter), "lab", "--ServerApp.open_browser=False",
               "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=50",
               "--IdentityProvider.token=", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = tmp_path / "jupyter.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _server_url(home / "runtime", proc, log)
        yield Lab(url, root, log)
    finally:
        _stop(proc)


def _copy_without_outputs(source: Path, target: Path) -> None:
    """Copy a notebook without its outputs, execution counts and saved widget state, so that
    what the page shows after Run All can only come from this run (the saved dashboard
    would otherwise render, dead, before its cell runs again)."""
    notebook = json.loads(source.read_text(encoding="utf-8"))
    notebook.get("metadata", {}).pop("widgets", None)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False), encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chromium() -> str:
    """Debian's chromium: Playwright drives it by path (its own browser download fails here)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(path).exists(), ("chromium is missing: apt-get install -y chromium "
                                 "(Debian's; `playwright install` cannot download here)")
    return path


_IMAGE_DIGEST = """async (img) => {
    if (!img.complete || !img.naturalWidth) return null;
    const bytes = await (await fetch(img.src)).arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, "0")).join("")
        + ":" + img.naturalWidth + "x" + img.naturalHeight;
}"""


def _poll(what: str, check: Callable[[], Any], seconds: float, step: float = 0.25) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(step)


class _Budget:
    """Milliseconds for each wait: its own cap, or what remains of the whole budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.began = time.monotonic()

    def __call__(self, cap: float) -> float:
        remaining = self.seconds - (time.monotonic() - self.began)
        assert remaining > 0, f"the browser session took over its {self.seconds:.0f} s budget"
        return max(1.0, min(cap, remaining)) * 1000

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began


def _screenshot_notebook(page: Any, folder: Path, prefix: str, left: _Budget,
                         limit: int = 40) -> list[Path]:
    """The notebook page by page (JupyterLab scrolls inside a panel, so a full-page
    screenshot shows only the window)."""
    scroller = page.locator(SCROLLER).first
    scroller.evaluate("el => { el.scrollTop = 0; }")
    shots = []
    for index in range(limit):
        page.wait_for_timeout(300)
        path = folder / f"{prefix}-{index:02d}.png"
        page.screenshot(path=path, timeout=left(10))
        shots.append(path)
        moved = scroller.evaluate("""el => { const before = el.scrollTop;
            el.scrollTop = before + el.clientHeight * 0.9; return el.scrollTop > before; }""")
        if not moved:
            break
    return shots


def _run_all_and_move_workers(page: Any, lab: Lab, shots: Path, left: _Budget) -> str:
    """Open the notebook, run all cells, move the workers slider, check the dashboard
    followed; returns a record of what changed."""
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}", timeout=left(30),
              wait_until="domcontentloaded")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=left(30))
    page.locator(KERNEL_IDLE).first.wait_for(timeout=left(30))
    marks = {"kernel idle": left.elapsed}
    if page.locator(LEFT_SIDEBAR_OPEN).count():  # fold the file browser: more room
        page.locator(LEFT_SIDEBAR_OPEN).first.click(timeout=left(10))

    page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click(timeout=left(10))
    page.locator(".lm-Menu-itemLabel:text-is('Run All Cells')").click(timeout=left(10))

    def all_cells_ran() -> bool:
        problems = page.locator(PROBLEMS)
        if problems.count():
            raise AssertionError("a cell failed:\n" + problems.first.inner_text()[-3000:])
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").evaluate_all(
            "els => els.map(el => el.textContent.trim())")
        return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)

    _poll("all cells to run (every code cell numbered)", all_cells_ran, left(60) / 1000)
    page.locator(KERNEL_IDLE).first.wait_for(timeout=left(30))
    page.locator(f"{DASHBOARD} .noUi-handle").first.wait_for(timeout=left(30))
    marks["all cells ran"] = left.elapsed
    dash = page.locator(DASHBOARD).last
    dash.scroll_into_view_if_needed(timeout=left(10))
    status = dash.locator(".widget-html").first
    summary = dash.locator(SUMMARY).first
    chart = dash.locator(CHART).first
    handle = dash.locator(f"{WORKERS_SLIDER} .noUi-handle").first
    readout = dash.locator(f"{WORKERS_SLIDER} .widget-readout").first

    def chart_digest() -> str | None:
        value = chart.evaluate(_IMAGE_DIGEST)
        return str(value) if value else None

    def settled() -> tuple[str, str] | None:
        """Chart and summary, once they stay the same for a moment (a later cell may still
        be moving the sliders' state through the widget channel)."""
        first = (chart_digest(), summary.inner_text())
        page.wait_for_timeout(SETTLE_MS)
        return first if all(first) and first == (chart_digest(), summary.inner_text()) else None

    before_digest, before_text = _poll("the chart and summary to settle", settled,
                                       left(20) / 1000)
    before_workers = int(readout.inner_text())
    before_status = status.inner_text()
    assert "last result" not in before_status, before_status
    dash.screenshot(path=shots / "dashboard-before.png", timeout=left(10))
    page.screenshot(path=shots / "window-before.png", timeout=left(10))

    top = float(handle.get_attribute("aria-valuemax") or before_workers + ARROW_PRESSES)
    key, sign = ("ArrowRight", 1) if before_workers + ARROW_PRESSES <= top else ("ArrowLeft", -1)
    # One press at a time, each followed by its redraw: the kernel handles the slider's
    # values in turn (~0.5 s each), so after several quick presses the charts would still
    # show an earlier value for a while. Each value draws a different chart (its title
    # names the workers), and the kernel reports idle only after that update's messages.
    handle.focus(timeout=left(10))
    digest = before_digest
    for press in range(1, ARROW_PRESSES + 1):
        handle.press(key, timeout=left(10))
        expected = str(before_workers + sign * press)
        _poll(f"the slider's readout to reach {expected}",
              lambda expected=expected: readout.inner_text() == expected, left(10) / 1000)
        previous = digest
        digest = _poll(f"the chart to follow the workers slider to {expected}",
                       lambda previous=previous: (d := chart_digest()) and d != previous and d,
                       left(30) / 1000)
        page.locator(KERNEL_IDLE).first.wait_for(timeout=left(30))
    after_digest = digest
    marks["slider moved, redrawn"] = left.elapsed
    after_text = summary.inner_text()
    after_workers = int(readout.inner_text())
    after_status = status.inner_text()
    assert after_workers == before_workers + sign * ARROW_PRESSES, (before_workers, key,
                                                                    after_workers)
    assert after_text != before_text
    assert after_digest != before_digest
    assert "last result" not in after_status, after_status
    dash.screenshot(path=shots / "dashboard-after.png", timeout=left(10))
    page.screenshot(path=shots / "window-after.png", timeout=left(10))
    _screenshot_notebook(page, shots, "notebook", left)
    marks["screenshots"] = left.elapsed
    stderr = page.locator(STDERR).evaluate_all("els => els.map(el => el.textContent)")
    return (f"workers {before_workers}: {before_status}\n{before_text}\n\n"
            f"workers {after_workers}: {after_status}\n{after_text}\n\n"
            f"chart {before_digest}\n   -> {after_digest}\n\n"
            "stderr outputs:\n" + "\n".join(stderr) + "\n\n"
            "seconds into the browser session: "
            + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()) + "\n")


def test_dashboard_follows_the_workers_slider(chromium: str, lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "shots"
    shots.mkdir()
    left = _Budget(BUDGET_S)
    console: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error":
            console.append(f"console: {message.text}")

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                         headless=True)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.on("console", on_console)
                page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
                try:
                    record = _run_all_and_move_workers(page, lab, shots, left)
                except BaseException:
                    with contextlib.suppress(PlaywrightError):
                        page.screenshot(path=shots / "failure.png", timeout=5000)
                    raise
            finally:
                browser.close()
    except (AssertionError, PlaywrightError) as exc:
        raise AssertionError(
            f"{exc}\n\nscreenshots: {SHOTS}\nbrowser errors:\n" + "\n".join(console[-20:])
            + f"\n\njupyter log (tail):\n{lab.log_tail()}") from exc
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob("*.png"):
            old.unlink()
        for shot in shots.iterdir():
            shutil.copy2(shot, SHOTS / shot.name)
    (SHOTS / "summary.txt").write_text(
        record + "\nbrowser errors:\n" + "\n".join(console) + "\n")
    print(f"browser session {left.elapsed:.1f} s; screenshots in {SHOTS}")
