"""IVF-PQ fast-scan candidates re-ranked exactly: the kind for catalogs too large for IVF-Flat.

4-bit PQ codes (``IndexIVFPQFastScan``, song ids, `nprobe` lists visited) propose
``k * refine_factor`` candidates, re-ranked by exact inner product against the full
vectors kept by song id in an ``IndexIDMap2(IndexFlatIP)``. Both parts live in one
``IndexRefine`` so they save and load as one file, but the re-rank is done here:
faiss's ``IndexRefine.search`` expects the candidates to be row numbers, not song ids.
``IndexRefine`` has no ``add_with_ids`` or ``remove_ids``, so both parts are changed
side by side.
"""

from __future__ import annotations

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index.kinds import IndexKind, default_nlist, positive, training_sample

PQ_BITS = 4  # fast-scan codes: 16 centroids per sub-quantizer, distances from SIMD lookup tables
IVFPQ_LISTS_PER_SQRT_N = 1  # fewer, longer lists than ivf: fast-scan codes are cheap to scan


def _fast_scan_base(index: faiss.IndexRefine) -> faiss.Index:
    base = faiss.downcast_index(index.base_index)
    if isinstance(base, faiss.IndexPreTransform):
        base = faiss.downcast_index(base.index)
    return base


def _remove_from_fast_scan(ivf: faiss.IndexIVF, ids: np.ndarray) -> int:
    """remove_ids on an IVF fast-scan index, then zero the code slots it freed.

    faiss moves each list's last codes into the holes and shrinks the list, but leaves
    the old codes in the freed slots of the last 32-code block; the next add ORs its
    4-bit codes into those slots (pq4_pack_codes_range assumes zeros), so songs added
    after a removal would get corrupt codes and not be found.
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


class IVFPQIndex(IndexKind):
    """``IndexRefine(IVFPQFastScan, IndexIDMap2(IndexFlatIP))`` searched as candidates + exact re-rank."""

    name = "ivfpq"
    trains = True

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        if not isinstance(index, faiss.IndexRefine):
            return False
        store = faiss.downcast_index(index.refine_index)
        return (
            isinstance(_fast_scan_base(index), faiss.IndexIVFPQFastScan)
            and isinstance(store, faiss.IndexIDMap2)
            and isinstance(faiss.downcast_index(store.index), faiss.IndexFlatIP)
        )

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> IVFPQIndex:
        """PQ needs d to be a multiple of pq_dims: otherwise the vectors are zero-padded
        (RemapDimensionsTransform), which changes no inner product."""
        nlist = cfg.nlist or default_nlist(len(xb), IVFPQ_LISTS_PER_SQRT_N)
        sample = training_sample(xb, nlist, seed)
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
        return cls(index)

    def _full(self) -> faiss.IndexIDMap2:
        """The full vectors, by song id."""
        return faiss.downcast_index(self._index.refine_index)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        self._index.base_index.add_with_ids(xb, ids)
        self._index.refine_index.add_with_ids(xb, ids)
        self._index.ntotal = self._index.refine_index.ntotal

    def remove(self, ids: np.ndarray) -> int:
        removed = _remove_from_fast_scan(faiss.extract_index_ivf(self._index), ids)
        removed_full = int(self._index.refine_index.remove_ids(faiss.IDSelectorBatch(ids)))
        if removed != removed_full:
            raise RuntimeError(f"ivfpq parts disagree: {removed} PQ codes but {removed_full} vectors removed")
        self._index.ntotal = self._index.refine_index.ntotal
        return removed

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k * refine_factor PQ candidates per query, re-ranked by exact inner product."""
        _, C = self._index.base_index.search(xq, int(k * self._index.k_factor))
        full = self._index.refine_index
        S = np.full(C.shape, -np.inf, dtype=np.float32)
        for q, found in enumerate(C >= 0):  # usually one query: one (candidates, d) @ (d,) product
            S[q, found] = full.reconstruct_batch(C[q, found]) @ xq[q]
        top = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(S, top, axis=1), np.take_along_axis(C, top, axis=1)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._full().id_map)

    def configure(self, cfg: IndexConfig) -> None:
        self.nprobe = cfg.pq_nprobe
        self.refine_factor = cfg.refine_factor

    def problem(self) -> str | None:
        raw = self._index
        if raw.ntotal == raw.base_index.ntotal == raw.refine_index.ntotal:
            return None
        return (
            f"ivfpq parts disagree: {raw.base_index.ntotal} PQ codes, "
            f"{raw.refine_index.ntotal} full vectors, {raw.ntotal} in all"
        )

    @property
    def nlist(self) -> int | None:
        return int(faiss.extract_index_ivf(self._index).nlist)

    @property
    def nprobe(self) -> int | None:
        return int(faiss.extract_index_ivf(self._index).nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        faiss.extract_index_ivf(self._index).nprobe = positive("nprobe", value)

    @property
    def refine_factor(self) -> int | None:
        return int(self._index.k_factor)

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"refine_factor must be >= 1, got {value}")
        self._index.k_factor = float(value)
