"""How fast the explorer answers: first load, then each interaction, on a workspace (Streamlit AppTest).

    python bench/bench_explorer.py --workspace demo-workspace [--repeats 3]

Runs app/explorer.py in-process with Streamlit's AppTest (the script as a browser
session would run it, without the network and the browser's drawing), loads the page
once (models, index, projections: cached for later runs), then times each
interaction a user makes: moving the weight slider, changing k, choosing another
singer, switching the map to songs and to another weighting, and a query by catalog
song. The target (issue 7): every interaction after the first load answers in
under a second on the demo catalog. Prints a table of wall times in ms (median of
--repeats runs of each interaction).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys.evaluation import format_table

TARGET_MS = 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["RECSYS_HOME"] = str(args.workspace.resolve())
    os.environ.setdefault("RECSYS_DEVICE", "cpu")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "explorer.py"), default_timeout=600)
    t0 = time.perf_counter()
    at.run()
    first_load_ms = 1e3 * (time.perf_counter() - t0)
    if at.exception or at.error:
        raise SystemExit(f"the page failed to load: {at.exception or at.error[0].value}")
    singers = at.selectbox(key="singer").options
    songs = at.selectbox(key="pick_song").options

    steps: list[tuple[str, Callable[[int], object]]] = [
        ("weight slider", lambda i: at.slider(key="w_timbre").set_value([1.0, 0.0, 0.5][i % 3])),
        ("k", lambda i: at.slider(key="k").set_value([10, 5, 20][i % 3])),
        ("another singer", lambda i: at.selectbox(key="singer").set_value(singers[(i + 1) % len(singers)])),
        ("map: songs", lambda i: at.radio(key="map_what").set_value("songs")),
        ("map: singers", lambda i: at.radio(key="map_what").set_value("singers")),
        (
            "map weighting",
            lambda i: at.selectbox(key="map_weighting").set_value(["timbre", "melody", "fused"][i % 3]),
        ),
        (
            "query by catalog song",
            lambda i: at.selectbox(key="pick_song").set_value(songs[(3 * i + 1) % len(songs)]),
        ),
    ]
    rows = [{"interaction": "first load (cold caches)", "ms": first_load_ms, "ok": "-"}]
    for name, change in steps:
        times = []
        for i in range(args.repeats):
            change(i)
            t0 = time.perf_counter()
            at.run()
            times.append(1e3 * (time.perf_counter() - t0))
            if at.exception:
                raise SystemExit(f"{name}: {at.exception}")
        ms = statistics.median(times)
        rows.append({"interaction": name, "ms": ms, "ok": "yes" if ms < TARGET_MS else "NO"})
    print(
        f"\nexplorer on {args.workspace} ({len(singers)} singers, {len(songs)} songs); median of {args.repeats}\n"
    )
    print(
        format_table(
            rows, [("interaction", "interaction"), ("ms", "wall ms"), ("ok", f"< {TARGET_MS:g} ms")], 0
        )
    )


if __name__ == "__main__":
    main()
