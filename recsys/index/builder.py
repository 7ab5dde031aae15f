"""The one place that picks an index kind: from IndexConfig and the catalog size, or from a file.

``kind='auto'`` keeps exact search while it is cheap (up to ``exact_max`` songs), then
IVF-Flat (cheap updates, no PQ training on few songs), then past ``ivfpq_min`` IVF-PQ
with an exact re-rank, the kind whose memory and latency stay low at millions of songs.
"""

from __future__ import annotations

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index.gpu import on_device
from recsys.index.ivfpq import IVFPQIndex
from recsys.index.kinds import FlatIndex, HNSWIndex, IndexBackend, IndexKind, IVFIndex

KIND_CLASSES: dict[str, type[IndexKind]] = {
    "flat": FlatIndex,
    "ivf": IVFIndex,
    "ivfpq": IVFPQIndex,
    "hnsw": HNSWIndex,
}
KINDS = tuple(KIND_CLASSES)


def choose_kind(n: int, cfg: IndexConfig) -> str:
    """The index kind for a catalog of `n` songs: cfg.kind, or with 'auto' flat up to exact_max,
    ivfpq past ivfpq_min and ivf in between."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.exact_max:
        return "flat"
    return "ivfpq" if n > cfg.ivfpq_min else "ivf"


def new_index(kind: str, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> IndexKind:
    """An empty CPU index of `kind` for vectors like the (n, d) `xb` (IVF kinds train on a sample)."""
    if kind not in KIND_CLASSES:
        raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)} or 'auto'")
    index = KIND_CLASSES[kind].create(xb.shape[1], xb, cfg, seed)
    if index.trains:
        index.trained_n = len(xb)  # persist.read calls it stale once the catalog outgrows it (retrain_growth)
    return index


def build_backend(xb: np.ndarray, cfg: IndexConfig) -> IndexBackend:
    """The empty index a catalog of the (n, d) vectors `xb` gets under `cfg`, on the GPU where it can be."""
    return on_device(new_index(choose_kind(len(xb), cfg), xb, cfg), cfg.use_gpu)


def from_faiss(index: faiss.Index) -> IndexKind:
    """The kind of a (deserialized) faiss index; ValueError for any other structure or metric."""
    # no downcast_index of `index` itself: its new wrapper does not own the index, and the old one would free it
    for cls in KIND_CLASSES.values():
        if cls.matches(index):
            break
    else:
        raise ValueError(
            f"unsupported faiss index {type(index).__name__}; expected {', '.join(KINDS)}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"index metric must be inner product, got metric_type={index.metric_type}")
    return cls(index)
