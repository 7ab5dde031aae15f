"""FAISS vector index over song vectors, with the song id as the vector id.

Vectors are float32 and L2-normalised, so inner product = cosine similarity. One
contract (``add`` / ``remove`` / ``search`` / ``ids`` / ``len``), one class per kind
(``IndexConfig.kind``), chosen once by :func:`choose_kind`:

- ``flat`` (:class:`FlatIndex`): exact ``IndexIDMap2(IndexFlatIP)``; ``auto`` up to ``exact_max`` songs.
- ``ivf`` (:class:`IVFIndex`): ``IndexIVFFlat``, ``nprobe`` of ``nlist`` lists per query;
  ``auto`` past ``exact_max`` up to ``ivfpq_min``.
- ``ivfpq`` (:class:`IVFPQIndex`): 4-bit PQ fast-scan candidates re-ranked exactly against
  the full vectors; ``auto`` past ``ivfpq_min``, where the others cost too much memory or time.
- ``hnsw`` (:class:`HNSWIndex`): ``IndexIDMap2(IndexHNSWFlat)``; a removal rebuilds the graph.

With ``cfg.use_gpu`` and a faiss built with GPU support, flat and ivf search on a GPU
clone of the CPU index (:class:`GpuMirror`), refreshed after each change.

:class:`VectorIndex` is what callers hold: ids are unique and :meth:`VectorIndex.add` is
an upsert. On disk (:mod:`recsys.index.persist`) a directory holds ``index.faiss`` and
``index.json``; :meth:`VectorIndex.load` raises a subclass of :class:`IndexUnavailableError`
when the index is missing, stale or corrupt, and :func:`load_or_rebuild` then rebuilds
it from the catalog.

    recsys/index/
        checks.py        input checks, once for every kind
        kinds.py         the contract; flat, ivf, hnsw
        ivfpq.py         ivfpq: fast-scan candidates + exact re-rank
        gpu.py           the GPU clone of a flat or ivf index
        builder.py       choose_kind, new_index, from_faiss
        persist.py       index.faiss + index.json: checksum, version, fingerprint, atomic writes
        vector_index.py  VectorIndex, load_or_rebuild
"""

from recsys.index.builder import KINDS, build_backend, choose_kind, from_faiss, new_index
from recsys.index.gpu import GPU_KINDS, GpuMirror, gpu_available, on_device
from recsys.index.ivfpq import IVFPQ_LISTS_PER_SQRT_N, IVFPQIndex
from recsys.index.kinds import FlatIndex, HNSWIndex, IndexBackend, IndexKind, IVFIndex, default_nlist
from recsys.index.persist import (
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    CorruptIndexError,
    IndexMissingError,
    IndexUnavailableError,
    StaleIndexError,
)
from recsys.index.vector_index import VectorIndex, load_or_rebuild

__all__ = [
    "FORMAT_VERSION",
    "GPU_KINDS",
    "INDEX_FILE",
    "IVFPQ_LISTS_PER_SQRT_N",
    "KINDS",
    "META_FILE",
    "CorruptIndexError",
    "FlatIndex",
    "GpuMirror",
    "HNSWIndex",
    "IVFIndex",
    "IVFPQIndex",
    "IndexBackend",
    "IndexKind",
    "IndexMissingError",
    "IndexUnavailableError",
    "StaleIndexError",
    "VectorIndex",
    "build_backend",
    "choose_kind",
    "default_nlist",
    "from_faiss",
    "gpu_available",
    "load_or_rebuild",
    "new_index",
    "on_device",
]
