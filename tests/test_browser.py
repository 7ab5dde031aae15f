"""The explorer in a real browser: `streamlit run app/explorer.py` on a free port, driven by Debian's
chromium through Playwright, on a catalog whose manifest has a column the code never names (`label`):
open a singer from the map, upload a recording, read the ranking, filter by label, and save a
screenshot to test-artifacts/explorer.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
from explorer_helpers import labelled_catalog, singers_with

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
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
    """A new catalog with a `label` column the code never names, registered and embedded by one
    `ingest --embed` job under the demo's models.

    The job fits the explorer's first-page map, so the server only loads it. The song map,
    which the test also opens, is fitted here too: the server then never compiles umap.
    """
    from pipelines.ingest import run_ingest
    from pipelines.runners import LocalRunner
    from recsys.api import Recommender
    from recsys.config import load_settings
    from recsys.projection import FIRST_PAGE_MAPS, fit_default_maps, projection_path

    ws = tmp_path_factory.mktemp("browser-ws")
    shutil.copytree(demo_workspace / "models", ws / "models")
    settings = load_settings(manifest_file=None, workspace=ws, device="cpu")
    summary = run_ingest(labelled_catalog(ws / "corpus"), settings, embed=True, runner=LocalRunner(1))
    assert summary.embedded == 12
    rec = Recommender(settings)
    assert all(projection_path(ws, rec.model_version, *m).is_file() for m in FIRST_PAGE_MAPS)
    fit_default_maps(rec, (("songs", "fused"),))
    return ws


def _map_points(page) -> list[list[str]]:
    """customdata (singer, title, point) of every catalog point of the map (the figure of scatter traces)."""
    return page.evaluate(
        """() => {
            const plots = [...document.querySelectorAll('.js-plotly-plot')];
            const map = plots.find(gd => (gd.data || []).some(t => t.type === 'scatter'));
            if (!map) return [];
            return map.data.filter(t => t.customdata).flatMap(t => Array.from(t.customdata, c => Array.from(c)));
        }"""
    )


def _wait_for_points(page, check, timeout: float = 60.0) -> list[list[str]]:
    """The map's points once `check(points)` holds (Streamlit reruns, then plotly redraws)."""
    deadline, points = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        points = _map_points(page)
        if points and check(points):
            return points
        page.wait_for_timeout(250)
    pytest.fail(f"the map did not show the expected points within {timeout:.0f} s; it shows {points}")


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

    from app.server import streamlit_command, warm
    from recsys.api import Recommender
    from recsys.config import load_settings
    from recsys.corpus import make_melodies, make_singers, sing

    songs = Recommender(load_settings(manifest_file=None, workspace=browser_ws)).songs()
    motown = {s["id"] for s in songs if s["metadata"].get("label") == "Motown"}
    assert len(motown) == 5

    take = tmp_path / "take.wav"  # a new take by the catalog's third singer, not in the catalog
    sf.write(take, sing(make_singers(6, 0)[2], make_melodies(3, 0)[1], 6.0, 16000, seed=7), 16000)
    ARTIFACTS.mkdir(exist_ok=True)
    port, log = _free_port(), tmp_path / "streamlit.log"
    env = {**os.environ, "RECSYS_DEVICE": "cpu"}
    env.pop("RECSYS_DB_URL", None)
    # As app.server.serve starts it: the script health check on, the page run once before any visitor.
    cmd = streamlit_command(["--workspace", str(browser_ws)], port, "127.0.0.1")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc, log)
        assert warm(port) == "ok", log.read_text()[-3000:]
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
                # a calibrated score (recsys.fusion), then the two cosines
                assert re.search(
                    r"Best match for take\.wav: singer_0\d \(score -?\d+\.\d+: timbre 0\.\d+",
                    result.inner_text(),
                )

                # Filter by the catalog's own `label` column (given in its manifest, named nowhere in the code).
                page.locator("[data-testid='stMultiSelect']").filter(has_text="Label").click()
                page.get_by_role("option", name="Motown", exact=True).click()
                page.keyboard.press("Escape")
                wanted = singers_with("Motown")
                _wait_for_points(page, lambda pts: {p[0] for p in pts} == wanted)
                page.get_by_role("tab", name="Catalog").click()
                page.get_by_text(f"({len(motown)} of 12 match the filters)").wait_for(timeout=30_000)
                # On the song map only the Motown songs remain.
                page.get_by_text("songs", exact=True).click()  # the map's "Points" radio
                _wait_for_points(page, lambda pts: {p[2] for p in pts} == {str(i) for i in motown})
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
