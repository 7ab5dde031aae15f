"""The issues' targets, checked by the benchmark that measures them and summarised by run_all.

A script calls :func:`check` once per target with what it measured; the line is printed,
and when ``RECSYS_BENCH_TARGETS`` names a file (run_all sets it) it is appended there as
one JSON object, so `make bench` ends with one table: each target, the figure of that run,
pass or short. A figure measured at a reduced size says so in `at`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "RECSYS_BENCH_TARGETS"


def check(script: str, target: str, measured: float, goal: float, unit: str, higher_is_better: bool,
          at: str = "") -> bool:
    """Record one target's figure; True when it meets `goal` (>= goal when higher is better, else <=)."""
    met = measured >= goal if higher_is_better else measured <= goal
    row = {"script": script, "target": target, "measured": measured, "goal": goal, "unit": unit,
           "higher_is_better": higher_is_better, "at": at, "met": met}
    print(f"target: {target}: {_figure(measured, unit)} ({'>=' if higher_is_better else '<='} "
          f"{_figure(goal, unit)}) {'pass' if met else 'SHORT'}{f' [{at}]' if at else ''}", flush=True)
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return met


def read(path: Path) -> list[dict]:
    """The rows the scripts appended (none when the file is missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(rows: list[dict]) -> str:
    """Markdown: target, measured, goal, pass / short, at, script."""
    lines = ["| target | measured | goal | result | at | script |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        sign = ">=" if r["higher_is_better"] else "<="
        lines.append(f"| {r['target']} | {_figure(r['measured'], r['unit'])} | {sign} {_figure(r['goal'], r['unit'])} "
                     f"| {'pass' if r['met'] else 'SHORT'} | {r['at']} | {r['script']} |")
    return "\n".join(lines)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Print the targets a benchmark run recorded (a RECSYS_BENCH_TARGETS file).")
    ap.add_argument("file", type=Path)
    print(table(read(ap.parse_args().file)))


def _figure(value: float, unit: str) -> str:
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return f"{text} {unit}".strip()


if __name__ == "__main__":
    main()
