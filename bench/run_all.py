"""Run every benchmark script with reduced sizes (what `make bench` runs): within 15 minutes on 2 CPU cores.

    .venv/bin/python bench/run_all.py [--only bench_query bench_index ...] [--full] [--list]

Each script runs in its own process (so peak-memory figures are its own), prints
its tables as it goes, and is stopped at its time limit. The header gives the
commit, machine and date; the summary gives each script's wall time and status, then
one table of the issues' targets the scripts checked (bench/targets.py): the figure
measured in this run, pass or short.
`--full` runs the scripts with their own default (full) sizes and no time limits.
The exit status is 1 when any script failed or ran out of time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import targets

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUDGET_S = 15 * 60


@dataclass(frozen=True)
class Script:
    name: str
    reduced: tuple[str, ...]  # arguments for `make bench`
    limit_s: int  # time limit with the reduced arguments
    note: str
    full: tuple[str, ...] = ()  # arguments for --full (default: none, the script's own full sizes)


SCRIPTS = (
    Script("bench_query", ("--catalog", "10000", "--queries", "30", "--train-songs", "12", "--train-steps", "4"),
           150, "query latency, 3-minute embedding, training time per epoch, peak memory"),
    Script("bench_index", ("--sizes", "10000", "100000", "--kinds", "ivf", "ivfpq", "--nq", "300", "--nprobe", "16", "64",
                           "--pq-nprobe", "48", "--refine", "16"),
           150, "index search latency and recall (HNSW only in full runs: its 100k build is slow)"),
    Script("bench_ingest", ("--long-songs", "2", "--sizes", "300", "--workers", "2"), 120, "ingestion throughput"),
    Script("bench_augment", ("--seconds", "5", "--repeats", "3"), 60, "augmentation speed and error"),
    Script("bench_corpus", ("--singers", "8", "--songs", "4", "--seconds", "15"), 60, "demo-catalog generation"),
    Script("bench_separation", ("--songs", "2", "--seconds", "10"), 60, "accompaniment suppression"),
    Script("bench_separation_retrieval",
           ("--singers", "4", "--songs", "3", "--seconds", "8", "--train-singers", "6", "--train-songs", "3",
            "--epochs", "2", "--steps", "5", "--out", str(Path(tempfile.gettempdir()) / "recsys-bench-sep-retrieval")),
           120, "singer retrieval with accompaniment suppression (2 short epochs)"),
    Script("bench_explorer", ("--workspace", str(Path(tempfile.gettempdir()) / "recsys-bench-explorer-ws"),
                              "--build-demo", "8", "4", "10", "--browser", "--visits", "1", "--interactions", "3"),
           240, "the explorer in chromium: first page, then each interaction (builds a small demo workspace once)",
           ("--workspace", str(Path(tempfile.gettempdir()) / "recsys-bench-explorer-demo-ws"),
            "--build-demo", "24", "8", "30", "--browser", "--visits", "2", "--interactions", "5")),
    Script("bench_melody", ("--singers", "6", "--songs", "3", "--seconds", "10", "--epochs", "1",
                            "--variants", "equivariant", "pitch-ki"), 150, "melody vectors (1 epoch of each TCAE)"),
)


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({e})"


def machine() -> str:
    model = "unknown CPU"
    lscpu = _cmd(["lscpu"])
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run(script: Script, full: bool, env: dict[str, str]) -> tuple[str, float]:
    path = BENCH / f"{script.name}.py"
    args = [sys.executable, str(path), *(script.full if full else script.reduced)]
    print(f"\n=== {script.name}: {script.note}\n$ {' '.join(args[1:])}", flush=True)
    began = time.perf_counter()
    try:
        proc = subprocess.run(args, check=False, cwd=ROOT, env=env, timeout=None if full else script.limit_s)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"stopped at its {script.limit_s} s limit"
    return status, time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=[s.name for s in SCRIPTS], help="run only these scripts")
    ap.add_argument("--full", action="store_true", help="the scripts' own default sizes, no time limits")
    ap.add_argument("--list", action="store_true", help="list the scripts and their reduced arguments")
    args = ap.parse_args()
    scripts = [s for s in SCRIPTS if args.only is None or s.name in args.only]
    if args.list:
        for s in scripts:
            print(f"{s.name:18} {s.limit_s:4d} s  {' '.join(s.reduced)}")
        return 0

    print(f"commit {_cmd(['git', 'rev-parse', '--short', 'HEAD'])}; {machine()}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}")
    targets_file = Path(tempfile.mkdtemp(prefix="recsys-bench-")) / "targets.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           targets.ENV: str(targets_file)}
    summary = []
    began = time.perf_counter()
    for script in scripts:
        if not (BENCH / f"{script.name}.py").exists():
            summary.append((script.name, "absent", 0.0))
            continue
        status, seconds = run(script, args.full, env)
        summary.append((script.name, status, seconds))
    total = time.perf_counter() - began

    print("\n=== summary")
    width = max(len(name) for name, _, _ in summary)
    for name, status, seconds in summary:
        print(f"{name:<{width}}  {seconds:7.1f} s  {status}")
    print(f"{'total':<{width}}  {total:7.1f} s  (budget {BUDGET_S} s{'' if total <= BUDGET_S else ', exceeded'})")
    rows = targets.read(targets_file)
    print(f"\n=== targets ({sum(r['met'] for r in rows)} of {len(rows)} met; "
          f"a reduced run measures smaller sizes, see 'at')")
    print(targets.table(rows) if rows else "no script recorded a target")
    failed = [name for name, status, _ in summary if status not in ("ok", "absent")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
