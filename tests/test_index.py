"""recsys.index against exact search, kind by kind, through changes and through save/load failures."""

from __future__ import annotations

import hashlib
import json

import faiss
import numpy as np
import pytest
from index_helpers import exact_search, recall_at_k, song_ids, synthetic_dataset

from recsys.config import IndexConfig
from recsys.index import (
    INDEX_FILE,
    KINDS,
    META_FILE,
    CorruptIndexError,
    FlatIndex,
    HNSWIndex,
    IndexMissingError,
    IndexUnavailableError,
    IVFIndex,
    IVFPQIndex,
    StaleIndexError,
    VectorIndex,
    build_backend,
    choose_kind,
    default_nlist,
    from_faiss,
    load_or_rebuild,
    new_index,
)

D_DIM = 192
K = 10


@pytest.fixture(scope="module")
def small():
    xb, xq = synthetic_dataset(2000, 50, 32, seed=3)
    return song_ids(2000), xb, xq


@pytest.fixture(scope="module")
def medium():
    xb, xq = synthetic_dataset(20_000, 200, D_DIM, seed=0)
    return song_ids(20_000), xb, xq


def flat_cfg(**kw) -> IndexConfig:
    return IndexConfig(kind="flat", use_gpu=False, **kw)


# ---------------------------------------------------------------- references


def test_exact_search_matches_plain_loop(small):
    ids, xb, xq = small
    D, I = exact_search(xb, ids, xq[:5], K)
    for q in range(5):
        scores = [float(xq[q] @ xb[j]) for j in range(len(xb))]
        order = sorted(range(len(xb)), key=lambda j: -scores[j])[:K]
        assert I[q].tolist() == [int(ids[j]) for j in order]
        np.testing.assert_allclose(D[q], [scores[j] for j in order], rtol=1e-5, atol=1e-6)


def test_recall_at_k():
    I_exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(I_exact, I_exact, 4) == 1.0
    assert recall_at_k(np.array([[4, 3, 9, 9], [9, 9, 9, 9]]), I_exact, 4) == 0.25
    assert recall_at_k(np.array([[1, 2], [5, 9]]), I_exact, 2) == 0.75


def test_synthetic_dataset_is_seeded_normalised_and_clustered():
    xb, xq = synthetic_dataset(1000, 10, 64, seed=5)
    xb2, _ = synthetic_dataset(1000, 10, 64, seed=5)
    assert xb.dtype == np.float32 and xb.shape == (1000, 64) and xq.shape == (10, 64)
    np.testing.assert_array_equal(xb, xb2)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1, atol=1e-5)
    top1 = (xq @ xb.T).max(axis=1)
    mean = (xq @ xb.T).mean(axis=1)
    assert (top1 > mean + 0.3).all()  # neighbours much closer than the average song


# ---------------------------------------------------------------- the kinds behind one contract

KIND_CLASSES = {"flat": FlatIndex, "ivf": IVFIndex, "ivfpq": IVFPQIndex, "hnsw": HNSWIndex}


def test_builder_picks_one_class_per_kind_from_config_and_size(small):
    _, xb, _ = small
    assert set(KINDS) == set(KIND_CLASSES)
    for kind, cls in KIND_CLASSES.items():
        backend = build_backend(xb, IndexConfig(kind=kind, use_gpu=False))
        assert type(backend) is cls and backend.name == kind and len(backend) == 0
    auto = IndexConfig(exact_max=500, ivfpq_min=1000, use_gpu=False)
    assert type(build_backend(xb[:500], auto)) is FlatIndex
    assert type(build_backend(xb[:1000], auto)) is IVFIndex
    assert type(build_backend(xb, auto)) is IVFPQIndex
    with pytest.raises(ValueError, match="unknown index kind 'auto'"):
        new_index("auto", xb, auto)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_each_kind_keeps_the_contract_on_its_own(small, kind):
    """add / search / ids / len / remove straight on the kind class, without VectorIndex around it."""
    ids, xb, xq = small
    backend = new_index(kind, xb, IndexConfig(kind=kind, nprobe=64, pq_nprobe=64, refine_factor=16))
    backend.add(ids, xb)
    assert len(backend) == len(ids) and backend.d == xb.shape[1]
    np.testing.assert_array_equal(np.sort(backend.ids()), np.sort(ids))
    _, I = backend.search(xq, K)
    assert recall_at_k(I, exact_search(xb, ids, xq, K)[1], K) >= 0.95
    assert backend.remove(ids[:100]) == 100 and len(backend) == len(ids) - 100
    assert not np.isin(backend.search(xb[:100], K)[1], ids[:100]).any()
    assert backend.problem() is None


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_from_faiss_recognises_each_kind(small, kind):
    _, xb, _ = small
    raw = new_index(kind, xb, IndexConfig(kind=kind)).index
    assert type(from_faiss(raw)) is KIND_CLASSES[kind]


@pytest.mark.parametrize(
    "raw, match",
    [
        (faiss.IndexLSH(8, 16), "unsupported faiss index IndexLSH"),
        (faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 4)), "inner product"),
    ],
    ids=["other-structure", "l2-metric"],
)
def test_from_faiss_rejects_other_indexes(raw, match):
    with pytest.raises(ValueError, match=match):
        from_faiss(raw)


def test_search_parameters_belong_to_their_kinds(small):
    ids, xb, _ = small
    hnsw = VectorIndex.build(ids, xb, IndexConfig(kind="hnsw", use_gpu=False))
    assert hnsw.nprobe is None and hnsw.nlist is None and hnsw.refine_factor is None
    hnsw.ef_search = 100
    assert hnsw.ef_search == 100
    hnsw.remove(ids[:3])  # the graph is rebuilt: its search parameter stays
    assert hnsw.ef_search == 100
    with pytest.raises(ValueError, match="ef_search must be > 0"):
        hnsw.ef_search = 0
    with pytest.raises(ValueError, match="kind='ivf' or 'ivfpq', this index is 'hnsw'"):
        hnsw.nprobe = 4
    ivf = VectorIndex.build(ids, xb, IndexConfig(kind="ivf", nlist=16, use_gpu=False))
    assert ivf.nlist == 16 and ivf.ef_search is None and ivf.refine_factor is None
    with pytest.raises(ValueError, match="nprobe must be > 0"):
        ivf.nprobe = 0
    with pytest.raises(ValueError, match="kind='hnsw', this index is 'ivf'"):
        ivf.ef_search = 8
    pq = VectorIndex.build(ids, xb, IndexConfig(kind="ivfpq", nlist=16, use_gpu=False))
    assert pq.nlist == 16
    with pytest.raises(ValueError, match="refine_factor must be >= 1"):
        pq.refine_factor = 0


# ---------------------------------------------------------------- search


def test_flat_equals_exact_and_returns_song_ids(small):
    ids, xb, xq = small
    index = VectorIndex.build(ids, xb, flat_cfg())
    assert index.kind == "flat" and index.d == 32 and len(index) == len(ids)
    D, I = index.search(xq, K)
    D0, I0 = exact_search(xb, ids, xq, K)
    assert D.shape == (len(xq), K) and D.dtype == np.float32 and I.dtype == np.int64
    assert set(I.ravel()) <= set(ids.tolist())
    assert recall_at_k(I, I0, K) == 1.0
    np.testing.assert_allclose(D, D0, atol=1e-5)
    # a base vector finds itself first, under its song id
    _, I_self = index.search(xb[:20], 1)
    np.testing.assert_array_equal(I_self[:, 0], ids[:20])


def test_ivf_recall_against_exact(medium):
    ids, xb, xq = medium
    index = VectorIndex.build(ids, xb, IndexConfig(kind="ivf", nprobe=32, use_gpu=False))
    assert index.kind == "ivf" and index.nprobe == 32
    _, I = index.search(xq, K)
    _, I0 = exact_search(xb, ids, xq, K)
    assert recall_at_k(I, I0, K) >= 0.95
    index.nprobe = 1
    _, I1 = index.search(xq, K)
    assert recall_at_k(I1, I0, K) < 0.95  # the set is not trivially easy


def test_ivfpq_recall_against_exact(medium):
    ids, xb, xq = medium
    cfg = IndexConfig(kind="ivfpq", nlist=128, pq_nprobe=16, refine_factor=8, use_gpu=False)
    index = VectorIndex.build(ids, xb, cfg)
    assert index.kind == "ivfpq" and index.nprobe == 16 and index.refine_factor == 8
    D, I = index.search(xq, K)
    _, I0 = exact_search(xb, ids, xq, K)
    assert recall_at_k(I, I0, K) >= 0.95
    rows = np.searchsorted(ids, I, sorter=np.argsort(ids))
    rows = np.argsort(ids)[rows]  # row of each returned song id
    np.testing.assert_array_equal(ids[rows], I)
    exact_scores = np.einsum("qd,qkd->qk", xq, xb[rows])
    error = np.abs(D - exact_scores)  # re-ranked from 8-bit codes of every dimension: near-exact scores
    assert error.mean() < 2e-3 and error.max() < 2e-2, (error.mean(), error.max())
    assert np.mean(I[:, 0] == I0[:, 0]) >= 0.95  # ... and the best song is the exact best
    assert (np.diff(D, axis=1) <= 0).all()  # best first
    index.refine_factor = 1  # PQ order alone
    _, I1 = index.search(xq, K)
    assert recall_at_k(I1, I0, K) < 0.95  # the re-rank is what reaches the target


def test_ivfpq_pads_dimensions_pq_cannot_split(small):
    ids, xb, xq = small
    xb30, xq30 = xb[:, :30].copy(), xq[:, :30].copy()  # 30 is no multiple of pq_dims=4
    xb30 /= np.linalg.norm(xb30, axis=1, keepdims=True)
    xq30 /= np.linalg.norm(xq30, axis=1, keepdims=True)
    index = VectorIndex.build(ids, xb30, IndexConfig(kind="ivfpq", refine_factor=32, use_gpu=False))
    assert index.kind == "ivfpq" and index.d == 30
    _, I = index.search(xq30, K)
    assert recall_at_k(I, exact_search(xb30, ids, xq30, K)[1], K) >= 0.95


def _chain(index: VectorIndex) -> list[str]:
    """Class names of the ivfpq candidate part's transforms, then of its store, e.g. ['PCAMatrix', ...]."""
    refine = index._backend.index
    base = faiss.downcast_index(refine.base_index)
    names = []
    if isinstance(base, faiss.IndexPreTransform):
        names = [type(faiss.downcast_VectorTransform(base.chain.at(i))).__name__ for i in range(base.chain.size())]
    return names + [type(faiss.downcast_index(faiss.downcast_index(refine.refine_index).index)).__name__]


def test_ivfpq_searches_principal_axes_and_stores_8_bit_codes(medium):
    ids, xb, xq = medium  # d=192
    _, I0 = exact_search(xb, ids, xq, K)
    projected = VectorIndex.build(ids, xb, IndexConfig(kind="ivfpq", nlist=64, pq_search_dims=64, use_gpu=False))
    whole = VectorIndex.build(ids, xb, IndexConfig(kind="ivfpq", nlist=64, pq_search_dims=None, use_gpu=False))
    assert _chain(projected) == ["PCAMatrix", "IndexScalarQuantizer"]
    assert _chain(whole) == ["IndexScalarQuantizer"]
    for index in (projected, whole):
        _, I = index.search(xq, K)
        assert recall_at_k(I, I0, K) >= 0.95
        # 8-bit codes of the full vector (d bytes), PQ codes, ids: well under the 4 d bytes of float32
        assert index.nbytes() / len(index) < D_DIM + 120 < 4 * D_DIM
    assert projected.nbytes() < whole.nbytes()  # 32 codes of 2 dims instead of 96


@pytest.mark.parametrize("dense", [True, False])
def test_ivfpq_row_lookup_follows_adds_and_removals(dense):
    """The id -> store row table is updated in place (dense ids, as the catalog's) or remade (sparse ids);
    either way it must equal one made afresh from the store after every change."""
    from recsys.index.ivfpq import _StoreRows

    xb, _ = synthetic_dataset(3000, 1, 32, seed=5)
    ids = np.arange(1, 3001, dtype=np.int64) if dense else song_ids(3000)
    index = VectorIndex.build(ids[:2000], xb[:2000], IndexConfig(kind="ivfpq", nlist=16, pq_nprobe=16, use_gpu=False))
    backend = index._backend
    row_of = {int(i): r for r, i in enumerate(ids)}
    rng = np.random.default_rng(0)
    for step in range(6):
        if step % 2 == 0:
            gone = rng.choice(index.ids(), 300, replace=False)
            assert index.remove(gone) == 300
        else:
            new = rng.choice(ids, 400, replace=False)  # some present (upserts), some absent
            index.add(new, xb[[row_of[int(i)] for i in new]])
        held = index.ids()
        assert (backend._store_rows().table is not None) == dense
        np.testing.assert_array_equal(backend._store_rows()(held), _StoreRows(backend.ids())(held))
        _, I = index.search(xb[np.isin(ids, held)][:50], 1)  # stored songs find themselves
        np.testing.assert_array_equal(I[:, 0], ids[np.isin(ids, held)][:50])
    assert index.remove(np.array([10**7, 10**7 + 1])) == 0  # absent ids: nothing touched


def test_ivfpq_of_the_first_layout_still_loads_and_searches(small, tmp_path):
    """Files written before the 8-bit store (float32 re-rank store, no projection) keep working."""
    ids, xb, xq = small
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(32), 32, 16, 8, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(xb)
    old = faiss.IndexRefine(ivf, faiss.IndexIDMap2(faiss.IndexFlatIP(32)))
    index = VectorIndex(from_faiss(old))
    index.add(ids, xb)
    index.nprobe, index.refine_factor = 16, 16
    index.save(tmp_path, "v1", "fp")
    loaded = VectorIndex.load(tmp_path, "v1", "fp")
    assert loaded.kind == "ivfpq" and _chain(loaded) == ["IndexFlatIP"]
    D, I = loaded.search(xq, K)
    D0, I0 = exact_search(xb, ids, xq, K)
    assert recall_at_k(I, I0, K) >= 0.95
    np.testing.assert_allclose(D[:, 0], D0[:, 0], atol=1e-5)  # float32 store: exact scores


def test_hnsw_recall_against_exact(small):
    ids, xb, xq = small
    index = VectorIndex.build(ids, xb, IndexConfig(kind="hnsw", use_gpu=False))
    assert index.kind == "hnsw"
    _, I = index.search(xq, K)
    assert recall_at_k(I, exact_search(xb, ids, xq, K)[1], K) >= 0.95


def test_auto_picks_exact_up_to_exact_max(small):
    ids, xb, _ = small
    assert choose_kind(len(ids), IndexConfig(exact_max=len(ids))) == "flat"
    assert choose_kind(len(ids) + 1, IndexConfig(exact_max=len(ids))) == "ivf"
    assert choose_kind(10, IndexConfig(kind="hnsw")) == "hnsw"
    index = VectorIndex.build(ids, xb, IndexConfig(exact_max=1000, use_gpu=False))
    assert index.kind == "ivf"
    assert index.nprobe == IndexConfig().nprobe
    assert default_nlist(len(ids)) <= len(ids) // 39


def test_auto_picks_ivfpq_past_ivfpq_min(small):
    ids, xb, _ = small
    cfg = IndexConfig(exact_max=500, ivfpq_min=1000, use_gpu=False)
    assert [choose_kind(n, cfg) for n in (500, 501, 1000, 1001)] == ["flat", "ivf", "ivf", "ivfpq"]
    assert choose_kind(10**7, IndexConfig(kind="ivf")) == "ivf"  # still selectable
    assert choose_kind(10**7, IndexConfig()) == "ivfpq"
    assert choose_kind(100, IndexConfig(exact_max=1000, ivfpq_min=10)) == "flat"  # exact first
    index = VectorIndex.build(ids, xb, cfg)
    assert index.kind == "ivfpq"
    assert index.nprobe == cfg.pq_nprobe and index.refine_factor == cfg.refine_factor


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_k_larger_than_n_pads_with_minus_one(kind):
    xb, xq = synthetic_dataset(100, 3, 16, seed=2)
    ids = song_ids(100)
    index = VectorIndex.build(ids, xb, IndexConfig(kind=kind, nlist=2, nprobe=2, use_gpu=False))
    D, I = index.search(xq, 150)
    assert D.shape == I.shape == (3, 150)
    assert (I[:, 100:] == -1).all() and np.isneginf(D[:, 100:]).all()
    for row in I:
        assert sorted(row[:100].tolist()) == sorted(ids.tolist())


def test_empty_index_returns_no_results():
    index = VectorIndex.build(np.empty(0, np.int64), np.empty((0, 8), np.float32), flat_cfg())
    assert len(index) == 0 and index.d == 8
    D, I = index.search(np.ones((2, 8), np.float32), 3)
    assert (I == -1).all() and np.isneginf(D).all()


# ---------------------------------------------------------------- changes


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_add_remove_keep_ids_consistent(small, kind):
    ids, xb, xq = small
    cfg = IndexConfig(kind=kind, nprobe=64, pq_nprobe=64, use_gpu=False)
    index = VectorIndex.build(ids[:1500], xb[:1500], cfg)
    index.add(ids[1500:], xb[1500:])
    np.testing.assert_array_equal(index.ids(), np.sort(ids))

    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already removed: ignored
    kept = np.setdiff1d(ids, gone)
    np.testing.assert_array_equal(index.ids(), np.sort(kept))
    _, I = index.search(np.concatenate([xq, xb[::3]]), K)  # query with the removed songs themselves
    assert not np.isin(I, gone).any()
    keep_mask = ~np.isin(ids, gone)
    _, I0 = exact_search(xb[keep_mask], ids[keep_mask], xq, K)
    assert recall_at_k(I[: len(xq)], I0, K) >= 0.95

    back = gone[:50]
    rows = np.flatnonzero(np.isin(ids, back))
    index.add(ids[rows], xb[rows])
    _, I_back = index.search(xb[rows], 1)
    np.testing.assert_array_equal(I_back[:, 0], ids[rows])
    assert len(index) == len(kept) + len(back)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_add_existing_id_replaces_vector(small, kind):
    ids, xb, _ = small
    index = VectorIndex.build(ids, xb, IndexConfig(kind=kind, nprobe=64, pq_nprobe=64, use_gpu=False))
    song, other = ids[7], 42  # move song 7 onto the vector of row 42
    assert index.upsert(np.array([song]), xb[[other]]) == 1
    assert len(index) == len(ids)
    D, I = index.search(xb[[other]], 2)
    assert set(I[0].tolist()) == {int(song), int(ids[other])}
    np.testing.assert_allclose(D[0], 1.0, atol=1e-2 if kind == "ivfpq" else 1e-5)  # ivfpq: 8-bit codes
    assert D[0, 0] == D[0, 1]  # one vector, one score
    _, I_old = index.search(xb[[7]], 1)
    assert I_old[0, 0] != song


def test_duplicate_ids_in_one_batch_rejected(small):
    _, xb, _ = small
    with pytest.raises(ValueError, match="repeat"):
        VectorIndex.build(np.array([5, 6, 5]), xb[:3], flat_cfg())


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "ids, xb, match",
    [
        (np.arange(3), np.ones((3, 4, 1), np.float32), r"\(3, 4, 1\)"),
        (np.arange(3), np.ones(4, np.float32), r"\(4,\)"),
        (np.arange(6).reshape(3, 2), np.eye(3, dtype=np.float32), r"\(3, 2\)"),
        (np.arange(2), np.eye(3, dtype=np.float32), r"\(2,\).*\(3, 3\)"),
        (np.arange(3), np.eye(3, dtype=np.float64), "float32"),
        (np.arange(3.0), np.eye(3, dtype=np.float32), "integer"),
        (np.array([0, -1, 2]), np.eye(3, dtype=np.float32), ">= 0"),
        (np.arange(3), 2 * np.eye(3, dtype=np.float32), "normalised"),
        (np.arange(3), np.full((3, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_inputs_raise_value_error(ids, xb, match):
    with pytest.raises(ValueError, match=match):
        VectorIndex.build(ids, xb, flat_cfg())


def test_bad_query_raises_value_error(small):
    ids, xb, xq = small
    index = VectorIndex.build(ids, xb, flat_cfg())
    with pytest.raises(ValueError, match=r"\(n, 32\).*\(5, 16\)"):
        index.search(np.ones((5, 16), np.float32), K)
    with pytest.raises(ValueError, match=r"\(n, 32\).*\(32,\)"):
        index.search(xq[0], K)
    with pytest.raises(ValueError, match="k must be > 0"):
        index.search(xq, 0)
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        index.add(np.array([1]), np.ones((1, 16), np.float32) / 4)
    with pytest.raises(ValueError, match="kind='ivf'"):
        index.nprobe = 4
    with pytest.raises(ValueError, match="kind='ivfpq'"):
        index.refine_factor = 4


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_without_data_rejected(kind):
    with pytest.raises(ValueError, match="0 vectors"):
        VectorIndex.build(np.empty(0, np.int64), np.empty((0, 8), np.float32), IndexConfig(kind=kind))


# ---------------------------------------------------------------- persistence


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_load_round_trip(tmp_path, small, kind):
    ids, xb, xq = small
    index = VectorIndex.build(
        ids, xb, IndexConfig(kind=kind, nprobe=8, pq_nprobe=8, refine_factor=5, use_gpu=False)
    )
    index.remove(ids[:10])
    index.save(tmp_path, "v1", "fp1")
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["kind"] == kind and meta["d"] == 32 and meta["n"] == len(ids) - 10
    assert meta["model_version"] == "v1" and meta["fingerprint"] == "fp1" and len(meta["sha256"]) == 64
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    loaded = VectorIndex.load(tmp_path, "v1", "fp1")
    assert loaded.kind == kind and len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    D, I = index.search(xq, K)
    D2, I2 = loaded.search(xq, K)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    if kind == "ivf":
        assert loaded.nprobe == 8
        assert VectorIndex.load(tmp_path, "v1", "fp1", IndexConfig(kind="ivf", nprobe=3)).nprobe == 3
    if kind == "ivfpq":
        assert loaded.nprobe == 8 and loaded.refine_factor == 5
        tuned = VectorIndex.load(
            tmp_path, "v1", "fp1", IndexConfig(kind="ivfpq", pq_nprobe=3, refine_factor=2)
        )
        assert tuned.nprobe == 3 and tuned.refine_factor == 2


@pytest.fixture
def saved(tmp_path, small):
    ids, xb, _ = small
    VectorIndex.build(ids, xb, flat_cfg()).save(tmp_path, "v1", "fp1")
    return tmp_path


@pytest.fixture(params=["flat", "ivfpq"])
def saved_kind(request, tmp_path, small):
    """A saved index of each kind whose file holds more than one faiss object."""
    ids, xb, _ = small
    VectorIndex.build(ids, xb, IndexConfig(kind=request.param, use_gpu=False)).save(tmp_path, "v1", "fp1")
    return tmp_path


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "damage, error, match",
    [
        (lambda d: (d / INDEX_FILE).unlink(), IndexMissingError, INDEX_FILE),
        (lambda d: (d / META_FILE).unlink(), IndexMissingError, META_FILE),
        (lambda d: flip_bytes(d / INDEX_FILE), CorruptIndexError, "sha256"),
        (lambda d: truncate(d / INDEX_FILE), CorruptIndexError, "sha256"),
        (lambda d: truncate(d / META_FILE), CorruptIndexError, META_FILE),
    ],
    ids=["no-faiss", "no-json", "flipped", "truncated", "bad-json"],
)
def test_damaged_index_raises(saved_kind, damage, error, match):
    damage(saved_kind)
    with pytest.raises(error, match=match) as info:
        VectorIndex.load(saved_kind, "v1", "fp1")
    assert isinstance(info.value, IndexUnavailableError)


def test_unreadable_faiss_file_with_matching_checksum_is_corrupt(saved_kind):
    truncate(saved_kind / INDEX_FILE)
    meta = json.loads((saved_kind / META_FILE).read_text())
    meta["sha256"] = hashlib.sha256((saved_kind / INDEX_FILE).read_bytes()).hexdigest()
    (saved_kind / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CorruptIndexError, match="unreadable faiss index"):
        VectorIndex.load(saved_kind, "v1", "fp1")


def test_ivfpq_file_of_another_structure_is_corrupt(tmp_path, small):
    """A checksummed file whose faiss object is not an ivfpq (here an IVF-Flat) but whose metadata says so."""
    ids, xb, _ = small
    VectorIndex.build(ids, xb, IndexConfig(kind="ivf", use_gpu=False)).save(tmp_path, "v1", "fp1")
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["kind"] = "ivfpq"
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CorruptIndexError, match="'kind': 'ivf'"):
        VectorIndex.load(tmp_path, "v1", "fp1")


def test_ivf_index_whose_catalog_outgrew_ivfpq_min_is_stale(tmp_path, small):
    ids, xb, _ = small
    cfg = IndexConfig(exact_max=100, ivfpq_min=len(ids), use_gpu=False)
    VectorIndex.build(ids, xb, cfg).save(tmp_path, "v1", "fp1")
    assert VectorIndex.load(tmp_path, "v1", "fp1", cfg).kind == "ivf"
    with pytest.raises(StaleIndexError, match="asks for 'ivfpq'"):
        VectorIndex.load(tmp_path, "v1", "fp1", IndexConfig(exact_max=100, ivfpq_min=len(ids) - 1))


def test_an_ivf_index_whose_catalog_outgrew_its_training_is_retrained(tmp_path, small):
    ids, xb, xq = small
    cfg = IndexConfig(kind="ivf", nlist=8, use_gpu=False, retrain_growth=4.0)
    index = VectorIndex.build(ids[:400], xb[:400], cfg)
    assert index.trained_n == 400 and VectorIndex.build(ids, xb, flat_cfg()).trained_n is None
    index.add(ids[400:1600], xb[400:1600])  # 4 x its training: still fits
    index.save(tmp_path, "v1", "fp1")
    assert json.loads((tmp_path / META_FILE).read_text())["trained_n"] == 400
    assert VectorIndex.load(tmp_path, "v1", "fp1", cfg).trained_n == 400
    index.add(ids[1600:], xb[1600:])
    index.save(tmp_path, "v1", "fp2")
    with pytest.raises(StaleIndexError, match="trained for 400 songs and holds 2000, past index.retrain_growth=4 x"):
        VectorIndex.load(tmp_path, "v1", "fp2", cfg)
    assert len(VectorIndex.load(tmp_path, "v1", "fp2")) == 2000  # without a config: served as saved
    retrained, rebuilt = load_or_rebuild(tmp_path, "v1", "fp2", lambda: (ids, xb), cfg)
    assert rebuilt and retrained.trained_n == 2000 and len(retrained) == 2000
    np.testing.assert_array_equal(VectorIndex.load(tmp_path, "v1", "fp2", cfg).search(xq, K)[1],
                                  retrained.search(xq, K)[1])
    meta = json.loads((tmp_path / META_FILE).read_text())
    del meta["trained_n"]  # a file written before the size was recorded: trained for what it holds
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    assert VectorIndex.load(tmp_path, "v1", "fp2", cfg).trained_n == 2000


@pytest.mark.parametrize(
    "version, fingerprint, match", [("v2", "fp1", "model version 'v1'"), ("v1", "fp2", "fingerprint 'fp1'")]
)
def test_stale_index_raises(saved, version, fingerprint, match):
    with pytest.raises(StaleIndexError, match=match):
        VectorIndex.load(saved, version, fingerprint)


def test_index_of_another_kind_than_config_is_stale(saved, small):
    ids, _, _ = small
    with pytest.raises(StaleIndexError, match="asks for 'ivf'"):
        VectorIndex.load(saved, "v1", "fp1", IndexConfig(kind="ivf"))
    with pytest.raises(StaleIndexError, match="exact_max=100"):
        VectorIndex.load(saved, "v1", "fp1", IndexConfig(exact_max=100))  # catalog outgrew exact search
    assert len(VectorIndex.load(saved, "v1", "fp1", IndexConfig(exact_max=len(ids)))) == len(ids)


@pytest.mark.parametrize("damage", ["missing", "stale", "flipped", "truncated"])
def test_load_or_rebuild_rebuilds_and_saves(saved, small, damage):
    ids, xb, xq = small
    version = "v1"
    if damage == "missing":
        (saved / INDEX_FILE).unlink()
    elif damage == "stale":
        version = "v2"
    elif damage == "flipped":
        flip_bytes(saved / INDEX_FILE)
    else:
        truncate(saved / INDEX_FILE)
    calls, reasons = [], []

    def rebuild():
        calls.append(1)
        return ids[:500], xb[:500]

    index, rebuilt = load_or_rebuild(saved, version, "fp1", rebuild, flat_cfg(), on_rebuild=reasons.append)
    assert rebuilt and calls == [1] and len(index) == 500
    assert isinstance(reasons[0], IndexUnavailableError)
    loaded = VectorIndex.load(saved, version, "fp1")  # saved, and loads cleanly
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[:500]))
    again, rebuilt = load_or_rebuild(saved, version, "fp1", rebuild, flat_cfg())
    assert not rebuilt and calls == [1]
    np.testing.assert_array_equal(again.search(xq, K)[1], index.search(xq, K)[1])
