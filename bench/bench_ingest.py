"""Benchmark the ingestion job (pipelines/ingest.py): throughput on 3-minute songs, and memory vs manifest length.

    python bench/bench_ingest.py [--long-songs 8] [--sizes 1000 10000] [--workers 2] [--cache DIR]

1. Throughput, in seconds of audio per wall-clock second ("x real time"), on
   --long-songs 3-minute songs, for each stage alone and for the whole job:
   decode only (the floor: every file read, mixed to mono, resampled), decode + voiced
   audio + log-mel (the worker stage), the encoders alone (batched, this process), and
   the end-to-end job (hash, decode, features, embed, commit to SQLite, index), run
   in process with its worker pool already started (the cold start is reported apart).
2. Memory: the job as a subprocess (`recsys ingest --embed`) on manifests of --sizes
   distinct short files (1.5 s tones with a noise-modulated envelope, generated here),
   sampling the resident memory of the whole process tree (main + workers; shared pages
   count once per process, so the sum overstates) every 0.2 s. Flat memory means the
   peak does not grow with the manifest.

The encoders are untrained (random weights, the configured shapes): speed and memory
do not depend on what the weights are. The 3-minute songs are 30 s renders of the demo
corpus repeated six times at different gains (synthesis costs about 0.1 s of CPU per
second of audio; repetition does not change the decoding or encoding work).
Prints Markdown tables (pasted into docs/benchmarks.md). The defaults (what `make
bench` runs) take about 2 minutes on 2 cores; the documented figures,
`--long-songs 8 --sizes 1000 10000 --batch-size 64`, about 6.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.ingest import run_ingest
from pipelines.runners import LocalRunner, init_worker, prepare_and_embed
from recsys import catalog
from recsys.config import Settings, load_settings

LONG_SECONDS = 180.0
SHORT_SECONDS = 1.5
SR = 16000


# ---------------------------------------------------------------------------- data


def make_long_songs(out: Path, n: int) -> list[Path]:
    """n distinct 3-minute 16 kHz songs: a 30 s demo render repeated 6 times at varying gain."""
    from recsys.corpus import generate_corpus

    out.mkdir(parents=True, exist_ok=True)
    songs = sorted(out.glob("long_*.wav"))
    if len(songs) >= n:
        return songs[:n]
    renders = out / "renders"
    manifest = generate_corpus(renders, n_singers=n, songs_per_singer=1, song_seconds=LONG_SECONDS / 6, seed=7,
                               sample_rate=SR)
    for i, path in enumerate(sorted(manifest.parent.glob("*/*.wav"))):
        x, sr = sf.read(path, dtype="float32")
        gains = 0.6 + 0.08 * np.arange(6)
        sf.write(out / f"long_{i:03d}.wav", np.concatenate([g * x for g in gains]), sr, subtype="PCM_16")
    shutil.rmtree(renders)
    return sorted(out.glob("long_*.wav"))[:n]


def make_short_manifest(out: Path, n: int) -> Path:
    """A manifest of n distinct 1.5 s files: harmonic tones with a noise-modulated envelope."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / f"manifest_{n}.csv"
    if manifest.exists():
        return manifest
    t = np.arange(int(SHORT_SECONDS * SR)) / SR
    rows = ["path,singer,title"]
    for i in range(n):
        path = out / f"{i // 1000:03d}" / f"tone_{i:05d}.wav"
        if not path.exists():
            rng = np.random.default_rng(i)
            f0 = 110.0 * 2 ** (rng.uniform(0, 3))
            noise = np.cumsum(rng.standard_normal(t.size + 800))
            envelope = 0.7 + 2.0 * (noise[800:] - noise[:-800]) / 800  # 50 ms moving average of noise
            wave = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 6)) * np.clip(envelope, 0.4, 1.0)
            wave = (0.2 * wave + 0.003 * rng.standard_normal(t.size)).astype(np.float32)
            path.parent.mkdir(exist_ok=True)
            sf.write(path, wave, SR, subtype="PCM_16")
        rows.append(f"{path},singer_{i % 50:02d},tone {i}")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def untrained_workspace(ws: Path, settings: Settings) -> None:
    """Publish randomly initialised encoders of the configured shapes (speed does not depend on weights)."""
    import torch

    from recsys.models.melody import build_melody_model, melody_model_config
    from recsys.models.timbre import TimbreEncoder
    from recsys.training.checkpoint import save_version
    from recsys.training.contrastive import model_config_for
    from recsys.training.tcae import meta_config_for

    torch.manual_seed(0)
    t_cfg = model_config_for(settings.timbre, settings.features)
    save_version(ws, "timbre", TimbreEncoder(t_cfg).state_dict(), t_cfg.to_dict(), "bench")
    m_cfg = melody_model_config(settings.melody, settings.features, settings.audio.sample_rate)
    save_version(ws, "melody", build_melody_model(m_cfg).state_dict(), meta_config_for(m_cfg, settings.melody), "bench")


def settings_for(ws: Path) -> Settings:
    ws.mkdir(parents=True, exist_ok=True)
    return load_settings(workspace=ws, device="cpu")


# ---------------------------------------------------------------------------- throughput


def _decode_only(path: str, audio_cfg) -> float:
    import torch

    from recsys.audio import iter_mono_blocks

    torch.set_num_threads(1)
    n = sum(block.numel() for block in iter_mono_blocks(path, audio_cfg))
    return n / audio_cfg.sample_rate


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ray_throughput(files: list[Path], workdir: Path, batch_size: int) -> list[tuple[str, float, float]]:
    """The same end-to-end job on Ray Data (pipelines.runners.RayRunner) over a local Ray of this machine's
    cores: started and warmed by a first job, then timed on a new catalog."""
    from pipelines.runners import RayRunner

    ws = workdir / "ws-ray"
    settings = settings_for(ws)
    shutil.copytree(workdir / "ws-long" / "models", ws / "models")
    warm_ws = workdir / "ws-ray-warm"
    warm_settings = settings_for(warm_ws)
    shutil.copytree(ws / "models", warm_ws / "models")
    manifest, warm = workdir / "long.csv", workdir / "warm.csv"
    audio_s = sum(sf.info(str(f)).duration for f in files)
    runner = RayRunner(init_kwargs={"num_cpus": os.cpu_count(), "include_dashboard": False})
    try:
        start, _ = _timed(lambda: run_ingest(warm, warm_settings, embed=True, runner=runner, batch_size=batch_size,
                                             fit_maps=False))
        catalog.open_catalog(settings.database_url)
        wall, summary = _timed(lambda: run_ingest(manifest, settings, embed=True, runner=runner,
                                                  batch_size=batch_size, fit_maps=False))
    finally:
        runner.close()
    assert summary.embedded == len(files), summary.as_dict()
    warm_paths = {line for line in warm.read_text().splitlines()[1:] if line}
    warm_s = sum(sf.info(p).duration for p in warm_paths)
    return [(f"end-to-end job on Ray Data, local Ray of {os.cpu_count()} CPUs, started", audio_s, wall),
            (f"  Ray start + the warm-up job ({len(warm_paths)} songs)", warm_s, start)]


def throughput(files: list[Path], workdir: Path, workers: int, batch_size: int) -> list[tuple[str, float, float]]:
    """(stage, audio seconds, wall seconds) for each stage on the long songs."""
    from recsys.api import Recommender
    from recsys.ingest import prepare_file
    from recsys.manifest import ManifestEntry

    ws = workdir / "ws-long"
    settings = settings_for(ws)
    untrained_workspace(ws, settings)
    audio_s = sum(sf.info(str(f)).duration for f in files)
    rows = []
    embedder = Recommender(settings).embedder
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
        list(pool.map(_decode_only, [str(files[0])] * workers, [settings.audio] * workers))  # warm up
        wall, _ = _timed(lambda: list(pool.map(_decode_only, map(str, files), [settings.audio] * len(files))))
        rows.append(("decode only (the floor)", audio_s, wall))
        entries = [ManifestEntry(path=f) for f in files]
        n = len(files)
        mel_only, mel_and_pitch = [frozenset({"mel"})] * n, [embedder.needs] * n  # what the models read
        wall, prepared = _timed(lambda: list(pool.map(
            prepare_file, entries, [settings.audio] * n, [settings.features] * n, [None] * n, mel_only)))
        rows.append(("decode + voiced audio + log-mel", audio_s, wall))
        wall, prepared = _timed(lambda: list(pool.map(
            prepare_file, entries, [settings.audio] * n, [settings.features] * n, [None] * n, mel_and_pitch)))
        rows.append(("... + waveform pitch (the features the job computes)", audio_s, wall))
        embed_args = [[a] * n for a in (settings.audio, settings.features, None, embedder.needs, "bench",
                                        pickle.dumps(embedder))]
        list(pool.map(prepare_and_embed, entries[:workers], *[a[:workers] for a in embed_args]))  # warm up
        wall, _ = _timed(lambda: list(pool.map(prepare_and_embed, entries, *embed_args)))
        rows.append(("... + both encoders in the workers (what the job runs on CPU)", audio_s, wall))
    import torch

    threads = LocalRunner(workers).encoder_threads  # what the job's encoders use beside the workers
    torch.set_num_threads(threads)
    feats = [p.features() for p in prepared]
    embedder.embed_features(feats[:1])  # warm up
    wall, _ = _timed(lambda: [embedder.embed_features(feats[i:i + batch_size])
                              for i in range(0, len(feats), batch_size)])
    rows.append((f"encoders only (batched, {threads} thread{'s' if threads > 1 else ''})", audio_s, wall))

    manifest = workdir / "long.csv"
    manifest.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    warm_ws = workdir / "ws-warm"
    warm_settings = settings_for(warm_ws)
    shutil.copytree(ws / "models", warm_ws / "models")
    warm = workdir / "warm.csv"  # one song per worker, so that every worker has run its stages once
    warm_files = [files[i % len(files)] for i in range(workers)]
    warm.write_text("path\n" + "\n".join(map(str, warm_files)) + "\n")
    runner = LocalRunner(workers)
    # fit_maps=False: `recsys ingest --embed` starts the explorer's maps in a detached process and returns
    # (pipelines/maps.py); their fit is timed apart below.
    try:
        cold, _ = _timed(lambda: run_ingest(warm, warm_settings, embed=True, runner=runner, batch_size=batch_size,
                                            fit_maps=False))
        catalog.open_catalog(settings.database_url)  # the schema exists, as for any job but the first
        wall, summary = _timed(lambda: run_ingest(manifest, settings, embed=True, runner=runner,
                                                  batch_size=batch_size, fit_maps=False))
        again, rerun = _timed(lambda: run_ingest(manifest, settings, embed=True, runner=runner,
                                                 batch_size=batch_size, fit_maps=False))
    finally:
        runner.close()
    from recsys.projection import fit_default_maps

    maps_s, _ = _timed(lambda: fit_default_maps(Recommender(settings)))
    assert summary.ingested == len(files) and summary.embedded == len(files), summary.as_dict()
    assert rerun.skipped == len(files) and rerun.audio_seconds == 0, rerun.as_dict()
    rows.append(("end-to-end job, worker pool started", audio_s, wall))
    rows.append(("  the same job again: all present, nothing decoded", audio_s, again))
    rows.append((f"  cold start: new pool + {workers} song{'s' if workers > 1 else ''} (one a worker) + new catalog",
                 sum(sf.info(str(f)).duration for f in set(warm_files)), cold))
    rows.append(("  then the explorer's maps (UMAP, numba compile; detached, not waited for)", audio_s, maps_s))
    return rows


# ---------------------------------------------------------------------------- memory


def _status_mb(pid: int, path: str, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass  # the process ended between listing and reading: it holds no memory
    return 0.0


def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            out += kids
            stack += kids
    return out


def tree_memory_mb(pid: int) -> tuple[float, float, float]:
    """(RSS of pid, RSS summed over pid and its descendants, PSS summed likewise) in MB.

    PSS splits each shared page among the processes mapping it (torch's libraries are
    shared by the main process and its workers), so the PSS sum is what the job costs the
    machine; the RSS sum counts shared pages once per process.
    """
    tree = [pid, *_descendants(pid)]
    rss = [_status_mb(p, "status", "VmRSS:") for p in tree]
    pss = [_status_mb(p, "smaps_rollup", "Pss:") for p in tree]
    return rss[0], sum(rss), sum(pss)


def memory_run(manifest: Path, n: int, workdir: Path, workers: int, batch_size: int) -> dict:
    ws = workdir / f"ws-mem-{n}"
    shutil.rmtree(ws, ignore_errors=True)
    settings = settings_for(ws)
    untrained_workspace(ws, settings)
    cmd = [sys.executable, "-m", "recsys", "--workspace", str(ws), "--device", "cpu", "ingest", str(manifest),
           "--embed", "--workers", str(workers), "--batch-size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    peak_main = peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        own, rss, pss = tree_memory_mb(proc.pid)
        peak_main, peak_rss, peak_pss = max(peak_main, own), max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0 or f"ingested {n} songs" not in out:
        raise RuntimeError(f"job on {manifest} failed (rc {proc.returncode}): {out}")
    return {"n": n, "wall": wall, "peak_main": peak_main, "peak_rss": peak_rss, "peak_pss": peak_pss}


# ---------------------------------------------------------------------------- main


def check_targets(rows: list[tuple[str, float, float]], at: str) -> None:
    """Issue 18's ingest targets: the end-to-end job at >= 1000x real time, and within 1.5x of the stages it runs
    (decode, features and both encoders in the worker processes) measured alone."""
    from targets import check

    wall = {stage: w for stage, _, w in rows}
    audio_s = rows[0][1]
    job = wall["end-to-end job, worker pool started"]
    stages = wall["... + both encoders in the workers (what the job runs on CPU)"]
    check("bench_ingest", "ingest --embed end to end", audio_s / job, 1000.0, "x real time", True, at)
    check("bench_ingest", "the job's wall time / the sum of its stages alone", job / stages, 1.5, "x", False, at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-songs", type=int, default=3, help="3-minute songs for the throughput table")
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 500],
                        help="manifest lengths for the memory table (none: skip it)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray", action="store_true", help="also run the end-to-end job on a local Ray (Ray Data)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-ingest",
                        help="generated audio is kept here between runs")
    args = parser.parse_args()

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        files = make_long_songs(args.cache / "long", args.long_songs)
        print(f"# {len(files)} songs of {LONG_SECONDS:.0f} s ready in {time.perf_counter() - t0:.1f} s")
        rows = throughput(files, workdir, args.workers, args.batch_size)
        if args.ray:
            rows += ray_throughput(files, workdir, args.batch_size)
        print(f"\n{len(files)} songs x {LONG_SECONDS:.0f} s, {args.workers} worker processes, "
              f"batch {args.batch_size}\n")
        print("| stage | audio s | wall s | x real time |")
        print("|---|---:|---:|---:|")
        for stage, audio_s, wall in rows:
            print(f"| {stage} | {audio_s:.0f} | {wall:.2f} | {audio_s / wall:.0f}x |")
        check_targets(rows, f"{len(files)} songs x {LONG_SECONDS:.0f} s, {args.workers} workers")

        results = []
        if not args.sizes:
            return
        for n in args.sizes:
            t0 = time.perf_counter()
            manifest = make_short_manifest(args.cache / "short", n)
            print(f"# manifest of {n} files ready in {time.perf_counter() - t0:.1f} s", flush=True)
            results.append(memory_run(manifest, n, workdir, args.workers, args.batch_size))
        print(f"\nmemory: `recsys ingest --embed` on n distinct {SHORT_SECONDS} s files, {args.workers} workers, "
              f"batch {args.batch_size}\n")
        print("| files | wall s | files/s | peak RSS main MB | peak RSS sum, main + workers MB | "
              "peak PSS sum MB |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['n']:,} | {r['wall']:.1f} | {r['n'] / r['wall']:.0f} | {r['peak_main']:.0f} | "
                  f"{r['peak_rss']:.0f} | {r['peak_pss']:.0f} |")


if __name__ == "__main__":
    main()
