"""The index kinds behind one contract: exact flat, IVF-Flat and HNSW (IVF-PQ in ivfpq.py).

Each kind wraps one CPU faiss index whose vector ids are song ids, and knows only its
own structure: how to create it, add, remove, search and list its ids. The checks,
the upsert, the padding of short results, the lock and the files are shared, in
:class:`recsys.index.VectorIndex` and :mod:`recsys.index.persist`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import faiss
import numpy as np

from recsys.config import IndexConfig

LISTS_PER_SQRT_N = 4  # ivf: nlist ~ 4 * sqrt(n)
MIN_POINTS_PER_LIST = 39  # below this k-means has too few points per centroid (faiss warns)
TRAIN_POINTS_PER_LIST = 64  # training sample size = 64 * nlist (capped at n)
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64


class IndexBackend(Protocol):
    """What VectorIndex asks of a kind (or of its GPU mirror).

    Inputs are already checked: unique int64 ids >= 0, contiguous (n, d) float32 unit
    rows. `add` receives only ids not in the index; `search` a k with 0 < k <= len.
    """

    name: str  # the IndexConfig.kind it implements
    max_k: int | None  # most results one search can return (None: no limit)
    trained_n: int | None  # IVF kinds: the catalog size the index was trained for
    nprobe: int | None
    refine_factor: int | None
    ef_search: int | None

    @property
    def index(self) -> faiss.Index: ...  # the CPU faiss index: the source of truth, what is saved

    @property
    def d(self) -> int: ...

    @property
    def nlist(self) -> int | None: ...

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...

    def configure(self, cfg: IndexConfig) -> None: ...

    def problem(self) -> str | None: ...


def _not_applicable(param: str, kinds: str, name: str) -> ValueError:
    return ValueError(f"{param} applies to {kinds}, this index is {name!r}")


def positive(param: str, value: int) -> int:
    """`value` as an int, or a ValueError naming `param` when it is not > 0."""
    if value <= 0:
        raise ValueError(f"{param} must be > 0, got {value}")
    return int(value)


class IndexKind:
    """Base of the kinds: an IndexIDMap2 over a faiss index, and no search parameter.

    A kind that has a search parameter overrides its property; the others answer None
    and reject a new value, naming the kinds it applies to.
    """

    name: ClassVar[str]
    max_k: ClassVar[int | None] = None
    trains: ClassVar[bool] = False  # whether create() fits the index to the vectors (the IVF kinds)

    def __init__(self, index: faiss.Index) -> None:
        self._index = index
        self.trained_n: int | None = None  # trains: the catalog size it was trained for (None: unknown)

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        """Whether the faiss object `index` has this kind's structure."""
        raise NotImplementedError

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> IndexKind:
        """An empty index for (n, d) vectors like `xb` (the IVF kinds train on a sample of it)."""
        raise NotImplementedError

    @property
    def index(self) -> faiss.Index:
        return self._index

    @property
    def d(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        self._index.add_with_ids(xb, ids)

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(xq, k)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids in insertion order (VectorIndex sorts them)."""
        return faiss.vector_to_array(self._index.id_map)

    def configure(self, cfg: IndexConfig) -> None:
        """Take the search parameters of `cfg` (a loaded index otherwise keeps the saved ones)."""

    def problem(self) -> str | None:
        """What is inconsistent inside the faiss object (a damaged file), or None."""
        return None

    @property
    def nlist(self) -> int | None:
        """IVF lists (None for kinds without lists)."""
        return None

    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None for kinds without lists)."""
        return None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        raise _not_applicable("nprobe", "kind='ivf' or 'ivfpq'", self.name)

    @property
    def refine_factor(self) -> int | None:
        """ivfpq: candidates re-ranked exactly per result wanted (None for other kinds)."""
        return None

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        raise _not_applicable("refine_factor", "kind='ivfpq'", self.name)

    @property
    def ef_search(self) -> int | None:
        """HNSW candidate list length per query (None for other kinds)."""
        return None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        raise _not_applicable("ef_search", "kind='hnsw'", self.name)


class FlatIndex(IndexKind):
    """Exact search: ``IndexIDMap2(IndexFlatIP)``, every vector scored per query."""

    name = "flat"

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexFlatIP
        )

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> FlatIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(d)))


class HNSWIndex(IndexKind):
    """``IndexIDMap2(IndexHNSWFlat)``. A graph node cannot be deleted, so removing songs
    rebuilds the graph from the vectors that stay."""

    name = "hnsw"

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIDMap2) and isinstance(
            faiss.downcast_index(index.index), faiss.IndexHNSWFlat
        )

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> HNSWIndex:
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        return cls(faiss.IndexIDMap2(hnsw))

    def _graph(self) -> faiss.IndexHNSWFlat:
        return faiss.downcast_index(self._index.index)

    def remove(self, ids: np.ndarray) -> int:
        old_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        keep = ~np.isin(old_ids, ids)
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        xb = self._index.index.reconstruct_n(0, self._index.ntotal)[keep]
        fresh = HNSWIndex.create(self.d, xb, IndexConfig(kind="hnsw"))
        fresh.ef_search = self.ef_search
        if keep.any():
            fresh.add(old_ids[keep], np.ascontiguousarray(xb))
        self._index = fresh.index
        return removed

    @property
    def ef_search(self) -> int | None:
        return int(self._graph().hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._graph().hnsw.efSearch = positive("ef_search", value)


def default_nlist(n: int, per_sqrt_n: float = LISTS_PER_SQRT_N) -> int:
    """About `per_sqrt_n` * sqrt(n) IVF lists, but at least 39 training points per list."""
    return max(1, min(int(per_sqrt_n * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def training_sample(xb: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """The rows k-means trains `nlist` centroids on: up to 64 per list, drawn with `seed`."""
    n = len(xb)
    if n == 0:
        raise ValueError("cannot train an IVF index on 0 vectors; use kind='flat' or 'auto'")
    if nlist > n:
        raise ValueError(f"IVF nlist={nlist} exceeds the {n} training vectors; lower index.nlist")
    n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
    sample = np.random.default_rng(seed).choice(n, n_train, replace=False) if n_train < n else slice(None)
    return np.ascontiguousarray(xb[sample])


class IVFIndex(IndexKind):
    """``IndexIVFFlat`` by inner product: `nprobe` of `nlist` lists scanned per query.

    Holds the ids itself (no IndexIDMap2) and removes them in place.
    """

    name = "ivf"
    trains = True

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        return isinstance(index, faiss.IndexIVFFlat)

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> IVFIndex:
        nlist = cfg.nlist or default_nlist(len(xb))
        sample = training_sample(xb, nlist, seed)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        ivf.nprobe = cfg.nprobe
        return cls(ivf)

    def ids(self) -> np.ndarray:
        lists = self._index.invlists
        parts = []
        for list_no in range(self._index.nlist):
            size = lists.list_size(list_no)
            if size:
                ptr = lists.get_ids(list_no)
                parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                lists.release_ids(list_no, ptr)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def configure(self, cfg: IndexConfig) -> None:
        self.nprobe = cfg.nprobe

    @property
    def nlist(self) -> int | None:
        return int(self._index.nlist)

    @property
    def nprobe(self) -> int | None:
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._index.nprobe = positive("nprobe", value)
