"""Benchmark the catalog's write rate and size per song on SQLite and PostgreSQL.

    python bench/bench_catalog.py [--songs 20000] [--batch 64] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

What the ingest job writes per batch, through the same code (recsys.ingest.commit_batch):
a song row and its timbre and melody vectors (the default shapes, float32), one
transaction per batch of --batch songs. Synthetic rows, no audio: this is the
database's share of an ingest, measured alone. Reports songs committed per second,
seconds per batch, the rate of reading every vector back (catalog.pair_vectors, what the
job's index check and an index rebuild read), and the bytes a song takes (SQLite: the file; PostgreSQL: tables
and indexes of a fresh schema, from pg_total_relation_size), beside the vectors'
own bytes. The PostgreSQL run uses a throw-away schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_index import fused_dim

from recsys import catalog
from recsys.config import Settings
from recsys.ingest import AnalysedSong, commit_batch
from recsys.manifest import ManifestEntry


def songs(n: int, singers: int) -> list[AnalysedSong]:
    return [
        AnalysedSong(
            entry=ManifestEntry(path=Path(f"/catalog/singer-{i % singers:06d}/song-{i:08d}.flac"),
                                singer=f"singer-{i % singers:06d}", title=f"Song {i}"),
            content_hash=hashlib.sha256(str(i).encode()).hexdigest(),
            duration_s=210.0, sample_rate=44100, channels=2, format="FLAC", n_voiced_chunks=40,
        )
        for i in range(n)
    ]


def write(url: str, rows: list[AnalysedSong], batch: int, dims: tuple[int, int]) -> tuple[float, float]:
    """Commit `rows` with random unit vectors in batches, then read every vector back as the index
    check does (catalog.pair_vectors); returns the wall seconds of the writes and of the read."""
    sessions = catalog.open_catalog(url)
    rng = np.random.default_rng(0)
    with catalog.session_scope(sessions) as s:
        models = {kind: catalog.register_model_version(s, kind, f"bench-{kind}", {}, "bench")
                  for kind in ("timbre", "melody")}
        run = catalog.start_run(s, "bench", {})
        s.expunge_all()
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        t = rng.standard_normal((len(part), dims[0]), dtype=np.float32)
        m = rng.standard_normal((len(part), dims[1]), dtype=np.float32)
        with catalog.session_scope(sessions) as s:
            merged = {k: s.merge(r, load=False) for k, r in models.items()}
            commit_batch(s, s.merge(run, load=False), part, (), (t, m), merged)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    with sessions() as s:
        ids, _, _ = catalog.pair_vectors(s, *(s.merge(models[k], load=False) for k in ("timbre", "melody")))
    assert len(ids) == len(rows), (len(ids), len(rows))
    return wall, time.perf_counter() - start


def pg_schema_bytes(admin, schema: str) -> int:
    with admin.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind = 'r'"
        ), {"s": schema}).scalar())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=20_000)
    parser.add_argument("--singers", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pg", default=os.environ.get("RECSYS_TEST_PG_URL",
                                                       "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    s = Settings()
    dims = (s.timbre.embedding_dim, fused_dim() - s.timbre.embedding_dim)
    vector_bytes = 4 * sum(dims)
    rows = songs(args.songs, args.singers)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.songs:,} songs of "
          f"{args.singers:,} singers, batches of {args.batch}, vectors {dims[0]} + {dims[1]} float32 "
          f"({vector_bytes} B a song)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        path = Path(tmp) / "catalog.db"
        wall, read = write(f"sqlite:///{path}", rows, args.batch, dims)
        size = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))  # with its -wal journal
        results.append(("SQLite (file)", wall, read, size))
        print(f"  sqlite: {args.songs / wall:,.0f} songs/s", flush=True)
    if not args.no_pg:
        base = make_url(args.pg)
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(base, poolclass=NullPool)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
            wall, read = write(url, rows, args.batch, dims)
            results.append((f"PostgreSQL ({base.host}:{base.port})", wall, read, pg_schema_bytes(admin, schema)))
            print(f"  postgresql: {args.songs / wall:,.0f} songs/s", flush=True)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    print()
    print("| catalog | songs/s written | ms per batch | every vector read back, songs/s | bytes a song "
          "| of which vectors |")
    print("|---|---:|---:|---:|---:|---:|")
    batches = -(-args.songs // args.batch)
    for name, wall, read, size in results:
        print(f"| {name} | {args.songs / wall:,.0f} | {wall / batches * 1e3:.1f} | {args.songs / read:,.0f} "
              f"| {size / args.songs:,.0f} | {vector_bytes} |")


if __name__ == "__main__":
    main()
