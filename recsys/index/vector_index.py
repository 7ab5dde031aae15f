"""VectorIndex: song vectors searchable by inner product, whatever the kind behind it.

It checks every input once, makes ``add`` an upsert, pads short results, serialises
changes and searches with one lock (faiss releases the GIL while it searches, so other
Python threads keep running), and saves and loads through :mod:`recsys.index.persist`.
The kind itself (:mod:`recsys.index.kinds`) is chosen once, by :mod:`recsys.index.builder`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index import persist
from recsys.index.builder import build_backend
from recsys.index.checks import check_batch, check_ids, check_vectors
from recsys.index.gpu import GpuMirror, on_device
from recsys.index.kinds import IndexBackend


class VectorIndex:
    """Song vectors searchable by inner product; ids are song ids (int64)."""

    def __init__(self, backend: IndexBackend) -> None:
        self._backend = backend
        self._lock = threading.RLock()

    @classmethod
    def build(cls, ids: np.ndarray, xb: np.ndarray, cfg: IndexConfig) -> VectorIndex:
        """Index (n,) int64 ids with their (n, d) float32 L2-normalised vectors; kind from choose_kind."""
        ids, xb = check_batch(ids, xb, None)
        index = cls(build_backend(xb, cfg))
        index.add(ids, xb)
        return index

    # --- properties

    @property
    def kind(self) -> str:
        return self._backend.name

    @property
    def d(self) -> int:
        return self._backend.d

    @property
    def on_gpu(self) -> bool:
        """Whether searches go to a GPU clone of the CPU index."""
        return isinstance(self._backend, GpuMirror)

    def __len__(self) -> int:
        return len(self._backend)

    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None for other kinds)."""
        return self._backend.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        with self._lock:
            self._backend.nprobe = value

    @property
    def nlist(self) -> int | None:
        """IVF lists (None for other kinds)."""
        return self._backend.nlist

    @property
    def trained_n(self) -> int | None:
        """IVF kinds: the catalog size the lists were trained for (None for other kinds)."""
        return self._backend.trained_n

    @property
    def refine_factor(self) -> int | None:
        """ivfpq: candidates re-ranked exactly per result wanted (None for other kinds)."""
        return self._backend.refine_factor

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        with self._lock:
            self._backend.refine_factor = value

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list length per query (None for other kinds)."""
        return self._backend.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        with self._lock:
            self._backend.ef_search = value

    def nbytes(self) -> int:
        """Size of the serialized CPU index: what index.faiss takes on disk, about what it takes in memory."""
        with self._lock:
            return int(faiss.serialize_index(self._backend.index).nbytes)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids in the index, sorted."""
        with self._lock:
            return np.sort(self._backend.ids().astype(np.int64, copy=False))

    # --- changes

    def add(self, ids: np.ndarray, xb: np.ndarray) -> int:
        """Upsert (n,) ids with (n, d) float32 L2-normalised vectors; returns how many replaced existing ids."""
        ids, xb = check_batch(ids, xb, self.d)
        with self._lock:
            replaced = self._remove(ids) if len(self) else 0
            if len(ids):
                self._backend.add(ids, xb)
            return replaced

    upsert = add

    def remove(self, ids: np.ndarray) -> int:
        """Remove (n,) ids; ids not in the index are ignored. Returns how many were removed."""
        ids = check_ids(ids)
        with self._lock:
            return self._remove(ids)

    def _remove(self, ids: np.ndarray) -> int:
        return self._backend.remove(ids) if len(ids) else 0

    # --- search

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, d) float32 queries -> D (nq, k) float32 inner products, I (nq, k) int64 song ids.

        Best first. Where fewer than k results exist, I is -1 and D is -inf.
        """
        xq = check_vectors(xq, "xq", self.d)
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        with self._lock:
            if len(xq) == 0 or len(self) == 0:
                return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
            kk = min(k, len(self), self._backend.max_k or k)
            D, I = self._backend.search(xq, kk)
        if kk < k:
            D = np.pad(D, ((0, 0), (0, k - kk)))
            I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
        D[I < 0] = -np.inf
        return D, I.astype(np.int64, copy=False)

    # --- persistence

    def save(self, dir: str | os.PathLike, model_version: str, fingerprint: str) -> Path:
        """Write dir/index.faiss then dir/index.json, each atomically; returns dir.

        A crash between the two leaves a checksum mismatch, which load reports as corrupt.
        """
        with self._lock:
            return persist.write(self._backend, dir, model_version, fingerprint)

    @classmethod
    def load(
        cls,
        dir: str | os.PathLike,
        expected_version: str,
        expected_fingerprint: str,
        cfg: IndexConfig | None = None,
    ) -> VectorIndex:
        """Load an index saved by save(); raises IndexMissingError, StaleIndexError or CorruptIndexError.

        With `cfg`, its nprobe (pq_nprobe and refine_factor for ivfpq) and use_gpu
        apply, and an index of another kind than choose_kind(n, cfg) is stale (e.g. a
        flat index whose catalog grew past exact_max); without, the saved search
        parameters and CPU search.
        """
        backend = persist.read(dir, expected_version, expected_fingerprint, cfg)
        return cls(on_device(backend, cfg.use_gpu if cfg is not None else False))


def load_or_rebuild(
    dir: str | os.PathLike,
    expected_version: str,
    expected_fingerprint: str,
    rebuild: Callable[[], tuple[np.ndarray, np.ndarray]],
    cfg: IndexConfig,
    on_rebuild: Callable[[persist.IndexUnavailableError], None] | None = None,
) -> tuple[VectorIndex, bool]:
    """Load the index in `dir`, or when it is missing, stale or corrupt rebuild and save it.

    `rebuild()` returns the catalog's (n,) ids and (n, d) vectors. `on_rebuild`
    receives the reason (for a log line). Returns (index, rebuilt).
    """
    try:
        return VectorIndex.load(dir, expected_version, expected_fingerprint, cfg), False
    except persist.IndexUnavailableError as e:
        if on_rebuild is not None:
            on_rebuild(e)
    ids, xb = rebuild()
    index = VectorIndex.build(ids, xb, cfg)
    index.save(dir, expected_version, expected_fingerprint)
    return index, True
