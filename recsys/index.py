"""FAISS vector index over song vectors, with the song id as the vector id.

Vectors are float32 and L2-normalised, so inner product = cosine similarity.
Index kinds (``IndexConfig.kind``):

- ``flat``: exact ``IndexIDMap2(IndexFlatIP)``. Default up to ``exact_max`` songs.
- ``ivf``: ``IndexIVFFlat`` with inner product, ``nlist`` lists (default
  :func:`default_nlist`), ``nprobe`` lists visited per query, trained on a sample.
  Supports ``remove_ids``, so songs are added and removed without a rebuild.
  ``kind='auto'`` picks it past ``exact_max`` up to ``ivfpq_min``.
- ``ivfpq``: IVF with 4-bit PQ fast-scan codes (``IndexIVFPQFastScan``, song ids,
  ``pq_nprobe`` lists visited) proposes ``k * refine_factor`` candidates, which are
  re-ranked exactly against the full vectors kept in an ``IndexIDMap2(IndexFlatIP)``.
  Both live in one ``IndexRefine`` (so they save and load as one file), but the
  re-rank is done here: faiss's ``IndexRefine.search`` expects the candidates to be
  row numbers, not song ids. Both parts support ``remove_ids``. ``kind='auto'``
  picks it past ``ivfpq_min``: it is the kind that reaches recall@10 0.95 in under
  1 ms per query at 1M songs on 2 CPU cores (docs/benchmarks.md).
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``. FAISS cannot remove ids from an HNSW
  graph, so :meth:`VectorIndex.remove` rebuilds it from its stored vectors.

Ids are unique: :meth:`VectorIndex.add` is an upsert (a song already present is
replaced). The CPU index is the source of truth; with ``cfg.use_gpu`` and a
faiss built with GPU support, searches go to a GPU copy refreshed after each
change, and the index is always saved as CPU. ``ivfpq`` always searches on CPU:
faiss's GPU cloner has no 4-bit fast-scan PQ and no refine index.

On disk, a directory holds ``index.faiss`` and ``index.json`` (kind, d, n, model
version, catalog fingerprint, sha256 of index.faiss, created). :meth:`VectorIndex.load`
raises a subclass of :class:`IndexUnavailableError` when the index is missing,
stale or corrupt; :func:`load_or_rebuild` then rebuilds it from the catalog.

Thread safety: one lock serialises search and changes. FAISS releases the GIL
while it searches, so other Python threads keep running meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from recsys.config import IndexConfig

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
GPU_KINDS = ("flat", "ivf")  # faiss-gpu clones these; not HNSW, fast-scan PQ or refine indexes
PQ_BITS = 4  # fast-scan codes: 16 centroids per sub-quantizer, distances from SIMD lookup tables

LISTS_PER_SQRT_N = 4  # nlist ~ 4 * sqrt(n)
IVFPQ_LISTS_PER_SQRT_N = 1  # ivfpq: fewer, longer lists (fast-scan codes are cheap to scan; see bench)
MIN_POINTS_PER_LIST = 39  # below this k-means has too few points per centroid (faiss warns)
TRAIN_POINTS_PER_LIST = 64  # training sample size = 64 * nlist (capped at n)
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
NORM_TOL = 1e-3  # |norm - 1| above this means the caller forgot to normalise

log = logging.getLogger(__name__)


class IndexUnavailableError(RuntimeError):
    """The saved index cannot be used; the caller rebuilds it from the catalog."""


class IndexMissingError(IndexUnavailableError):
    """index.faiss or index.json does not exist."""


class StaleIndexError(IndexUnavailableError):
    """The index was built for another model version or catalog fingerprint."""


class CorruptIndexError(IndexUnavailableError):
    """The files exist but are unreadable, inconsistent or fail the checksum."""


# ---------------------------------------------------------------- checks


def _check_ids(ids: np.ndarray, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer song ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks 'no result'), got {int(ids.min())}")
    return np.ascontiguousarray(ids)


def _check_vectors(x: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype} (convert with .astype(np.float32))")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(x)


def _check_normalised(ids: np.ndarray, xb: np.ndarray) -> None:
    norms = np.linalg.norm(xb, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOL)
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"xb must be L2-normalised (inner product = cosine); {bad.size} rows are not, "
            f"first: id {int(ids[i])} with norm {norms[i]:.4f}"
        )


def _check_batch(ids: np.ndarray, xb: np.ndarray, d: int | None) -> tuple[np.ndarray, np.ndarray]:
    ids = _check_ids(ids)
    xb = _check_vectors(xb, "xb", d)
    if len(ids) != len(xb):
        raise ValueError(f"ids has shape {ids.shape} but xb has shape {xb.shape}: one id per row")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ValueError(f"ids repeat within one batch: {dup[:10].tolist()} ({dup.size} repeated)")
    _check_normalised(ids, xb)
    return ids, xb


# ---------------------------------------------------------------- helpers


def choose_kind(n: int, cfg: IndexConfig) -> str:
    """The index kind for a catalog of `n` songs: cfg.kind, or with 'auto' flat up to exact_max,
    ivfpq past ivfpq_min and ivf in between."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.exact_max:
        return "flat"
    return "ivfpq" if n > cfg.ivfpq_min else "ivf"


def default_nlist(n: int, per_sqrt_n: float = LISTS_PER_SQRT_N) -> int:
    """About `per_sqrt_n` * sqrt(n) IVF lists, but at least 39 training points per list."""
    return max(1, min(int(per_sqrt_n * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def exact_search(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product reference: (n, d) xb with (n,) ids, (nq, d) xq -> D, I of shape (nq, k).

    Padded with D=-inf, I=-1 where k > n. Ties are broken by position in xb.
    """
    assert xb.ndim == 2 and xq.ndim == 2 and xb.shape[1] == xq.shape[1], (xb.shape, xq.shape)
    assert ids.shape == (xb.shape[0],), (ids.shape, xb.shape)
    nq, n = xq.shape[0], xb.shape[0]
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return D, I
    S = xq.astype(np.float32) @ xb.astype(np.float32).T  # (nq, n)
    top = np.argsort(-S, axis=1, kind="stable")[:, :kk]
    D[:, :kk] = np.take_along_axis(S, top, axis=1)
    I[:, :kk] = np.asarray(ids, dtype=np.int64)[top]
    return D, I


def recall_at_k(I_approx: np.ndarray, I_exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k ids that the approximate top-k also returns (-1 ignored)."""
    assert I_approx.shape[0] == I_exact.shape[0], (I_approx.shape, I_exact.shape)
    assert I_approx.shape[1] >= k and I_exact.shape[1] >= k, (I_approx.shape, I_exact.shape, k)
    hits = total = 0
    for a, e in zip(I_approx[:, :k], I_exact[:, :k]):
        e = e[e >= 0]
        hits += np.isin(e, a[a >= 0]).sum()
        total += e.size
    return float(hits / total) if total else 1.0


def synthetic_dataset(n: int, nq: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded clustered vectors like a song catalog: (n, d) xb and (nq, d) xq, float32, L2-normalised.

    Not completely random but still challenging: genres -> singers -> songs in a
    32-dimensional latent space projected to d, plus isotropic noise. Queries are
    new songs of the same singers. Songs of one singer overlap with neighbours,
    so IVF needs several probes to reach recall@10 of 0.95.
    """
    rng = np.random.default_rng(seed)
    latent = min(32, d)
    n_singers = max(1, n // 16)
    n_genres = max(1, int(math.sqrt(n_singers)))
    proj = rng.standard_normal((latent, d), dtype=np.float32) / math.sqrt(latent)
    genres = rng.standard_normal((n_genres, latent), dtype=np.float32)
    singers = genres[rng.integers(0, n_genres, n_singers)]
    singers += 0.7 * rng.standard_normal((n_singers, latent), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        z = singers[rng.integers(0, n_singers, m)] + rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ proj + 0.1 * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32, copy=False)

    return draw(n), draw(nq)


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


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


def _training_sample(xb: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    n = len(xb)
    if n == 0:
        raise ValueError("cannot train an IVF index on 0 vectors; use kind='flat' or 'auto'")
    if nlist > n:
        raise ValueError(f"IVF nlist={nlist} exceeds the {n} training vectors; lower index.nlist")
    n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
    sample = np.random.default_rng(seed).choice(n, n_train, replace=False) if n_train < n else slice(None)
    return np.ascontiguousarray(xb[sample])


def _new_ivfpq(d: int, xb: np.ndarray, cfg: IndexConfig, seed: int) -> faiss.IndexRefine:
    """IVF-PQ fast-scan candidates (song ids) + full vectors by song id, in one IndexRefine.

    PQ needs d to be a multiple of pq_dims: otherwise the vectors are zero-padded
    (RemapDimensionsTransform), which changes no inner product.
    """
    nlist = cfg.nlist or default_nlist(len(xb), IVFPQ_LISTS_PER_SQRT_N)
    sample = _training_sample(xb, nlist, seed)
    m = -(-d // cfg.pq_dims)
    d_pq = m * cfg.pq_dims
    ivf = faiss.IndexIVFPQFastScan(
        faiss.IndexFlatIP(d_pq), d_pq, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT
    )
    ivf.nprobe = cfg.pq_nprobe
    base = ivf if d_pq == d else faiss.IndexPreTransform(faiss.RemapDimensionsTransform(d, d_pq, False), ivf)
    base.train(sample)
    index = faiss.IndexRefine(base, faiss.IndexIDMap2(faiss.IndexFlatIP(d)))
    index.k_factor = cfg.refine_factor
    return index


def _new_cpu_index(kind: str, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> faiss.Index:
    """An empty index of `kind` (IVF trained on a sample of xb)."""
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        return faiss.IndexIDMap2(hnsw)
    if kind == "ivf":
        nlist = cfg.nlist or default_nlist(len(xb))
        sample = _training_sample(xb, nlist, seed)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        ivf.nprobe = cfg.nprobe
        return ivf
    if kind == "ivfpq":
        return _new_ivfpq(d, xb, cfg, seed)
    raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)} or 'auto'")


def _remove_from_fast_scan(ivf: faiss.IndexIVF, ids: np.ndarray) -> int:
    """remove_ids on an IVF fast-scan index, then zero the code slots it freed.

    faiss (1.15) moves each list's last codes into the holes and shrinks the list,
    but leaves the old codes in the freed slots of the last 32-code block; the next
    add ORs its 4-bit codes into those slots (pq4_pack_codes_range assumes zeros),
    and songs added after a removal get corrupt codes and are not found.
    """
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    before = [lists.list_size(i) for i in range(lists.nlist)]
    removed = int(ivf.remove_ids(faiss.IDSelectorBatch(ids)))
    if removed:
        zero = np.zeros(lists.packer.code_size, dtype=np.uint8)
        for list_no, old in enumerate(before):
            new = lists.list_size(list_no)
            end = min(old, -(-new // lists.n_per_block) * lists.n_per_block)  # slots left in the last block
            codes = lists.get_codes(list_no) if new < end else None
            for slot in range(new, end):
                lists.packer.pack_1_c(faiss.swig_ptr(zero), slot, codes)
    return removed


def _kind_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(index, faiss.IndexRefine):
        base = faiss.downcast_index(index.base_index)
        if isinstance(base, faiss.IndexPreTransform):
            base = faiss.downcast_index(base.index)
        store = faiss.downcast_index(index.refine_index)
        if (
            isinstance(base, faiss.IndexIVFPQFastScan)
            and isinstance(store, faiss.IndexIDMap2)
            and isinstance(faiss.downcast_index(store.index), faiss.IndexFlatIP)
        ):
            return "ivfpq"
    if isinstance(index, faiss.IndexIDMap2):
        sub = faiss.downcast_index(index.index)
        if isinstance(sub, faiss.IndexFlatIP):
            return "flat"
        if isinstance(sub, faiss.IndexHNSWFlat):
            return "hnsw"
    raise ValueError(f"unsupported faiss index {type(index).__name__}; expected flat, ivf, ivfpq or hnsw")


# ---------------------------------------------------------------- index


class VectorIndex:
    """Song vectors searchable by inner product; ids are song ids (int64)."""

    def __init__(self, index: faiss.Index, use_gpu: bool = False) -> None:
        # no downcast_index here: its new wrapper does not own the index, and the old one would free it
        self.kind = _kind_of(index)
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"index metric must be inner product, got metric_type={index.metric_type}")
        self._index = index
        self._use_gpu = use_gpu and self.kind in GPU_KINDS and _gpu_available()
        if use_gpu and self.kind not in GPU_KINDS and _gpu_available():
            log.info("index kind %r searches on CPU: faiss-gpu cannot clone it", self.kind)
        self._gpu: faiss.Index | None = None  # search copy, dropped after every change
        self._gpu_res = None
        self._lock = threading.RLock()

    @classmethod
    def build(cls, ids: np.ndarray, xb: np.ndarray, cfg: IndexConfig) -> VectorIndex:
        """Index (n,) int64 ids with their (n, d) float32 L2-normalised vectors; kind from choose_kind."""
        ids, xb = _check_batch(ids, xb, None)
        kind = choose_kind(len(ids), cfg)
        index = cls(_new_cpu_index(kind, xb.shape[1], xb, cfg), use_gpu=cfg.use_gpu)
        index.add(ids, xb)
        return index

    # --- properties

    @property
    def d(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None for other kinds)."""
        return int(faiss.extract_index_ivf(self._index).nprobe) if self.kind in ("ivf", "ivfpq") else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind not in ("ivf", "ivfpq"):
            raise ValueError(f"nprobe applies to kind='ivf' or 'ivfpq', this index is {self.kind!r}")
        if value <= 0:
            raise ValueError(f"nprobe must be > 0, got {value}")
        with self._lock:
            faiss.extract_index_ivf(self._index).nprobe = int(value)
            self._gpu = None

    @property
    def nlist(self) -> int | None:
        """IVF lists (None for other kinds)."""
        return int(faiss.extract_index_ivf(self._index).nlist) if self.kind in ("ivf", "ivfpq") else None

    @property
    def refine_factor(self) -> int | None:
        """ivfpq: candidates re-ranked exactly per result wanted (None for other kinds)."""
        return int(self._index.k_factor) if self.kind == "ivfpq" else None

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        if self.kind != "ivfpq":
            raise ValueError(f"refine_factor applies to kind='ivfpq', this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"refine_factor must be >= 1, got {value}")
        with self._lock:
            self._index.k_factor = float(value)

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list length per query (None for other kinds)."""
        return int(faiss.downcast_index(self._index.index).hnsw.efSearch) if self.kind == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            raise ValueError(f"ef_search applies to kind='hnsw', this index is {self.kind!r}")
        if value <= 0:
            raise ValueError(f"ef_search must be > 0, got {value}")
        with self._lock:
            faiss.downcast_index(self._index.index).hnsw.efSearch = int(value)

    def nbytes(self) -> int:
        """Size of the serialized CPU index: what index.faiss takes on disk, about what it takes in memory."""
        with self._lock:
            return int(faiss.serialize_index(self._index).nbytes)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids in the index, sorted."""
        with self._lock:
            if self.kind == "ivf":
                lists = self._index.invlists
                parts = []
                for list_no in range(self._index.nlist):
                    size = lists.list_size(list_no)
                    if size:
                        ptr = lists.get_ids(list_no)
                        parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                        lists.release_ids(list_no, ptr)
                out = np.concatenate(parts) if parts else np.empty(0, np.int64)
            else:
                out = faiss.vector_to_array(self._id_mapped().id_map)
            return np.sort(out.astype(np.int64, copy=False))

    def _id_mapped(self) -> faiss.IndexIDMap2:
        """The IndexIDMap2 that holds the ids (flat, hnsw) or the full vectors by id (ivfpq)."""
        return faiss.downcast_index(self._index.refine_index) if self.kind == "ivfpq" else self._index

    # --- changes

    def add(self, ids: np.ndarray, xb: np.ndarray) -> int:
        """Upsert (n,) ids with (n, d) float32 L2-normalised vectors; returns how many replaced existing ids."""
        ids, xb = _check_batch(ids, xb, self.d)
        with self._lock:
            replaced = self._remove(ids) if len(self) else 0
            if len(ids) and self.kind == "ivfpq":  # IndexRefine has no add_with_ids: add to both parts
                self._index.base_index.add_with_ids(xb, ids)
                self._index.refine_index.add_with_ids(xb, ids)
                self._index.ntotal = self._index.refine_index.ntotal
            elif len(ids):
                self._index.add_with_ids(xb, ids)
            self._gpu = None
            return replaced

    upsert = add

    def remove(self, ids: np.ndarray) -> int:
        """Remove (n,) ids; ids not in the index are ignored. Returns how many were removed."""
        ids = _check_ids(ids)
        with self._lock:
            removed = self._remove(ids)
            self._gpu = None
            return removed

    def _remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        if self.kind == "hnsw":
            return self._rebuild_without(ids)
        if self.kind == "ivfpq":  # IndexRefine has no remove_ids: remove from both parts
            removed = _remove_from_fast_scan(faiss.extract_index_ivf(self._index), ids)
            removed_full = int(self._index.refine_index.remove_ids(faiss.IDSelectorBatch(ids)))
            assert removed == removed_full, (removed, removed_full)
            self._index.ntotal = self._index.refine_index.ntotal
            return removed
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """HNSW cannot delete nodes: rebuild the graph from the stored vectors that remain."""
        old_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        keep = ~np.isin(old_ids, ids)
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        xb = self._index.index.reconstruct_n(0, self._index.ntotal)[keep]
        fresh = _new_cpu_index("hnsw", self.d, xb, IndexConfig(kind="hnsw"))
        ef_search = faiss.downcast_index(self._index.index).hnsw.efSearch
        faiss.downcast_index(fresh.index).hnsw.efSearch = ef_search
        if keep.any():
            fresh.add_with_ids(np.ascontiguousarray(xb), old_ids[keep])
        self._index = fresh
        return removed

    # --- search

    def _search_index(self) -> faiss.Index:
        if not self._use_gpu:
            return self._index
        if self._gpu is None:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
        return self._gpu

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, d) float32 queries -> D (nq, k) float32 inner products, I (nq, k) int64 song ids.

        Best first. Where fewer than k results exist, I is -1 and D is -inf.
        """
        xq = _check_vectors(xq, "xq", self.d)
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        with self._lock:
            if len(xq) == 0 or len(self) == 0:
                return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
            kk = min(k, len(self), 2048 if self._use_gpu else k)  # GPU k-selection is limited to 2048
            if self.kind == "ivfpq":
                D, I = self._search_refined(xq, kk)
            else:
                D, I = self._search_index().search(xq, kk)
        if kk < k:
            D = np.pad(D, ((0, 0), (0, k - kk)))
            I = np.pad(I, ((0, 0), (0, k - kk)), constant_values=-1)
        D[I < 0] = -np.inf
        return D, I.astype(np.int64, copy=False)

    def _search_refined(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ivfpq: k * refine_factor PQ candidates per query, re-ranked by exact inner product."""
        _, C = self._index.base_index.search(xq, int(k * self._index.k_factor))
        full = self._index.refine_index  # the full vectors, by song id
        S = np.full(C.shape, -np.inf, dtype=np.float32)
        for q, found in enumerate(C >= 0):  # usually one query: one (candidates, d) @ (d,) product
            S[q, found] = full.reconstruct_batch(C[q, found]) @ xq[q]
        top = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(S, top, axis=1), np.take_along_axis(C, top, axis=1)

    # --- persistence

    def save(self, dir: str | os.PathLike, model_version: str, fingerprint: str) -> Path:
        """Write dir/index.faiss then dir/index.json, each atomically; returns dir.

        A crash between the two leaves a checksum mismatch, which load reports as corrupt.
        """
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            _atomic_write(dir / INDEX_FILE, lambda p: faiss.write_index(self._index, str(p)))
            meta = {
                "format": FORMAT_VERSION,
                "kind": self.kind,
                "d": self.d,
                "n": len(self),
                "nlist": self.nlist,
                "model_version": model_version,
                "fingerprint": fingerprint,
                "sha256": _sha256(dir / INDEX_FILE),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "faiss_version": faiss.__version__,
            }
        _atomic_write(dir / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
        return dir

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
        dir = Path(dir)
        meta_path, index_path = dir / META_FILE, dir / INDEX_FILE
        for path in (meta_path, index_path):
            if not path.is_file():
                raise IndexMissingError(f"{path}: index file missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            keys = ("format", "kind", "d", "n", "model_version", "fingerprint", "sha256")
            checks = {key: meta[key] for key in keys}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CorruptIndexError(f"{meta_path}: unreadable index metadata: {e!r}") from e
        if checks["format"] != FORMAT_VERSION:
            raise StaleIndexError(
                f"{meta_path}: format {checks['format']!r}, this code reads {FORMAT_VERSION}"
            )
        if checks["model_version"] != expected_version:
            raise StaleIndexError(
                f"{meta_path}: built for model version {checks['model_version']!r}, expected {expected_version!r}"
            )
        if checks["fingerprint"] != expected_fingerprint:
            raise StaleIndexError(
                f"{meta_path}: built for catalog fingerprint {checks['fingerprint']!r}, "
                f"expected {expected_fingerprint!r}"
            )
        if cfg is not None and choose_kind(checks["n"], cfg) != checks["kind"]:
            raise StaleIndexError(
                f"{meta_path}: index is {checks['kind']!r} but the config (kind={cfg.kind!r}, "
                f"exact_max={cfg.exact_max}, ivfpq_min={cfg.ivfpq_min}) asks for "
                f"{choose_kind(checks['n'], cfg)!r} at n={checks['n']}"
            )
        data = index_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != checks["sha256"]:
            raise CorruptIndexError(
                f"{index_path}: sha256 {digest} does not match {checks['sha256']} recorded in {meta_path}"
            )
        try:
            raw = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            index = cls(raw, use_gpu=cfg.use_gpu if cfg is not None else False)
        except (RuntimeError, ValueError) as e:
            raise CorruptIndexError(f"{index_path}: unreadable faiss index: {e}") from e
        found = {"kind": index.kind, "d": index.d, "n": len(index)}
        expected = {key: checks[key] for key in found}
        if found != expected:
            raise CorruptIndexError(f"{index_path}: holds {found} but {meta_path} says {expected}")
        if index.kind == "ivfpq" and not raw.ntotal == raw.base_index.ntotal == raw.refine_index.ntotal:
            raise CorruptIndexError(
                f"{index_path}: ivfpq parts disagree: {raw.base_index.ntotal} PQ codes, "
                f"{raw.refine_index.ntotal} full vectors, {raw.ntotal} in all"
            )
        if cfg is not None and index.kind == "ivf":
            index.nprobe = cfg.nprobe
        if cfg is not None and index.kind == "ivfpq":
            index.nprobe = cfg.pq_nprobe
            index.refine_factor = cfg.refine_factor
        return index


def load_or_rebuild(
    dir: str | os.PathLike,
    expected_version: str,
    expected_fingerprint: str,
    rebuild: Callable[[], tuple[np.ndarray, np.ndarray]],
    cfg: IndexConfig,
    on_rebuild: Callable[[IndexUnavailableError], None] | None = None,
) -> tuple[VectorIndex, bool]:
    """Load the index in `dir`, or when it is missing, stale or corrupt rebuild and save it.

    `rebuild()` returns the catalog's (n,) ids and (n, d) vectors. `on_rebuild`
    receives the reason (for a log line). Returns (index, rebuilt).
    """
    try:
        return VectorIndex.load(dir, expected_version, expected_fingerprint, cfg), False
    except IndexUnavailableError as e:
        if on_rebuild is not None:
            on_rebuild(e)
    ids, xb = rebuild()
    index = VectorIndex.build(ids, xb, cfg)
    index.save(dir, expected_version, expected_fingerprint)
    return index, True
