"""How fast the explorer answers: first load, then each interaction, on a workspace (Streamlit AppTest);
or, with --browser, the first page load a visitor sees in a real browser.

    python bench/bench_explorer.py --workspace demo-workspace [--repeats 3]
    python bench/bench_explorer.py --workspace demo-workspace --browser [--visits 2] [--cli | --no-warm]

Runs app/explorer.py in-process with Streamlit's AppTest (the script as a browser
session would run it, without the network and the browser's drawing), loads the page
once (models, index, projections: cached for later runs), then times each
interaction a user makes: moving the weight slider, changing k, choosing another
singer, switching the map to songs and to another weighting, and a query by catalog
song. The target: every interaction after the first load answers in under a second
on the demo catalog. Prints a table of wall times in ms (median of --repeats runs of
each interaction).

--browser starts the explorer's server on the workspace (app/server.py), runs the
page once there before any visitor (as app.server.serve does; --no-warm: not, as a
plain `streamlit run`; --cli: through `recsys app` itself, timed until it says it is ready),
then opens the page in Debian's chromium (/usr/bin/chromium,
through Playwright) --visits times, each a new session, and times each from the
request to the drawn page: the first singer ranking and the map's points. Target: 5 s
for the first visit after the job that wrote the vectors (which fitted the maps).
With --interactions N, the first visit then makes the AppTest table's interactions in
the page N times each (keyboard on the sliders, clicks on the radio, the select boxes
and their options) and times each from the input to the end of the rerun it caused,
as the page itself reports it (the app root's script state, watched by a
MutationObserver), plus two animation frames for the drawing. Target (issue 18):
300 ms for every interaction.
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
sys.path.insert(0, str(REPO / "bench"))

from recsys.evaluation import format_table

TARGET_MS = 1000.0
FIRST_LOAD_TARGET_MS = 5000.0
BROWSER_INTERACTION_TARGET_MS = 300.0

# Records every change of the app root's script state: the state it left, and when (performance.now()).
# Old values, one per mutation record: a rerun that starts and ends within one observer callback still
# shows as a record whose old value is "running".
WATCH_RUNS = """() => {
  const root = document.querySelector('[data-testid="stApp"]');
  window.__runs = [];
  new MutationObserver(records => {
    const t = performance.now();
    for (const r of records) window.__runs.push([r.oldValue, t]);
  }).observe(root, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
}"""
# Resolves once a rerun has ended after `since` (the state left "running") and two frames were drawn: the
# time then, or null after 30 s.
RUN_ENDED = """async (since) => {
  for (let waited = 0; waited < 30000; waited += 5) {
    if (window.__runs.some(([left, t]) => left === 'running' && t >= since)) {
      await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
      return performance.now();
    }
    await new Promise(r => setTimeout(r, 5));
  }
  return null;
}"""
CHROMIUM = Path("/usr/bin/chromium")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--browser", action="store_true", help="time page loads in chromium instead")
    ap.add_argument("--visits", type=int, default=2, help="with --browser: page loads, each a new session")
    ap.add_argument(
        "--no-warm", action="store_true", help="with --browser: no warm-up run (a plain `streamlit run`)"
    )
    ap.add_argument(
        "--cli",
        action="store_true",
        help="with --browser: start the server as `recsys app` does (app.server.serve), timed to its ready line",
    )
    ap.add_argument("--manifest", type=Path, default=None, help="passed to the explorer")
    ap.add_argument("--interactions", type=int, default=0,
                    help="with --browser: then time each interaction this many times in the first visit's page")
    ap.add_argument("--profile", action="store_true",
                    help="with --interactions: then make each again under the browser's CPU profiler and print "
                         "where its time went (ms by frontend component, style, layout)")
    ap.add_argument("--build-demo", type=float, nargs=3, metavar=("SINGERS", "SONGS", "SECONDS"),
                    help="make the workspace first with `recsys demo` of this size when it has no catalog yet")
    args = ap.parse_args()
    if args.build_demo and not (args.workspace / "catalog.db").exists():
        build_demo(args.workspace.resolve(), *args.build_demo)
    if args.browser:
        extra = ["--manifest", str(args.manifest.resolve())] if args.manifest else []
        if args.cli and args.no_warm:
            ap.error("--cli always warms the page (as `recsys app` does); leave out --no-warm")
        if args.profile and not args.interactions:
            ap.error("--profile profiles the interactions: give --interactions N too")
        browser_loads(args.workspace.resolve(), args.visits, not args.no_warm, extra, args.cli, args.interactions,
                      args.profile)
        return
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
    labels = at.selectbox(key="pick_song").options  # "#id title (singer)"
    songs = [int(label.split()[0][1:]) for label in labels]

    steps: list[tuple[str, Callable[[int], object]]] = [
        ("weight slider", lambda i: at.slider(key="w_timbre").set_value([1.0, 0.0, 0.5][i % 3])),
        ("k", lambda i: at.slider(key="k").set_value([10, 5, 20][i % 3])),
        ("another singer", lambda i: at.selectbox(key="singer").set_value(singers[(i + 1) % len(singers)])),
        ("map: songs", lambda i: at.radio(key="map_what").set_value("songs")),
        ("map: singers", lambda i: at.radio(key="map_what").set_value("singers")),
        (
            "map weighting",
            lambda i: at.radio(key="map_weighting").set_value(["timbre", "melody", "fused"][i % 3]),
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


def build_demo(workspace: Path, singers: float, songs: float, seconds: float) -> None:
    """`recsys demo` of the given size into `workspace` (both encoders trained briefly, the first page's maps)."""
    import subprocess

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "recsys", "--workspace", str(workspace), "--device", "cpu", "demo",
           "--singers", str(int(singers)), "--songs", str(int(songs)), "--seconds", f"{seconds:g}",
           "--timbre-epochs", "2", "--melody-epochs", "1"]  # the page's speed does not depend on training
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`recsys demo` failed:\n{done.stderr[-3000:]}")
    print(f"# workspace {workspace}: `recsys demo` {int(singers)} x {int(songs)} x {seconds:g} s "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)


def wait_for_ready_line(log: Path, proc, timeout: float = 600.0) -> str:
    """Wait for `recsys app`'s ready line in its log; returns what it says of the warm-up run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if " ready on http" in line:
                return line.rsplit("(", 1)[-1].split(";")[0]
        if proc.poll() is not None:
            raise SystemExit(f"`recsys app` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise SystemExit(f"`recsys app` was not ready within {timeout:.0f} s; its log: {log}")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process `root` and its live descendants (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(stat.parent.name)
        parent[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [child for child, ppid in parent.items() if ppid == pid]
    return total


def _script_bucket(url: str, function: str) -> str:
    """A CPU profile node -> what it is part of: a Streamlit frontend chunk by its component's name
    (PlotlyChart, DataFrame, index: the app's core, ...), or the renderer's own work ("(program)": style,
    layout, paint and other native work; "(garbage collector)"; "(idle)")."""
    if not url:
        return function if function.startswith("(") else "(native)"
    name = url.rsplit("/", 1)[-1].split("?")[0]
    return name.split(".")[0] or name


def trace_self_ms(trace: bytes) -> dict[str, float]:
    """A Chrome trace -> self time (ms) per event name on the renderer's main thread, the top 12
    ("v8.*"/"FunctionCall": script; "Paint", "Layout", "UpdateLayoutTree", ...: the rendering)."""
    import json
    from collections import Counter

    events = json.loads(trace)["traceEvents"]
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    spans = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                    if e.get("ph") == "X" and (e["pid"], e["tid"]) in main and e.get("dur")),
                   key=lambda x: (x[0], -x[1]))
    own: Counter[str] = Counter()  # self time: an event's duration less its direct children's
    stack: list[tuple[float, str]] = []  # (end, name) of the events enclosing the current one
    for start, end, name in spans:
        while stack and stack[-1][0] <= start:
            stack.pop()
        if stack:
            own[stack[-1][1]] -= end - start
        own[name] += end - start
        stack.append((end, name))
    return {f"trace: {k}": v / 1e3 for k, v in own.most_common(12)}


def profiled(page, cdp, act: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """Run `act` (returns its wall ms) under the renderer's sampling profiler, a Chrome trace and the
    performance counters: (wall ms, ms per bucket of _script_bucket, the trace's main-thread self time
    per event, and the renderer's style/layout/script/task totals)."""
    from collections import Counter

    browser = page.context.browser
    before = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    browser.start_tracing(page=page, categories=["devtools.timeline", "disabled-by-default-devtools.timeline",
                                                 "v8.execute", "blink", "cc"])
    cdp.send("Profiler.start")
    wall = act()
    profile = cdp.send("Profiler.stop")["profile"]
    spent_trace = trace_self_ms(browser.stop_tracing())
    after = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    bucket = {n["id"]: _script_bucket(n["callFrame"].get("url", ""), n["callFrame"]["functionName"])
              for n in profile["nodes"]}
    spent: Counter[str] = Counter()
    for node, delta_us in zip(profile["samples"], profile["timeDeltas"]):
        spent[bucket[node]] += delta_us / 1e3
    for metric, label in (("RecalcStyleDuration", "total: style"), ("LayoutDuration", "total: layout"),
                          ("ScriptDuration", "total: script"), ("TaskDuration", "total: tasks")):
        spent[label] = 1e3 * (after.get(metric, 0.0) - before.get(metric, 0.0))
    spent.update(spent_trace)
    return wall, dict(spent)


def browser_interactions(page, repeats: int, profile: bool = False) -> list[dict]:
    """Time the AppTest table's interactions in a loaded page: input -> the rerun's end (ms), median of `repeats`.

    Each repeat changes something (a click on what is already chosen reruns nothing): the sliders
    step left and right, the select boxes take the next options, the map's points alternate.
    With `profile`, each interaction is then made `repeats` more times under the renderer's profiler
    (slower: not timed for the target), and the rows carry where its time went (ms per interaction)."""
    import re

    page.wait_for_function(  # the page's first run is over (its widgets were skeletons until then)
        "document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') === 'notRunning'",
        timeout=600_000)
    page.evaluate(WATCH_RUNS)

    def pick(key: str, step: int) -> Callable[[], object]:
        """Open the select box; returns the click on the option `step` places after the chosen one."""
        page.locator(f".st-key-{key} [role='combobox']").click()
        options = page.get_by_role("option")
        options.first.wait_for(timeout=30_000)
        chosen = page.evaluate(
            "() => Array.from(document.querySelectorAll('[role=option]'))"
            ".findIndex(o => o.getAttribute('aria-selected') === 'true')")  # -1: a placeholder, none yet
        target = options.nth((chosen + step) % options.count())
        target.wait_for(timeout=30_000)
        return target.click

    def radio(key: str, label: str) -> Callable[[], object]:
        return page.locator(f".st-key-{key} [data-testid='stRadioOption']").filter(has_text=label).click

    def slide(key: str, i: int) -> Callable[[], object]:
        thumb = page.locator(f".st-key-{key} [aria-valuetext]")
        thumb.focus()
        return lambda: thumb.press("ArrowRight" if i % 2 else "ArrowLeft")

    # Each returns the user's final input (a click or a key), made once the timer has started.
    steps: list[tuple[str, Callable[[int], Callable[[], object]]]] = [
        ("weight slider", lambda i: slide("w_timbre", i)),
        ("k", lambda i: slide("k", i)),
        ("another singer", lambda i: pick("singer", 1)),
        ("map points: songs, singers, songs", lambda i: radio("map_what", "singers" if i % 2 else "songs")),
        ("map weighting", lambda i: radio("map_weighting", ["timbre", "melody", "fused"][i % 3])),
        ("query by catalog song", lambda i: pick("pick_song", 3)),
    ]
    def once(name: str, final_input: Callable[[], object]) -> float:
        since = page.evaluate("performance.now()")
        final_input()
        end = page.evaluate(RUN_ENDED, since)
        if end is None:
            raise SystemExit(f"{name}: no rerun ended within 30 s")
        return end - since

    cdp = None
    if profile:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 200})  # microseconds
    rows = []
    for name, act in steps:
        if name == "query by catalog song":
            page.get_by_role("tab", name=re.compile("Query by song")).click()
        times = []
        for i in range(repeats):
            page.wait_for_timeout(200)  # settle: nothing running
            final_input = act(i)  # e.g. the select box opened, its option found
            times.append(once(name, final_input))
        ms = statistics.median(times)
        ok = "yes" if ms <= BROWSER_INTERACTION_TARGET_MS else "NO"
        row = {"step": f"interaction: {name} (median of {repeats})", "ms": ms, "ok": ok}
        if cdp is not None:
            from collections import Counter

            spent: Counter[str] = Counter()
            for i in range(repeats):
                page.wait_for_timeout(200)
                final_input = act(repeats + i)
                spent.update(profiled(page, cdp, lambda n=name, f=final_input: once(n, f))[1])
            row["profile"] = {k: v / repeats for k, v in spent.items()}
        rows.append(row)
    from targets import check

    slowest = max(rows, key=lambda r: r["ms"])
    check("bench_explorer", "explorer: slowest interaction in the browser", slowest["ms"],
          BROWSER_INTERACTION_TARGET_MS, "ms", False, slowest["step"].removeprefix("interaction: "))
    return rows


def browser_loads(
    workspace: Path, visits: int, warm_first: bool, explorer_args: list[str], cli: bool = False,
    interactions: int = 0,
    profile: bool = False,
) -> None:
    """Start the explorer's server on `workspace` (warmed with `warm_first`; with `cli`, through
    `recsys app`), then time `visits` page loads in chromium."""
    import re
    import signal
    import socket
    import subprocess
    import tempfile

    from playwright.sync_api import sync_playwright

    from app.server import streamlit_command, wait_until_up, warm

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RECSYS_HOME": str(workspace)}
    env.setdefault("RECSYS_DEVICE", "cpu")
    if cli:
        cmd = [
            sys.executable,
            "-m",
            "recsys",
            "--workspace",
            str(workspace),
            "--device",
            env["RECSYS_DEVICE"],
        ]
        cmd += [*explorer_args, "app", "--port", str(port), "--address", "127.0.0.1"]  # --manifest is global
    else:
        cmd = streamlit_command(["--workspace", str(workspace), *explorer_args], port, "127.0.0.1")
    log = Path(tempfile.mkstemp(prefix="bench-explorer-", suffix=".log")[1])
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    rows = []
    try:
        if cli:
            status = wait_for_ready_line(log, proc)
            rows.append(
                {"step": f"`recsys app` until ready ({status})", "ms": 1e3 * (time.perf_counter() - t0)}
            )
        else:
            wait_until_up(port, proc)
            rows.append({"step": "server start (no page yet)", "ms": 1e3 * (time.perf_counter() - t0)})
        if warm_first and not cli:
            t0 = time.perf_counter()
            status = warm(port)
            rows.append(
                {"step": f"warm-up run ({status})", "ms": 1e3 * (time.perf_counter() - t0), "ok": "-"}
            )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            try:
                for visit in range(visits):
                    page = browser.new_page(viewport={"width": 1400, "height": 1600})
                    server_cpu, browser_cpu = tree_cpu_seconds(proc.pid), tree_cpu_seconds(os.getpid())
                    t0 = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                    page.get_by_text(re.compile(r"^Best match for ")).wait_for(timeout=600_000)
                    page.locator(".js-plotly-plot .scatterlayer path.point").first.wait_for(timeout=600_000)
                    ms = 1e3 * (time.perf_counter() - t0)
                    server_cpu = tree_cpu_seconds(proc.pid) - server_cpu
                    browser_cpu = (
                        tree_cpu_seconds(os.getpid()) - browser_cpu - server_cpu
                    )  # the server is ours too
                    status = page.get_by_text(re.compile(r" vectors; map ")).first.inner_text().split("; ")[1]
                    ok = "yes" if ms <= FIRST_LOAD_TARGET_MS else "NO"
                    rows.append(
                        {
                            "step": f"page load {visit + 1}, new session ({status})",
                            "ms": ms,
                            "ok": ok,
                            "server_cpu": server_cpu,
                            "browser_cpu": browser_cpu,
                        }
                    )
                    if visit == 0 and interactions:
                        rows += browser_interactions(page, interactions, profile)
                    page.close()
            finally:
                browser.close()
    finally:
        # `recsys app` stops its streamlit server on Ctrl-C (app.server.serve); streamlit stops on SIGTERM.
        proc.send_signal(signal.SIGINT if cli else signal.SIGTERM)
        proc.wait(timeout=30)
    print(
        f"\nexplorer on {workspace} in chromium{' through `recsys app`' if cli else ''}; server log {log}\n"
    )
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. CPU s: what the server's and the"
    )
    print(
        "browser's processes computed during the load (on an idle machine the load takes at most their sum)\n"
    )
    columns = [
        ("step", "step"),
        ("ms", "wall ms"),
        ("ok", f"<= {FIRST_LOAD_TARGET_MS:g} ms (interactions {BROWSER_INTERACTION_TARGET_MS:g})"),
        ("server_cpu", "server CPU s"),
        ("browser_cpu", "browser CPU s"),
    ]
    print(format_table(rows, columns, 1))
    profiles = [(r["step"].removeprefix("interaction: "), r["profile"]) for r in rows if "profile" in r]
    if profiles:
        print("\nWhere each interaction's time went in the browser (ms, mean of the profiled repeats): the renderer's"
              "\nCPU samples by frontend component (Streamlit's JS chunks) and its style/layout/script totals\n")
        print(profile_table(profiles))
        print("\nThe same interactions' Chrome trace: self time (ms) per event on the renderer's main thread\n")
        print(profile_table(profiles, trace=True))


def profile_table(profiles: list[tuple[str, dict[str, float]]], top: int = 8, trace: bool = False) -> str:
    """One row per interaction, one column per bucket that is among the `top` largest of any interaction
    (`trace`: the trace's events instead of the profiler's buckets)."""
    totals = [k for k in ("total: tasks", "total: script", "total: style", "total: layout")
              if any(k in p for _, p in profiles)] if not trace else []
    ranked: dict[str, float] = {}
    for _, p in profiles:
        for k, v in p.items():
            if not k.startswith("total:") and k != "(idle)" and k.startswith("trace: ") == trace:
                ranked[k] = max(ranked.get(k, 0.0), v)
    buckets = sorted(ranked, key=ranked.get, reverse=True)[:top]
    rows = [{"step": name, **{c: p.get(c, 0.0) for c in totals + buckets}} for name, p in profiles]
    return format_table(rows, [("step", "interaction"), *((c, c) for c in totals + buckets)], 0)


if __name__ == "__main__":
    main()
