"""The index on disk, the same for every kind: index.faiss plus index.json, written atomically.

index.json records the kind, d, n, the model version and catalog fingerprint the index
was built for, the catalog size an IVF index was trained for, and the sha256 of
index.faiss. :func:`read` refuses an index that is missing (:class:`IndexMissingError`),
built for other vectors or another kind than the config now asks for, or an IVF index
whose catalog has outgrown its training (``retrain_growth``; :class:`StaleIndexError`),
or damaged (:class:`CorruptIndexError`);
the caller then rebuilds it from the catalog (:func:`recsys.index.load_or_rebuild`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index.builder import choose_kind, from_faiss
from recsys.index.kinds import IndexBackend, IndexKind

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1


class IndexUnavailableError(RuntimeError):
    """The saved index cannot be used; the caller rebuilds it from the catalog."""


class IndexMissingError(IndexUnavailableError):
    """index.faiss or index.json does not exist."""


class StaleIndexError(IndexUnavailableError):
    """The index was built for another model version or catalog fingerprint."""


class CorruptIndexError(IndexUnavailableError):
    """The files exist but are unreadable, inconsistent or fail the checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file next to `path` with `write(tmp)`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(backend: IndexBackend, dir: str | os.PathLike, model_version: str, fingerprint: str) -> Path:
    """Write dir/index.faiss (the CPU index) then dir/index.json, each atomically; returns dir.

    A crash between the two leaves a checksum mismatch, which :func:`read` reports as corrupt.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(dir / INDEX_FILE, lambda p: faiss.write_index(backend.index, str(p)))
    meta = {
        "format": FORMAT_VERSION,
        "kind": backend.name,
        "d": backend.d,
        "n": len(backend),
        "nlist": backend.nlist,
        "trained_n": backend.trained_n,
        "model_version": model_version,
        "fingerprint": fingerprint,
        "sha256": _sha256(dir / INDEX_FILE),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "faiss_version": faiss.__version__,
    }
    _atomic_write(dir / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
    return dir


def _read_checks(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        keys = ("format", "kind", "d", "n", "model_version", "fingerprint", "sha256")
        return {**{key: meta[key] for key in keys}, "trained_n": meta.get("trained_n")}  # older files: none
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptIndexError(f"{meta_path}: unreadable index metadata: {e!r}") from e


def _check_fresh(checks: dict, meta_path: Path, version: str, fingerprint: str, cfg: IndexConfig | None) -> None:
    if checks["format"] != FORMAT_VERSION:
        raise StaleIndexError(f"{meta_path}: format {checks['format']!r}, this code reads {FORMAT_VERSION}")
    if checks["model_version"] != version:
        raise StaleIndexError(
            f"{meta_path}: built for model version {checks['model_version']!r}, expected {version!r}"
        )
    if checks["fingerprint"] != fingerprint:
        raise StaleIndexError(
            f"{meta_path}: built for catalog fingerprint {checks['fingerprint']!r}, expected {fingerprint!r}"
        )
    if cfg is not None and choose_kind(checks["n"], cfg) != checks["kind"]:
        raise StaleIndexError(
            f"{meta_path}: index is {checks['kind']!r} but the config (kind={cfg.kind!r}, "
            f"exact_max={cfg.exact_max}, ivfpq_min={cfg.ivfpq_min}) asks for "
            f"{choose_kind(checks['n'], cfg)!r} at n={checks['n']}"
        )
    trained = checks["trained_n"]
    if cfg is not None and trained and checks["n"] > cfg.retrain_growth * trained:
        raise StaleIndexError(
            f"{meta_path}: the {checks['kind']} index was trained for {trained} songs and holds {checks['n']}, "
            f"past index.retrain_growth={cfg.retrain_growth:g} x: its lists no longer fit the catalog"
        )


def read(
    dir: str | os.PathLike, expected_version: str, expected_fingerprint: str, cfg: IndexConfig | None = None
) -> IndexKind:
    """The CPU index saved in `dir` by :func:`write`, checked against the expected version and fingerprint.

    With `cfg`, an index of another kind than choose_kind(n, cfg) is stale (e.g. a flat
    index whose catalog grew past exact_max) and cfg's search parameters apply; without,
    the saved ones. Raises IndexMissingError, StaleIndexError or CorruptIndexError.
    """
    dir = Path(dir)
    meta_path, index_path = dir / META_FILE, dir / INDEX_FILE
    for path in (meta_path, index_path):
        if not path.is_file():
            raise IndexMissingError(f"{path}: index file missing")
    checks = _read_checks(meta_path)
    _check_fresh(checks, meta_path, expected_version, expected_fingerprint, cfg)
    data = index_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != checks["sha256"]:
        raise CorruptIndexError(
            f"{index_path}: sha256 {digest} does not match {checks['sha256']} recorded in {meta_path}"
        )
    try:
        backend = from_faiss(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))
    except (RuntimeError, ValueError) as e:
        raise CorruptIndexError(f"{index_path}: unreadable faiss index: {e}") from e
    found = {"kind": backend.name, "d": backend.d, "n": len(backend)}
    expected = {key: checks[key] for key in found}
    if found != expected:
        raise CorruptIndexError(f"{index_path}: holds {found} but {meta_path} says {expected}")
    problem = backend.problem()
    if problem is not None:
        raise CorruptIndexError(f"{index_path}: {problem}")
    if backend.trains:  # files written before it was recorded: trained for the songs it holds now
        backend.trained_n = checks["trained_n"] or checks["n"]
    if cfg is not None:
        backend.configure(cfg)
    return backend
