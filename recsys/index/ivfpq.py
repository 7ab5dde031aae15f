"""IVF-PQ fast-scan candidates re-ranked from 8-bit codes: the kind for catalogs too large for IVF-Flat.

Two parts, sized for millions of songs (docs/benchmarks.md, "Vector index"):

- **Candidates**: the vectors rotated onto their ``pq_search_dims`` principal axes
  (``PCAMatrix`` with a random rotation that spreads the variance evenly over the PQ
  sub-quantizers; no centring, see :func:`_search_projection`), then 4-bit PQ codes in
  an ``IndexIVFPQFastScan`` keyed by song id, `nprobe` lists visited, ``k * refine_factor``
  candidates proposed.
- **Re-rank**: every full vector kept as 8-bit scalar-quantised codes by song id
  (``IndexIDMap2(IndexScalarQuantizer)``, d bytes a song instead of 4 d), the candidates
  decoded and scored by inner product with the query.

Both parts live in one ``IndexRefine`` so they save and load as one file, but the
re-rank is done here: faiss's ``IndexRefine.search`` expects the candidates to be row
numbers, not song ids. ``IndexRefine`` has no ``add_with_ids`` or ``remove_ids``, so both
parts are changed side by side. Scores are the 8-bit codes' inner products, within
about 1e-3 of the float32 ones; the ranking above the index re-scores from the catalog.
Files of the first layout (float32 re-rank store, no projection) still load and search.
"""

from __future__ import annotations

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index.kinds import IndexKind, default_nlist, positive, training_sample

PQ_BITS = 4  # fast-scan codes: 16 centroids per sub-quantizer, distances from SIMD lookup tables
IVFPQ_LISTS_PER_SQRT_N = 1  # fewer, longer lists than ivf: fast-scan codes are cheap to scan
STORE_RANGE_MARGIN = 0.02  # the 8-bit range reaches 2 % past the training sample's min and max per dimension
STORES = (faiss.IndexScalarQuantizer, faiss.IndexFlatIP)  # the re-rank store: 8-bit codes, or float32 (old files)
TABLE_SLOTS_PER_SONG = 4  # song id -> row by a table indexed by id while ids are this compact (catalog ids are)


def _search_projection(d: int, d_out: int, sample: np.ndarray) -> faiss.PCAMatrix:
    """x -> A x onto the sample's top `d_out` principal axes, randomly rotated, without the mean.

    PCA centres the data (x - mean); for inner products that would add a -q . mean term
    that is the same for every candidate but also a -x . mean term that is not, so the
    bias is dropped: the projection is linear and q . x is approximated by (Aq) . (Ax).
    """
    pca = faiss.PCAMatrix(d, d_out, 0, True)
    pca.train(sample)
    faiss.copy_array_to_vector(np.zeros(d_out, dtype=np.float32), pca.b)
    return pca


def _candidate_index(d: int, nlist: int, cfg: IndexConfig, sample: np.ndarray) -> faiss.Index:
    """The trained fast-scan part: projection (when d > pq_search_dims), zero-padding to a
    multiple of pq_dims, IVF-PQ fast-scan. Returns the outermost faiss index."""
    chain: list[faiss.VectorTransform] = []
    d_in = d
    if cfg.pq_search_dims is not None and d > cfg.pq_search_dims:
        chain.append(_search_projection(d, cfg.pq_search_dims, sample))
        d_in = cfg.pq_search_dims
    m = -(-d_in // cfg.pq_dims)
    d_pq = m * cfg.pq_dims
    if d_pq != d_in:
        chain.append(faiss.RemapDimensionsTransform(d_in, d_pq, False))
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(d_pq), d_pq, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = cfg.pq_nprobe
    if not chain:
        ivf.train(sample)
        return ivf
    base = faiss.IndexPreTransform(ivf)
    for transform in reversed(chain):  # prepend_transform: the first in `chain` applies first
        base.prepend_transform(transform)
    base.train(sample)  # the projection is trained already; the padding needs none; the IVF-PQ trains
    return base


def _code_store(d: int, sample: np.ndarray) -> faiss.IndexIDMap2:
    """The re-rank store: 8-bit codes per dimension (range from the sample), by song id."""
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.sq.rangestat_arg = STORE_RANGE_MARGIN
    sq.train(sample)
    return faiss.IndexIDMap2(sq)


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


class _StoreRows:
    """Song id -> row of the re-rank store, kept beside the store's own id map.

    IndexIDMap2 keeps this map in a hash table Python cannot read in bulk, and its
    reconstruct_batch decodes one vector per call; a numpy lookup, one gather of the
    candidates' codes and one batch decode re-rank 160 candidates at 1M songs in about
    half the time (docs/benchmarks.md). Catalog song ids are compact (autoincrement), so
    the lookup is a table indexed by id, 4 bytes a slot, updated in place by adds and
    removals; ids too sparse for a table use a sorted copy and a binary search
    (12 bytes a song), remade after a change.
    """

    def __init__(self, id_map: np.ndarray) -> None:
        n = len(id_map)
        top = int(id_map.max()) + 1 if n else 0
        self.table: np.ndarray | None = None
        if top <= TABLE_SLOTS_PER_SONG * n + 1024:
            self.table = np.full(top, -1, dtype=np.int32)
            self.table[id_map] = np.arange(n, dtype=np.int32)
        else:
            order = np.argsort(id_map, kind="stable")
            self._sorted_ids, self._rows = id_map[order], order.astype(np.int32)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Rows of (m,) song ids that are in the store."""
        if self.table is not None:
            return self.table[ids]
        return self._rows[np.searchsorted(self._sorted_ids, ids)]

    def present(self, ids: np.ndarray) -> np.ndarray:
        """(m,) bool: which of the ids are in the store."""
        if self.table is not None:
            inside = ids < len(self.table)
            inside[inside] = self.table[ids[inside]] >= 0
            return inside
        at = np.minimum(np.searchsorted(self._sorted_ids, ids), max(0, len(self._sorted_ids) - 1))
        return (self._sorted_ids[at] == ids) if len(self._sorted_ids) else np.zeros(len(ids), bool)

    def appended(self, ids: np.ndarray, first_row: int, n: int) -> bool:
        """After `ids` were added as rows first_row.. of a store now holding `n`; False: remake me."""
        if self.table is None:
            return False
        top = int(ids.max()) + 1
        if top > TABLE_SLOTS_PER_SONG * n + 1024:
            return False  # too sparse for a table now
        if top > len(self.table):
            grown = np.full(max(top, len(self.table) + len(self.table) // 4), -1, dtype=np.int32)
            grown[: len(self.table)] = self.table
            self.table = grown
        self.table[ids] = first_row + np.arange(len(ids), dtype=np.int32)
        return True

    def removed(self, ids: np.ndarray) -> bool:
        """After the store removed `ids` (all present) and closed the gaps in order; False: remake me."""
        if self.table is None:
            return False
        gone = np.sort(self.table[ids])
        self.table[ids] = -1
        kept = self.table >= 0
        self.table[kept] -= np.searchsorted(gone, self.table[kept]).astype(np.int32)
        return True


class IVFPQIndex(IndexKind):
    """``IndexRefine(projection -> IVFPQFastScan, IndexIDMap2(IndexScalarQuantizer))``:
    fast-scan candidates re-ranked from 8-bit codes."""

    name = "ivfpq"
    trains = True

    def __init__(self, index: faiss.Index) -> None:
        super().__init__(index)
        self._rows: _StoreRows | None = None  # made when first needed

    @classmethod
    def matches(cls, index: faiss.Index) -> bool:
        if not isinstance(index, faiss.IndexRefine):
            return False
        store = faiss.downcast_index(index.refine_index)
        return (
            isinstance(_fast_scan_base(index), faiss.IndexIVFPQFastScan)
            and isinstance(store, faiss.IndexIDMap2)
            and isinstance(faiss.downcast_index(store.index), STORES)
        )

    @classmethod
    def create(cls, d: int, xb: np.ndarray, cfg: IndexConfig, seed: int = 0) -> IVFPQIndex:
        """Projection, lists, PQ codebooks and the 8-bit ranges all train on one sample of `xb`."""
        nlist = cfg.nlist or default_nlist(len(xb), IVFPQ_LISTS_PER_SQRT_N)
        sample = training_sample(xb, nlist, seed)
        index = faiss.IndexRefine(_candidate_index(d, nlist, cfg, sample), _code_store(d, sample))
        index.k_factor = cfg.refine_factor
        return cls(index)

    def _full(self) -> faiss.IndexIDMap2:
        """The re-rank store: every song's vector (8-bit codes), by song id."""
        return faiss.downcast_index(self._index.refine_index)

    def _store_rows(self) -> _StoreRows:
        if self._rows is None:
            self._rows = _StoreRows(self.ids())
        return self._rows

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        rows = self._store_rows()
        first_row = int(self._index.refine_index.ntotal)
        self._index.base_index.add_with_ids(xb, ids)
        self._index.refine_index.add_with_ids(xb, ids)
        self._index.ntotal = self._index.refine_index.ntotal
        if not rows.appended(ids, first_row, int(self._index.ntotal)):
            self._rows = None

    def remove(self, ids: np.ndarray) -> int:
        """Only the ids present touch faiss (its removals scan every song): an upsert of new songs costs nothing."""
        rows = self._store_rows()
        ids = ids[rows.present(ids)]
        if len(ids) == 0:
            return 0
        removed = _remove_from_fast_scan(faiss.extract_index_ivf(self._index), ids)
        removed_full = int(self._index.refine_index.remove_ids(faiss.IDSelectorBatch(ids)))
        if removed != removed_full:
            raise RuntimeError(f"ivfpq parts disagree: {removed} PQ codes but {removed_full} vectors removed")
        self._index.ntotal = self._index.refine_index.ntotal
        if not rows.removed(ids):
            self._rows = None
        return removed

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k * refine_factor PQ candidates per query, re-ranked by inner product with their stored vectors."""
        _, C = self._index.base_index.search(xq, int(k * self._index.k_factor))
        store = faiss.downcast_index(self._full().index)
        rows = self._store_rows()
        codes = faiss.rev_swig_ptr(store.codes.data(), store.ntotal * store.code_size)  # a view, no copy
        codes = codes.reshape(store.ntotal, store.code_size)
        S = np.full(C.shape, -np.inf, dtype=np.float32)
        for q, found in enumerate(C >= 0):  # usually one query: one (candidates, d) @ (d,) product
            S[q, found] = store.sa_decode(codes[rows(C[q, found])]) @ xq[q]
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
