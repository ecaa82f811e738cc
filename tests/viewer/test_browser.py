"""End to end: `trashseg view` serves on 127.0.0.1 and every page renders in headless Chromium.

Debian's chromium, driven by Playwright (never its own downloaded browsers); skipped where
/usr/bin/chromium is absent (`.ci/run` installs it). Screenshots go to the test's tmp folder
and, when TRASHSEG_VIEWER_SCREENSHOTS names a folder, there too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from trashseg.viewer.views import PAGES

CHROMIUM = Path("/usr/bin/chromium")
# DESIGN.md, "Browser tests"; --user-data-dir comes from launch_persistent_context.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Text each page shows once it has rendered its content.
EXPECTED = {
    "Data": "images match",
    "Augmentation": "training samples of",
    "Predictions": "prediction sources on val",
    "Confusions & labels": "predicted as",
    "Submission": "rows in",
    "Runs": "registered model version(s)",
}
SERVER_START_S = 90
PAGE_RENDER_MS = 120_000

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(viewer_world, tmp_path):
    port = _free_port()
    sources = viewer_world.sources
    command = [sys.executable, "-c", "import sys; from trashseg.cli import main; sys.exit(main())", "view", sources.data, "--predictions", *sources.predictions,
               "--ensemble", sources.ensemble, "--submission", sources.submission,
               "--tracking-uri", sources.tracking_uri, "--port", str(port)]
    log_path = tmp_path / "viewer.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"trashseg view exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"trashseg view did not answer in {SERVER_START_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)


def test_every_page_renders_without_exceptions(server, tmp_path):
    from playwright.sync_api import sync_playwright

    screens = tmp_path / "screens"
    screens.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1800},
        )
        try:
            page = browser.new_page()
            for name in PAGES:
                page.goto(f"{server}/?page={quote(name)}")
                page.get_by_text(EXPECTED[name]).first.wait_for(timeout=PAGE_RENDER_MS)
                page.wait_for_function(  # the script run is over: no "Running..." indicator left
                    "!document.querySelector('[data-testid=\"stStatusWidget\"] img, [data-testid=\"stStatusWidgetRunningIcon\"]')",
                    timeout=PAGE_RENDER_MS)
                page.wait_for_timeout(1500)  # images arrive after the text
                shot = screens / f"{list(PAGES).index(name) + 1}-{name.split()[0].lower()}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert page.locator("[data-testid='stException']").count() == 0, f"{name}: {page.inner_text('body')[:2000]}"
                assert page.get_by_role("heading", name=name).count() >= 1, f"{name}: no page title"
        finally:
            browser.close()
    assert len(list(screens.glob("*.png"))) == len(PAGES)
    extra = os.environ.get("TRASHSEG_VIEWER_SCREENSHOTS")
    if extra:
        shutil.copytree(screens, extra, dirs_exist_ok=True)
