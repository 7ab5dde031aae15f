"""Generation speed of the synthetic demo catalog (recsys.corpus.generate_corpus).

Target: the default catalog (24 singers x 8 songs x 30 s, 16 kHz) in under a minute on 2 cores.

    .venv/bin/python bench/bench_corpus.py                      # default catalog, 2 workers
    .venv/bin/python bench/bench_corpus.py --workers 1 2 4 --accompaniment
    taskset -c 0,1 .venv/bin/python bench/bench_corpus.py       # pin to 2 cores on a bigger machine

Prints one row per run: singers, songs, seconds of audio, wall time, x real time, and the
CPU seconds the run used (parent + workers), which is less sensitive to a busy machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from recsys.corpus import generate_corpus


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--singers", type=int, default=24)
    parser.add_argument("--songs", type=int, default=8, help="songs per singer")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per song")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--accompaniment", action="store_true")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write here and keep (default: a temp folder)"
    )
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} CPUs visible, {len(os.sched_getaffinity(0))} usable; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'workers':>7} {'singers':>7} {'songs':>6} {'audio s':>8} {'wall s':>7} {'x real':>7} {'cpu s':>7}"
    )
    print(header)
    print("-" * len(header))
    for workers in args.workers:
        out = args.keep or Path(tempfile.mkdtemp(prefix="bench-corpus-"))
        try:
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            generate_corpus(
                out,
                n_singers=args.singers,
                songs_per_singer=args.songs,
                song_seconds=args.seconds,
                sample_rate=args.sample_rate,
                accompaniment=args.accompaniment,
                workers=workers,
            )
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        finally:
            if args.keep is None:
                shutil.rmtree(out, ignore_errors=True)
        songs = args.singers * args.songs
        audio = songs * args.seconds
        print(
            f"{workers:>7} {args.singers:>7} {songs:>6} {audio:>8.0f} {wall:>7.1f} {audio / wall:>7.0f} {cpu:>7.1f}"
        )


if __name__ == "__main__":
    main()
