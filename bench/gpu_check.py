"""The GPU path in one run: CUDA tests, both encoders trained on CUDA, embedding and FAISS speed CPU vs GPU.

    python bench/gpu_check.py              # on a CUDA machine: every row
    python bench/gpu_check.py --quick      # small sizes (what the test suite runs)

Prints one table. On a machine without CUDA it says so in one line, prints the CPU rows
and exits 0. FAISS runs on the GPU only where faiss-gpu is installed (README, "GPU").
Vectors for the search rows are synthetic unit rows of the product's index dimension
(timbre + melody), so the figures do not depend on a trained catalog.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CUDA_TESTS = ("tests/test_gpu_paths.py", "tests/test_index_gpu.py", "tests/test_features.py", "tests/test_audio.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Small sizes everywhere (seconds, not minutes).")
    p.add_argument("--vectors", type=int, default=1_000_000, help="Synthetic vectors in the FAISS rows.")
    p.add_argument("--queries", type=int, default=1000, help="Queries per FAISS search row.")
    p.add_argument("--songs", type=int, default=64, help="Songs per embedding-throughput row.")
    p.add_argument("--epochs", type=int, default=3, help="Epochs of each encoder in the training rows.")
    p.add_argument("--skip-tests", action="store_true", help="Do not run the CUDA tests.")
    return p.parse_args(argv)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, check: str, cpu: str = "", cuda: str = "", note: str = "") -> None:
        self.rows.append((check, cpu, cuda, note))

    def print(self) -> None:
        head = ("check", "cpu", "cuda", "note")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        for r in [head, tuple("-" * w for w in widths), *self.rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    out, began = None, time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - began) / repeat, out


def cuda_tests(table: Table) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                           *CUDA_TESTS], cwd=ROOT, capture_output=True, text=True, check=False)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    table.add("CUDA tests (pytest -k cuda)", "", "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}",
              last)


def demo_songs(settings, n_singers: int, songs_per_singer: int, seconds: float, tmp: Path):
    from recsys.corpus import generate_corpus
    from recsys.studies.catalog import load_labelled_catalog

    manifest = generate_corpus(tmp / "demo", n_singers, songs_per_singer, seconds, seed=0,
                               sample_rate=settings.audio.sample_rate, workers=1)
    return load_labelled_catalog(manifest, settings.audio, settings.features)


def train_rows(table: Table, settings, songs, epochs: int, tmp: Path) -> None:
    import torch

    from recsys.training.common import MixedPrecision
    from recsys.training.contrastive import train_timbre
    from recsys.training.tcae import train_melody

    training = [s.training_song() for s in songs]
    amp = MixedPrecision(torch.device("cuda"))
    sr = settings.audio.sample_rate
    for kind, train, cfg in (("timbre", train_timbre, settings.timbre), ("melody", train_melody, settings.melody)):
        cfg = cfg.model_copy(update={"epochs": epochs})
        began = time.perf_counter()
        result = train(training, cfg, settings.features, sr, tmp / kind, device="cuda", resume=False)
        seconds = time.perf_counter() - began
        last = result.history[-1]
        metric = f"p@1 {last['p_at_1']:.2f}" if kind == "timbre" else f"valid {last['valid_loss']:.4f}"
        table.add(f"train {kind}: {len(training)} songs x {epochs} epochs", "", f"{seconds:.1f} s",
                  f"autocast {amp.dtype}, {metric}")


def sung_tones(settings, n: int, seconds: float) -> list:
    """`n` distinct synthetic voiced waves (harmonic tones with vibrato) -> the features both encoders read."""
    import torch

    from recsys.encoders import melody_encoder, timbre_encoder
    from recsys.features import wave_features
    from recsys.studies.trainers import untrained_encoders

    t_model, m_model = untrained_encoders(settings)
    needs = timbre_encoder(t_model).needs | melody_encoder(m_model).needs
    sr = settings.audio.sample_rate
    t = torch.arange(int(seconds * sr)) / sr
    out = []
    for i in range(n):
        f0 = 160.0 * 2 ** ((i % 12) / 12) * (1 + 0.01 * torch.sin(2 * torch.pi * 5.5 * t))
        phase = 2 * torch.pi * torch.cumsum(f0, 0) / sr
        wave = sum(torch.sin(k * phase) / k for k in range(1, 8)) * 0.2
        out.append(wave_features(wave.float(), needs, settings.audio, settings.features))
    return out


def embed_rows(table: Table, settings, n: int, seconds: float, cuda: bool) -> None:
    import numpy as np
    import torch

    from recsys.encoders import melody_encoder, timbre_encoder
    from recsys.studies.trainers import untrained_encoders

    feats = sung_tones(settings, n, seconds)
    t_model, m_model = untrained_encoders(settings)
    enc = {"timbre": timbre_encoder(t_model), "melody": melody_encoder(m_model)}
    found: dict[str, dict[str, object]] = {}
    for device in ["cpu", *(["cuda"] if cuda else [])]:
        for name, e in enc.items():
            e.to(device)
            e.embed_songs(feats[:2])  # warm-up (CUDA context, cuDNN plans)
            if device == "cuda":
                torch.cuda.synchronize()

            def run(e=e, device=device):
                out = e.embed_songs(feats)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out.cpu().numpy()

            took, vectors = _timed(run)
            found.setdefault(name, {})[device] = (n / took, vectors)
    for name, by_device in found.items():
        cpu_rate, cpu_v = by_device["cpu"]
        row = [f"{cpu_rate:.1f} songs/s"]
        note = f"{n} songs of {seconds:.0f} s, features ready"
        if "cuda" in by_device:
            rate, v = by_device["cuda"]
            row.append(f"{rate:.1f} songs/s")
            note += f"; x{rate / cpu_rate:.1f}, max |cuda - cpu| {float(np.abs(v - cpu_v).max()):.1e}"
        else:
            row.append("")
        table.add(f"embed {name} (dim {enc[name].dim})", *row, note=note)


def faiss_rows(table: Table, n: int, nq: int, dim: int, gpu: bool) -> None:
    import numpy as np

    from recsys.config import IndexConfig
    from recsys.index import VectorIndex

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, nq, replace=False)] + 0.05 * rng.standard_normal((nq, dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    nlist = max(16, min(int(4 * np.sqrt(n)), n // 40))  # >= 40 training points a list
    for kind, cfg in (("flat", IndexConfig(kind="flat", exact_max=n)),
                      ("ivf", IndexConfig(kind="ivf", nlist=nlist, nprobe=32))):
        build_s, cpu = _timed(lambda cfg=cfg: VectorIndex.build(ids, xb, cfg.model_copy(update={"use_gpu": False})))
        cpu_s, (_, cpu_i) = _timed(lambda cpu=cpu: cpu.search(xq, 10))
        row = [f"{nq / cpu_s:,.0f} q/s"]
        note = f"{n:,} x {dim}, k=10, build {build_s:.1f} s" + (f", nlist {nlist} nprobe 32" if kind == "ivf" else "")
        if gpu:
            index = VectorIndex.build(ids, xb, cfg.model_copy(update={"use_gpu": True}))
            clone_s, _ = _timed(lambda index=index: index.search(xq[:1], 10))  # first search clones to the GPU
            gpu_s, (_, gpu_i) = _timed(lambda index=index: index.search(xq, 10), repeat=3)
            same = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_i, gpu_i)]))
            row.append(f"{nq / gpu_s:,.0f} q/s" if index.on_gpu else "not on GPU")
            note += f"; clone {clone_s:.1f} s, x{cpu_s / gpu_s:.1f}, top-10 overlap with CPU {same:.3f}"
        else:
            row.append("")
        table.add(f"FAISS {kind} search", *row, note=note)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.vectors, args.queries, args.songs, args.epochs = min(args.vectors, 5000), min(args.queries, 50), \
            min(args.songs, 4), min(args.epochs, 1)
    import faiss
    import torch

    from recsys.config import load_settings
    from recsys.encoders import melody_encoder, timbre_encoder
    from recsys.index.gpu import gpu_available
    from recsys.studies.trainers import untrained_encoders

    cuda = torch.cuda.is_available()
    faiss_gpu = gpu_available()
    table = Table()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    table.add("machine", f"torch {torch.__version__}", name,
              f"faiss {faiss.__version__} ({'GPU build' if hasattr(faiss, 'StandardGpuResources') else 'CPU build'})")
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(workspace=Path(tmp) / "ws")
        t, m = untrained_encoders(settings)
        dim = timbre_encoder(t).dim + melody_encoder(m).dim  # the index holds both vectors side by side
        if cuda and not args.skip_tests:
            cuda_tests(table)
        if cuda:
            songs = demo_songs(settings, *((2, 2, 4.0) if args.quick else (6, 4, 20.0)), Path(tmp))
            train_rows(table, settings, songs, args.epochs, Path(tmp))
        embed_rows(table, settings, args.songs, 4.0 if args.quick else 30.0, cuda)
        faiss_rows(table, args.vectors, args.queries, dim, faiss_gpu and cuda)
    table.print()
    if not cuda:
        print("no CUDA device here: only the CPU rows were measured; run this again on a CUDA machine")
    elif not faiss_gpu:
        print("faiss has no GPU support here (faiss-cpu installed): the FAISS cuda column is empty; see README, GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
