"""The dashboard and the report in a real browser: TensorBoard over a finished tiny run, report.html rendered.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with that instruction when it is missing.
"""
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_tracking import finished_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs headless Chromium: apt-get install -y chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama) -> Path:
    return finished_run(tmp_path_factory.mktemp("dashboard"), tiny_llama, report_to="tensorboard")


@pytest.fixture(scope="module")
def tensorboard(run):
    """``make dashboard``'s command on the run's parent folder, on a free localhost port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run.parent),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/data/runs", timeout=2)  # noqa: S310 (localhost)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"TensorBoard did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium once, isolated in its own profile, and return what it printed."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_tensorboard_serves_the_runs_scalars_to_a_browser(tensorboard, tmp_path):
    page = chromium(tmp_path, "--dump-dom", tensorboard + "/data/plugin/scalars/tags")
    tags = json.loads(re.search(r"<pre[^>]*>(.*)</pre>", page, re.S).group(1))
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
            "eval/loss"} <= set(tags["run/tensorboard"])

    # The time-series dashboard itself (an Angular app): cards render lazily, so the window is tall enough to
    # show the first page of every group, and virtual time lets the app fetch and draw before the DOM is dumped.
    dom = chromium(tmp_path, "--window-size=1400,6000", "--virtual-time-budget=15000", "--dump-dom",
                   tensorboard + "/#timeseries")
    cards = set(re.findall(r'title="((?:train|eval)/[^"]+)"', dom))
    assert {"train/loss", "train/tokens_per_second", "eval/loss"} <= cards, sorted(cards)
    assert "run/tensorboard" in dom


def test_report_renders_in_a_browser_with_its_inlined_plots(run, tmp_path):
    from matplotlib.image import imread

    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 4
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={screenshot}", (run / "report.html").as_uri())
    pixels = imread(screenshot)
    assert pixels.shape[:2] == (2000, 1280)
    # Not a blank page: the plots' lines and the tables put a fair share of non-white pixels on it.
    assert (pixels[..., :3].min(-1) < 0.9).mean() > 0.02
