"""The explorer in a real browser: `streamlit run app/explorer.py` on a free port, driven by Debian's
chromium through Playwright: open a singer from the map, upload a recording, read the ranking, and
save a screenshot to test-artifacts/explorer.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "app" / "explorer.py"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser_ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the demo workspace whose default map is already fitted and saved.

    Fitting here, in the test process, reuses umap's compiled code when other tests ran first;
    the server then only loads the saved map.
    """
    from app import views
    from recsys.api import Recommender
    from recsys.config import load_settings

    ws = tmp_path_factory.mktemp("browser-ws")
    for part in ("models", "index"):
        shutil.copytree(demo_workspace / part, ws / part)
    with sqlite3.connect(demo_workspace / "catalog.db") as src, sqlite3.connect(ws / "catalog.db") as dst:
        src.backup(dst)
    views.catalog_map(
        Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu")), "singers", "fused"
    )
    return ws


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = str(e)  # not listening yet
        time.sleep(0.5)
    pytest.fail(
        f"streamlit did not answer /_stcore/health within {timeout:.0f} s ({last}):\n"
        f"{log.read_text()[-3000:]}"
    )


def test_explorer_in_chromium(browser_ws: Path, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.fail(
            "Debian's chromium is missing at /usr/bin/chromium: install it with "
            "`apt-get install -y chromium` (.ci/run does); Playwright's own browsers are not used.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    from recsys.corpus import make_melodies, make_singers, sing

    take = tmp_path / "take.wav"  # a new take by the catalog's third singer, not in the catalog
    sf.write(take, sing(make_singers(6, 0)[2], make_melodies(3, 0)[1], 6.0, 16000, seed=7), 16000)
    ARTIFACTS.mkdir(exist_ok=True)
    port, log = _free_port(), tmp_path / "streamlit.log"
    env = {**os.environ, "RECSYS_DEVICE": "cpu"}
    env.pop("RECSYS_DB_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SCRIPT),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--workspace",
        str(browser_ws),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                page.get_by_text(re.compile(r"^Best match for singer_00")).wait_for(timeout=120_000)

                # Clicking a map point opens that point's singer (read from its hover label).
                points = page.locator(".js-plotly-plot .scatterlayer path.point")
                points.nth(5).wait_for(timeout=60_000)  # the six singers
                page.wait_for_timeout(500)  # let plotly finish laying out
                for i in range(points.count()):
                    box = points.nth(i).bounding_box()
                    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                    page.mouse.move(x, y)
                    label = page.locator(".hoverlayer .hovertext tspan.line").first
                    label.wait_for(timeout=10_000)
                    name = label.text_content().strip()
                    if name != "singer_00":
                        break
                assert re.fullmatch(r"singer_0[1-5]", name), name
                page.mouse.click(x, y)
                page.get_by_text(re.compile(rf"^Best match for {name}:")).wait_for(timeout=30_000)

                # Query by an uploaded recording.
                page.get_by_role("tab", name="Query by song").click()
                page.locator("[data-testid='stFileUploader'] input[type=file]").set_input_files(str(take))
                result = page.get_by_text(re.compile(r"^Best match for take\.wav"))
                result.wait_for(timeout=60_000)
                assert re.search(r"Best match for take\.wav: singer_0\d \(score 0\.\d+", result.inner_text())
                page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
