"""The sliders as a reader uses them: JupyterLab (and Jupyter Notebook 7) in a real headless Chromium,
driven by Playwright.

Opens copies of notebooks 06, 07 and 08 (so nothing is ever saved over the committed ones), runs all
cells with CNN_QUICK=1, waits for the widgets to render as widgets, moves a slider with the keyboard
and picks from a dropdown, and checks that the figure redrew. In notebook 09 it draws on the pad with
the mouse (a 1, a 0 and a 7) and reads the networks' answers. Screenshots of every step go to
test-artifacts/browser/. Select with `pytest -m browser`, leave out with `-m "not browser"`.

Without Chromium the test skips, saying how to install it; with CI=true or REQUIRE_BROWSER=1 a missing
browser fails instead. CHROMIUM_PATH points at a browser binary of your choice.
"""

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("REQUIRE_BROWSER") == "1"
# everything JupyterLab and Chromium would otherwise try to fetch from the internet
LAB_OFFLINE = [
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",
]
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def unavailable(message):
    if REQUIRED:
        pytest.fail(message + " (required here because CI=true or REQUIRE_BROWSER=1)")
    pytest.skip(message)


def find_chromium():
    candidates = [
        os.environ.get("CHROMIUM_PATH"),
        "/usr/lib/chromium/chromium",  # Debian's real binary; /usr/bin/chromium is a wrapper script
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
        "/Applications/Chromium.app/Contents/MacOS/Chromium",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        unavailable(
            "no Chromium found: install it (Debian/Ubuntu: sudo apt-get install chromium; "
            "macOS: brew install --cask chromium) or set CHROMIUM_PATH"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("Playwright for Python is missing: pip install playwright (no browser download needed)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base, token, path, method="GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@contextlib.contextmanager
def jupyter_server(work, app):
    """A Jupyter server on 127.0.0.1 over `work` (a throw-away folder holding copies of the notebooks).

    app: "lab" (JupyterLab 4) or "notebook" (Jupyter Notebook 7). Stops the server and every kernel it
    started on the way out, whether the test passed or failed.
    """
    import psutil

    settings = work / ".settings"
    for name, value in LAB_SETTINGS.items():
        if app == "notebook" and "notification" in name:
            continue  # Notebook 7 has no news or update checks to switch off
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        CNN_QUICK="1",
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(work / ".workspaces"),
        JUPYTER_RUNTIME_DIR=str(work / ".runtime"),
    )
    module, flags = {
        "lab": ("jupyterlab", ["--LabApp.expose_app_in_browser=True", *LAB_OFFLINE]),
        "notebook": ("notebook", ["--JupyterNotebookApp.expose_app_in_browser=True"]),
    }[app]
    command = [
        sys.executable, "-m", module, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", *flags,
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI runs as root; jupyter refuses root without it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / f"jupyter-{app}.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    started = []  # the server and every kernel it starts
    try:
        deadline = time.time() + 90
        while True:
            try:
                api(base, token, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the Jupyter server did not start; see {log.name}")
                time.sleep(0.5)
        yield {"app": app, "base": base, "token": token}
    finally:
        if server.poll() is None:
            started = [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))]
            try:
                for kernel in api(base, token, "/api/kernels"):
                    api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
                api(base, token, "/api/shutdown", method="POST")
                server.wait(timeout=20)
            except Exception:
                pass
        for pid in started:  # whatever did not stop by itself
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if server.poll() is None:
            server.wait(timeout=10)
        log.close()
        assert not [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def notebook_copies(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebooks")
    for name in ("06_feature_maps.ipynb", "07_why_cnns_work.ipynb", "08_why_that_answer.ipynb", "09_draw_a_digit.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, work / name)  # never the committed files: nothing is saved over them
    return work


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with jupyter_server(notebook_copies(tmp_path_factory), "lab") as server:
        yield server


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    with jupyter_server(notebook_copies(tmp_path_factory), "notebook") as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS + (["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


class Notebook:
    """One notebook open in JupyterLab or Jupyter Notebook, with the checks a reader would make by eye."""

    def __init__(self, browser, server, name):
        self.name = name
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.problems = []
        self.page.on("pageerror", self._page_error)
        self.page.on("console", self._console)
        if server["app"] == "lab":  # a workspace of its own, reset: only this notebook opens
            url = f"{server['base']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={server['token']}"
        else:
            url = f"{server['base']}/notebooks/{name}?token={server['token']}"
        self.page.goto(url)
        self.prefix = f"{server['app']}-{Path(name).stem}"
        self.page.wait_for_function(
            """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                       const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                       return !!k && k.status === 'idle' && w.context.isReady; }""",
            timeout=90_000,
        )
        self.step = 0

    def _console(self, message):
        if message.type == "error" and "widget" in message.text.lower():
            self.problems.append(f"console error from the widgets: {message.text}")

    def _page_error(self, error):
        # uncaught exceptions in the widget manager's code; others belong to the front-end itself
        # (Notebook 7.6 throws one in its keyboard-shortcut settings on every page)
        if "widget" in f"{error} {error.stack}".lower():
            self.problems.append(f"page error from the widgets: {error}\n{error.stack}")

    def shot(self, what):
        self.step += 1
        self.page.screenshot(path=ARTIFACTS / f"{self.prefix}-{self.step}-{what}.png")

    def run_all(self):
        self.page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        self.page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        state = self.page.wait_for_function(
            """() => { const w = window.jupyterapp.shell.currentWidget;
                       const cells = w.content.widgets.filter(c => c.model.type === 'code');
                       const failed = cells.find(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
                       if (failed) return 'error in: ' + failed.model.sharedModel.getSource().slice(0, 80);
                       const done = cells.every(c => c.model.executionCount !== null)
                                    && w.sessionContext.session.kernel.status === 'idle';
                       return done ? 'done' : false; }""",
            timeout=120_000,
        ).json_value()
        self.shot("ran-all")
        assert state == "done", f"{self.name}: {state}"
        self.assert_clean()

    def cell(self, source_start):
        index = self.page.evaluate(
            """(start) => window.jupyterapp.shell.currentWidget.content.widgets
                   .findIndex(c => c.model.sharedModel.getSource().startsWith(start))""",
            source_start,
        )
        assert index >= 0, f"no cell starting with {source_start!r} in {self.name}"
        panel = self.page.evaluate("window.jupyterapp.shell.currentWidget.id")  # other notebooks may be open too
        cell = self.page.locator(f"[id='{panel}'] .jp-Notebook .jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()
        return cell

    def widget_cell(self, source_start):
        """The cell that displays an explorer, once its widgets have rendered as real widgets
        (a noUiSlider handle), not as the text fallback 'VBox(children=...)'."""
        cell = self.cell(source_start)
        cell.locator(".widget-slider .noUi-handle").first.wait_for(timeout=30_000)
        assert "VBox(children" not in cell.inner_text()
        return cell

    def figure(self, cell):
        """The figure inside the widget's output area, once it is decoded (src, as a fingerprint)."""
        image = cell.locator(".widget-output img").first
        image.wait_for(timeout=30_000)
        self.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        return image.get_attribute("src")

    def settle(self, quiet=0.6, timeout=60):
        """Wait until the kernel has been idle for `quiet` seconds: every widget callback has run."""
        status = "(() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status)()"
        deadline, idle_since = time.time() + timeout, None
        while time.time() < deadline:
            if self.page.evaluate(status) == "idle":
                idle_since = idle_since or time.time()
                if time.time() - idle_since >= quiet:
                    return
            else:
                idle_since = None
            time.sleep(0.1)
        pytest.fail(f"{self.name}: the kernel stayed busy for {timeout} s")

    def redraws(self, cell, action):
        """Do `action`, let the kernel finish, and check that the widget's figure changed."""
        before = self.figure(cell)
        action()
        self.settle()
        self.assert_clean()
        after = self.figure(cell)
        assert after != before, f"{self.name}: the figure did not change"

    def assert_clean(self):
        text = self.page.locator(".jp-OutputArea").all_inner_texts()
        tracebacks = [t for t in text if "Traceback" in t or "Error" in t.split("\n")[0]]
        assert not tracebacks, f"{self.name}: a Python error in an output:\n{tracebacks[0][:2000]}"
        assert not self.problems, f"{self.name}: " + "\n".join(self.problems)


def press(notebook, handle, key, times=1):
    """Press a key on a slider handle (ipywidgets 8 sliders move with the arrow keys once focused)."""
    for _ in range(times):
        handle.press(key)


def drag_to_end(notebook, slider):
    """Drag a slider's handle with the mouse to the far right end of its track."""
    handle = slider.locator(".noUi-handle").bounding_box()
    track = slider.locator(".noUi-target").bounding_box()
    y = handle["y"] + handle["height"] / 2
    notebook.page.mouse.move(handle["x"] + handle["width"] / 2, y)
    notebook.page.mouse.down()
    notebook.page.mouse.move(track["x"] + track["width"] + 20, y, steps=8)
    notebook.page.mouse.up()


def check_feature_map_explorers(browser, server, keyboard):
    """Move the sliders of notebook 06 with the keyboard (keyboard=True) or by dragging them."""
    nb = Notebook(browser, server, "06_feature_maps.ipynb")
    nb.run_all()
    cell = nb.widget_cell("feature_map_explorer(")
    sliders = cell.locator(".widget-slider")
    assert sliders.count() == 2 and cell.locator("select").count() == 1
    nb.figure(cell)
    nb.shot("explorer")

    image_slider, channel = sliders.nth(0), sliders.nth(1)
    if keyboard:
        nb.redraws(cell, lambda: press(nb, image_slider.locator(".noUi-handle"), "ArrowRight", times=2))
        assert image_slider.locator(".widget-readout").inner_text().strip() == "2"
    else:
        nb.redraws(cell, lambda: drag_to_end(nb, image_slider))
        last = image_slider.locator(".noUi-handle").get_attribute("aria-valuemax")
        assert image_slider.locator(".widget-readout").inner_text().strip() == str(int(float(last)))
    nb.shot("slider-moved")

    nb.redraws(cell, lambda: cell.locator("select").select_option("conv2"))
    # conv2 has 64 channels: the channel slider now goes past relu1's last channel, 31
    if keyboard:
        nb.redraws(cell, lambda: press(nb, channel.locator(".noUi-handle"), "ArrowRight", times=40))
        assert channel.locator(".widget-readout").inner_text().strip() == "40"
    else:
        nb.redraws(cell, lambda: drag_to_end(nb, channel))
        assert channel.locator(".widget-readout").inner_text().strip() == "63"
    nb.shot("dropdown-conv2")
    cell.screenshot(path=ARTIFACTS / f"{server['app']}-feature-explorer.png")

    grid = nb.widget_cell("channel_grid_explorer(")
    nb.redraws(grid, lambda: grid.locator("select").select_option("pool2"))
    nb.shot("channel-grid-pool2")
    nb.page.close()


def test_feature_map_explorers_in_jupyterlab(browser, lab):
    check_feature_map_explorers(browser, lab, keyboard=True)


def test_shift_explorer_in_jupyterlab(browser, lab):
    nb = Notebook(browser, lab, "07_why_cnns_work.ipynb")
    nb.run_all()
    cell = nb.widget_cell("shift_explorer(")
    caption = cell.locator(".widget-html-content")
    predictions = caption.inner_text()
    assert "SimpleCNN" in predictions and "MLP" in predictions
    shift = cell.locator(".widget-slider").nth(1)  # the "shift →" slider
    nb.redraws(cell, lambda: press(nb, shift.locator(".noUi-handle"), "ArrowRight", times=6))
    assert shift.locator(".widget-readout").inner_text().strip() == "6"
    assert caption.inner_text() != predictions, "the predictions did not change with the shift"
    nb.shot("shifted-6")
    nb.page.close()


def test_explanation_explorer_in_jupyterlab(browser, lab):
    nb = Notebook(browser, lab, "08_why_that_answer.ipynb")
    nb.run_all()
    cell = nb.widget_cell("explanation_explorer(")
    image_slider = cell.locator(".widget-slider").first
    nb.redraws(cell, lambda: press(nb, image_slider.locator(".noUi-handle"), "ArrowRight", times=1))
    assert image_slider.locator(".widget-readout").inner_text().strip() == "1"
    nb.shot("explain-image-1")
    nb.redraws(cell, lambda: cell.locator("select").select_option(label="3"))  # why (not) a 3?
    nb.shot("explain-class-3")
    nb.page.close()


def test_feature_map_explorers_in_jupyter_notebook(browser, classic):
    # Notebook 7 keeps the arrow keys for itself: a reader there drags the sliders
    check_feature_map_explorers(browser, classic, keyboard=False)


# ----------------------------------------------------------------------------- notebook 09: the drawing pad


def run_up_to(nb, source_start):
    """Run every cell above the one starting with ``source_start``, and that one: the rest of the
    notebook (its measurements, which nbval runs) is not needed to draw."""
    index = nb.page.evaluate(
        """(start) => { const w = window.jupyterapp.shell.currentWidget;
                        const i = w.content.widgets.findIndex(c => c.model.sharedModel.getSource().startsWith(start));
                        if (i >= 0) w.content.activeCellIndex = i + 1;
                        return i; }""",
        source_start,
    )
    assert index >= 0, f"no cell starting with {source_start!r} in {nb.name}"
    nb.page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    nb.page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-above')")
    state = nb.page.wait_for_function(
        """(last) => { const w = window.jupyterapp.shell.currentWidget;
                       const cells = w.content.widgets.slice(0, last + 1).filter(c => c.model.type === 'code');
                       const failed = cells.find(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
                       if (failed) return 'error in: ' + failed.model.sharedModel.getSource().slice(0, 80);
                       const done = cells.every(c => c.model.executionCount !== null)
                                    && w.sessionContext.session.kernel.status === 'idle';
                       return done ? 'done' : false; }""",
        arg=index,
        timeout=120_000,
    ).json_value()
    nb.shot("ran-to-the-pad")
    assert state == "done", f"{nb.name}: {state}"
    nb.assert_clean()


def stroke(nb, canvas, points):
    """Draw one stroke with the mouse through points given in pad pixels (0 to 280); returns the seconds
    from releasing the button to the answer's caption changing."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    scale = box["width"] / 280

    def at(x, y):  # pad pixels to page pixels
        return box["x"] + x * scale, box["y"] + y * scale

    before = nb.caption.inner_text()
    nb.page.mouse.move(*at(*points[0]))
    nb.page.mouse.down()
    for x, y in points[1:]:
        nb.page.mouse.move(*at(x, y), steps=4)
    nb.page.mouse.up()
    start = time.perf_counter()
    nb.page.wait_for_function("([el, before]) => el.innerText !== before", arg=[nb.caption.element_handle(), before],
                              timeout=30_000)  # fmt: skip
    return time.perf_counter() - start


def reading(nb):
    """The pad's caption, e.g. {'SimpleCNN': (1, '100%'), 'MLP': (1, '98%')}."""
    parts = [p.split(":") for p in nb.caption.inner_text().split("·")]
    return {name.strip(): (int(answer.split()[0]), answer.split()[1].strip("()")) for name, answer in parts}


def clear(nb, cell):
    cell.get_by_role("button", name="Clear").click()
    nb.page.wait_for_function("(el) => el.innerText.startsWith('Draw a digit')", arg=nb.caption.element_handle())
    nb.settle()


def check_drawing_pad(browser, server, drawings):
    """Open notebook 09, run it down to the pad, press Clear, and draw each of ``drawings``
    ({name: (digit, strokes)}), checking SimpleCNN's answer; returns {name: (reading, seconds)}."""
    nb = Notebook(browser, server, "09_draw_a_digit.ipynb")
    run_up_to(nb, "pad = DrawingPad(")
    cell = nb.cell("pad = DrawingPad(")
    canvas = cell.locator("canvas").first
    canvas.wait_for(timeout=30_000)
    nb.caption = cell.locator(".widget-html-content").first
    nb.page.wait_for_function("(el) => el.innerText.includes('SimpleCNN: 2')", arg=nb.caption.element_handle(),
                              timeout=30_000)  # the example "2" the pad starts with  # fmt: skip
    box = canvas.bounding_box()
    assert round(box["width"]) == round(box["height"]) == 280, f"the pad is {box['width']}x{box['height']} on screen"
    nb.settle()
    nb.shot("pad")
    seen = {}
    for name, (digit, strokes) in drawings.items():
        clear(nb, cell)
        assert cell.locator(".widget-image").first.is_hidden(), "Clear left the answer's figure"
        seconds = [stroke(nb, canvas, points) for points in strokes]
        seen[name] = (reading(nb), seconds[-1])
        nb.settle()
        nb.assert_clean()
        nb.shot(f"drew-{name}")
        assert seen[name][0]["SimpleCNN"][0] == digit, f"{nb.name}: a drawn {name} was read as {seen[name][0]}"
    nb.page.set_viewport_size({"width": 1400, "height": 1400})  # the whole pad, answer and feature maps
    output = cell.locator(".jp-OutputArea-output").first
    output.scroll_into_view_if_needed()
    output.screenshot(path=ARTIFACTS / f"{server['app']}-drawing-pad.png")  # docs/drawing-pad.png is the lab one
    nb.page.close()
    return seen


ONE = [(140, 40), (138, 140), (136, 240)]
OVAL = [(140 + 55 * math.sin(2 * math.pi * t / 24), 140 - 90 * math.cos(2 * math.pi * t / 24)) for t in range(26)]
SEVEN = [(80, 55), (140, 55), (200, 55), (165, 150), (125, 240)]  # the bar, then the diagonal, in one stroke


def test_drawing_pad_in_jupyterlab(browser, lab):
    seen = check_drawing_pad(browser, lab, {"vertical stroke": (1, [ONE]), "oval": (0, [OVAL]), "seven": (7, [SEVEN])})
    (ARTIFACTS / "lab-drawing-pad.json").write_text(json.dumps(seen, indent=1))
    print("drawn and read (SimpleCNN, MLP), seconds from pen-up to the caption:", seen)


def test_drawing_pad_in_jupyter_notebook(browser, classic):
    seen = check_drawing_pad(browser, classic, {"vertical stroke": (1, [ONE])})
    (ARTIFACTS / "notebook-drawing-pad.json").write_text(json.dumps(seen, indent=1))
