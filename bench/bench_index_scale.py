"""Simulate the index of a 10-million-song catalog: the default ivfpq built in chunks from synthetic vectors.

    python bench/bench_index_scale.py [--n 10000000] [--chunk 500000] [--nq 300] [--nprobe 48 64 96 128]

The vectors come from the index tests' catalog model (tests/index_helpers.py, genres ->
singers -> songs, 16 songs a singer, the product's fused dimension) drawn a chunk at a
time, so the catalog never exists as one float32 array (10M x 414 would be 16.6 GB).
The index is what `kind: auto` builds past `ivfpq_min` with the default IndexConfig
(nlist about sqrt(n), trained on a sample of the first chunk, which is an iid draw of
the catalog), then filled chunk by chunk. The exact top-10 of each query is kept
across the same chunks (faiss flat search per chunk, merged), so recall is against
exact search over all n.

Reports: build time (training, adding), file size and the resident memory of a fresh
process that loads the saved index (what a search server holds), save and load times,
single-query latency p50/p99 (1 search thread) and recall@10 for each --nprobe, and
the time to remove and re-add 1000 songs then search once. Prints one Markdown table
(docs/scaling.md). 10M takes about 15 minutes on 2 cores and peaks near 12 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_index import LOAD_AND_MEASURE, K, fused_dim, latency_ms
from index_helpers import SyntheticCatalog, recall_at_k

from recsys.config import IndexConfig
from recsys.index import IVFPQ_LISTS_PER_SQRT_N, VectorIndex, default_nlist, new_index

UPDATE_SONGS = 1000


def merge_top(D: np.ndarray, I: np.ndarray, D_new: np.ndarray, I_new: np.ndarray, k: int) -> tuple:
    """The best k of two (nq, k) result sets (inner product: higher first)."""
    D_all, I_all = np.concatenate([D, D_new], axis=1), np.concatenate([I, I_new], axis=1)
    top = np.argsort(-D_all, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D_all, top, axis=1), np.take_along_axis(I_all, top, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--nq", type=int, default=300)
    parser.add_argument("--d", type=int, help="vector size (default: the fused size under the default Settings)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[48, 64, 96, 128])
    parser.add_argument("--refine", type=int, default=IndexConfig().refine_factor)
    parser.add_argument("--nlist", type=int, help="IVF lists (default: about sqrt(n), as kind=auto builds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    d = args.d or fused_dim()
    n, chunk = args.n, min(args.chunk, args.n)
    cfg = IndexConfig(kind="ivfpq", nlist=args.nlist or default_nlist(n, IVFPQ_LISTS_PER_SQRT_N), use_gpu=False)
    threads = os.cpu_count() or 1
    print(f"# {platform.processor() or platform.machine()}, {threads} cores, faiss {faiss.__version__}; "
          f"n={n:,} d={d} chunk={chunk:,} nlist={cfg.nlist} pq_search_dims={cfg.pq_search_dims} "
          f"pq_dims={cfg.pq_dims} refine_factor={args.refine}", flush=True)

    catalog = SyntheticCatalog(n, d, args.seed)
    xq = catalog.draw(args.nq)
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    first = catalog.draw(chunk)
    draw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = VectorIndex(new_index("ivfpq", first, cfg, args.seed))
    train_s = time.perf_counter() - t0
    D_ref = np.full((args.nq, K), -np.inf, np.float32)
    I_ref = np.full((args.nq, K), -1, np.int64)
    add_s = exact_s = 0.0
    start = 0
    xb = first
    kept = None  # the first UPDATE_SONGS vectors, for the update timing
    while True:
        ids = np.arange(start, start + len(xb), dtype=np.int64)
        if kept is None:
            kept = xb[:UPDATE_SONGS].copy()
        t0 = time.perf_counter()
        index.add(ids, xb)
        add_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(d)
        flat.add(xb)
        D, I = flat.search(xq, K)
        D_ref, I_ref = merge_top(D_ref, I_ref, D, I + start, K)
        del flat
        exact_s += time.perf_counter() - t0
        start += len(xb)
        print(f"  {start:,} songs: adding {add_s:.0f} s so far, exact reference {exact_s:.0f} s", flush=True)
        if start >= n:
            break
        t0 = time.perf_counter()
        xb = catalog.draw(min(chunk, n - start))
        draw_s += time.perf_counter() - t0
    del xb

    faiss.omp_set_num_threads(1)
    rows = []
    for nprobe in args.nprobe:
        index.nprobe, index.refine_factor = nprobe, args.refine
        p50, p99, cpu, I = latency_ms(index, xq)
        rows.append((nprobe, p50, p99, cpu, recall_at_k(I, I_ref, K)))
        print(f"  nprobe={nprobe}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, recall@10 {rows[-1][-1]:.3f}", flush=True)
    faiss.omp_set_num_threads(threads)
    update_ids = np.arange(UPDATE_SONGS, dtype=np.int64)
    u0 = time.perf_counter()
    index.remove(update_ids)
    u1 = time.perf_counter()
    index.add(update_ids, kept)
    u2 = time.perf_counter()
    index.search(xq[:1], K)
    u3 = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-index-scale-") as tmp:
        t0 = time.perf_counter()
        index.save(tmp, "bench", "bench")
        save_s = time.perf_counter() - t0
        file_bytes = (Path(tmp) / "index.faiss").stat().st_size
        del index
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, tmp, str(ROOT)], check=True,
                             capture_output=True, text=True).stdout
        load_s = time.perf_counter() - t0  # includes the child's start and imports (about 1 s)
    resident = int(out.split()[-1])

    print()
    print(f"n={n:,}, d={d}, ivfpq nlist={cfg.nlist} pca={cfg.pq_search_dims} M={cfg.pq_search_dims // cfg.pq_dims}x4b "
          f"rf={args.refine}; {args.nq} queries, k={K}, recall against exact search over all n")
    print()
    print("| figure | value |")
    print("|---|---:|")
    print(f"| vectors drawn (synthetic, not part of the index cost) | {draw_s:.0f} s |")
    print(f"| training (PCA, {cfg.nlist} lists, PQ codebooks, 8-bit ranges) | {train_s:.0f} s |")
    print(f"| adding {n:,} vectors | {add_s:.0f} s ({n / add_s:,.0f} a second) |")
    print(f"| file | {file_bytes / 1e9:.2f} GB ({file_bytes / n:.0f} B a song) |")
    print(f"| resident once loaded by a fresh process | {resident / 1e9:.2f} GB ({resident / n:.0f} B a song) |")
    print(f"| save / load (load includes a process start) | {save_s:.1f} s / {load_s:.1f} s |")
    print(f"| remove {UPDATE_SONGS} songs / add them back / the next search | {u1 - u0:.3f} s / {u2 - u1:.3f} s / "
          f"{(u3 - u2) * 1e3:.0f} ms |")
    print()
    print("| nprobe | p50 ms | p99 ms | CPU p50 ms | recall@10 |")
    print("|---:|---:|---:|---:|---:|")
    for nprobe, p50, p99, cpu, recall in rows:
        print(f"| {nprobe} | {p50:.3f} | {p99:.3f} | {cpu:.3f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
