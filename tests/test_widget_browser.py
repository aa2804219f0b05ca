"""The strip widget where users meet it: JupyterLab in headless Chromium.

A JupyterLab server on a free localhost port (token-protected, its own settings folders) serves
a two-cell notebook that builds :class:`minieq.widgets.StripWidget` on a micro pipeline. Chromium
opens it, runs its cells (Shift+Enter, once the kernel is idle), clicks "to the end", and the
test reads the picture back from the page: the generated part of the strip must grow to its full
length. Every timeout reports what the page showed; a failed session gets one more try in a fresh
Chromium on a fresh notebook, the first failure kept as a warning. Without
Chromium, chromedriver or selenium the test skips and says which is missing (.ci/run installs
Debian's chromium and chromium-driver when it runs as root).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENS, COLUMN_WIDTH, ZOOM, BAR = 12, 8, 2, 3  # the strip: 12 columns of 8 px, drawn 2x

NOTEBOOK_CODE = [
    "import torch\n"
    "from torch import nn\n"
    "from minieq.generator import Generator, GeneratorConfig\n"
    "from minieq.interactive import StripEditor\n"
    "from minieq.pipeline import Pipeline\n"
    "from minieq.tokenizer import ColumnTokenizer, TokenizerConfig\n"
    "from minieq.widgets import StripWidget\n"
    "torch.manual_seed(0)\n"
    "gen = Generator(GeneratorConfig.preset('tiny', embed_dim=32, depth=2, num_heads=2, head_width=32,\n"
    "                                       head_depth=1, num_sampling_steps=2))\n"
    "for p in gen.head.parameters():  # a fresh head outputs 0: give it a real velocity field\n"
    "    nn.init.normal_(p, std=0.2)\n"
    "pipe = Pipeline(ColumnTokenizer(TokenizerConfig.preset('tiny')), gen.eval(), 0.3)\n",
    f"widget = StripWidget(StripEditor(pipe, num_tokens={TOKENS}, bar={BAR}), ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'],\n"
    f"                     max_tokens=16, zoom={ZOOM})\n"
    "widget.step.value = 2\n"
    "widget.on_next()  # 2 of the columns, so the picture starts part-grown\n"
    "widget.box",
]

# The generated width of the picture in page pixels of the PNG: the rightmost pixel column of
# the strip (below the marker bar) that is not the pending grey everywhere.
GENERATED_WIDTH_JS = """
const img = document.querySelector('.widget-image');
if (!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let right = 0;
for (let x = 0; x < c.width; x++) {
  for (let y = arguments[0]; y < c.height; y++) {
    const i = 4 * (y * c.width + x);
    if (Math.abs(d[i] - 128) > 2 || Math.abs(d[i + 1] - 128) > 2 || Math.abs(d[i + 2] - 128) > 2) { right = x + 1; break; }
  }
}
return [right, c.width];
"""

# What the page shows: the notebook toolbar's kernel state, each cell's prompt ("[ ]:" not run,
# "[*]:" running, "[3]:" done) and the start of each output's text (an error, "Loading widget...").
PAGE_STATE_JS = """
const kernel = document.querySelector('.jp-Notebook-ExecutionIndicator');
return {
  kernel: kernel ? kernel.dataset.status : null,
  prompts: [...document.querySelectorAll('.jp-Cell .jp-InputPrompt')].map(e => e.textContent.trim()),
  outputs: [...document.querySelectorAll('.jp-OutputArea-output')].map(e => e.textContent.slice(0, 300)),
  dialogs: [...document.querySelectorAll('.jp-Dialog')].map(e => e.textContent.slice(0, 300)),
};
"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def browser_tools() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or a skip that names what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("the browser test of the strip widget needs Chromium and chromedriver (Debian: "
                    "apt-get install chromium chromium-driver; .ci/run does it as root)")
    return chromium, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
             for src in NOTEBOOK_CODE]
    path.write_text(json.dumps({"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))


def wait_for(condition, timeout: float, what: str, explain=None):
    """Poll `condition` until it returns something truthy; on a timeout, the error carries what
    `explain()` says about the page, so a failure in CI can be read without a screen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except Exception as err:  # the page re-rendered under us (a stale element): look again
            if not type(err).__module__.startswith("selenium"):
                raise
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f"\n{explain()}" if explain else ""))


def server_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port serving tmp_path: yields (base URL, token, chromium,
    chromedriver); skips before starting anything when the browser tools are missing."""
    chromium, driver_path = browser_tools()
    port, token = free_port(), "minieq-browser-test"
    for name in ("strip.ipynb", "strip-again.ipynb"):  # a fresh notebook (and kernel) per attempt
        write_notebook(tmp_path / name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
           "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or server_up(f"{base}/api/status?token={token}"), 40,
                 "JupyterLab to start")
        assert server.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
        yield base, token, chromium, driver_path
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def drive_the_strip(lab, folder: Path, notebook: str) -> None:
    """One user session: a fresh Chromium opens `notebook`, runs its cells, clicks "to the end"
    and checks the picture; an AssertionError says which step failed and what the page showed."""
    base, token, chromium, driver_path = lab
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folder.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={folder / 'chromium'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(f"{base}/lab/tree/{notebook}?token={token}")

        def click_first(css: str, text: str | None = None) -> bool:
            found = [e for e in browser.find_elements(By.CSS_SELECTOR, css)
                     if e.is_displayed() and (text is None or e.text == text)]
            if found:
                found[0].click()
            return bool(found)

        def explain() -> str:
            """The page as the test sees it: kernel state, cell prompts, outputs; a screenshot and
            the server log beside it."""
            try:
                browser.save_screenshot(str(folder / "page.png"))
                state = json.dumps(browser.execute_script(PAGE_STATE_JS))
            except Exception as err:  # a crashed browser still gets the server's side told
                state = f"unreadable ({type(err).__name__}: {err})"
            log = (folder.parent / "lab.log").read_text()[-1500:]
            return f"page: {state}\nscreenshot: {folder / 'page.png'}\nJupyterLab log tail:\n{log}"

        # The cells show before the kernel is connected: type only once the toolbar's kernel
        # indicator says idle, as a user waits for the kernel to start.
        wait_for(lambda: browser.execute_script(PAGE_STATE_JS)["kernel"] == "idle", 120,
                 "the notebook's kernel to be idle", explain)

        def prompts() -> list[str]:  # the notebook's cells (Shift+Enter on the last adds an empty one)
            return browser.execute_script(PAGE_STATE_JS)["prompts"][:len(NOTEBOOK_CODE)]

        # Run both cells as a user does: click into the first, Shift+Enter twice. JupyterLab marks
        # a cell "[*]:" the moment it is queued; a keystroke lost to focus leaves a "[ ]:", and
        # the pair gets one more try from the first cell (running a cell twice is harmless here).
        for attempt in range(2):
            wait_for(lambda: click_first(".jp-Cell .cm-content"), 30, "the first cell's editor", explain)
            for _ in NOTEBOOK_CODE:
                ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
                time.sleep(0.5)
            try:
                wait_for(lambda: len(prompts()) == len(NOTEBOOK_CODE) and "[ ]:" not in prompts(), 15,
                         "every cell to be queued")
                break
            except AssertionError:
                if attempt:
                    raise AssertionError("Shift+Enter did not queue every cell\n" + explain()) from None
        ran = lambda shown: len(shown) == len(NOTEBOOK_CODE) and all(p.strip("[]: ").isdigit() for p in shown)
        wait_for(lambda: ran(prompts()), 120, "both cells to run", explain)
        full = TOKENS * COLUMN_WIDTH * ZOOM
        start = wait_for(lambda: browser.execute_script(GENERATED_WIDTH_JS, BAR * ZOOM), 60, "the strip picture",
                         explain)
        assert start == [2 * COLUMN_WIDTH * ZOOM, full], explain()  # two columns drawn, the rest pending grey

        wait_for(lambda: click_first("button", "to the end"), 10, "the 'to the end' button", explain)
        grown = wait_for(lambda: (browser.execute_script(GENERATED_WIDTH_JS, BAR * ZOOM) or [0])[0] == full,
                         30, "the strip to grow to its full length", explain)
        assert grown
        assert wait_for(lambda: f"{TOKENS}/{TOKENS} columns" in [
            e.text for e in browser.find_elements(By.CSS_SELECTOR, ".widget-label")], 10, "the status line", explain)
    finally:
        browser.quit()


def test_to_the_end_grows_the_strip_to_full_length_in_a_browser(lab, tmp_path):
    from selenium.common.exceptions import WebDriverException

    try:
        drive_the_strip(lab, tmp_path / "first", "strip.ipynb")
    except (AssertionError, WebDriverException) as first:
        # A browser end-to-end test can lose a run to the machine (a dropped event, a stalled
        # page) that a user would fix with a reload. One more try, in a fresh Chromium on a fresh
        # notebook and kernel, must then pass; the first failure stays visible as a warning.
        warnings.warn(f"the first browser attempt failed, trying once more: {first}")
        drive_the_strip(lab, tmp_path / "second", "strip-again.ipynb")


@pytest.mark.parametrize("uid, flag", [("0", True), ("1000", False)])
def test_make_lab_adds_allow_root_only_as_root(tmp_path, uid, flag):
    """JupyterLab refuses to start as root without --allow-root (most GPU containers run as root)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake_id = tmp_path / "id"  # what `id -u` answers inside the Makefile
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    fake_id.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    dry = subprocess.run(["make", "-n", "lab"], cwd=REPO, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    lab_line = [line for line in dry.stdout.splitlines() if "jupyter lab notebooks" in line]
    assert len(lab_line) == 1 and lab_line[0].rstrip().endswith("--allow-root") == flag
