"""recsys.index's GPU clone (recsys/index/gpu.py) against a fake faiss-gpu: when it is cloned, refreshed, limited."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from index_helpers import exact_search, recall_at_k, song_ids, synthetic_dataset

from recsys.config import IndexConfig
from recsys.index import GpuMirror, VectorIndex, build_backend

K = 10


@pytest.fixture(scope="module")
def small():
    xb, xq = synthetic_dataset(2000, 50, 32, seed=3)
    return song_ids(2000), xb, xq


class _FakeGpu:
    """Stands in for faiss.StandardGpuResources; the 'GPU' copy is a CPU clone."""


@pytest.fixture
def fake_gpu(monkeypatch):
    """A faiss that reports one GPU; its 'GPU' copies are CPU clones, recorded by size."""
    copies = []

    def to_gpu(res, device, index):
        assert isinstance(res, _FakeGpu) and device == 0
        copies.append(index.ntotal)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "StandardGpuResources", _FakeGpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    return copies


def test_gpu_copy_is_refreshed_after_changes(fake_gpu, small):
    ids, xb, xq = small
    copies = fake_gpu
    index = VectorIndex.build(ids, xb, IndexConfig(kind="flat", use_gpu=True))
    index.search(xq, K)
    index.search(xq, K)
    assert copies == [len(ids)]  # copied once, reused
    index.remove(ids[:5])
    _, I = index.search(xb[:5], 1)
    assert copies == [len(ids), len(ids) - 5] and not np.isin(I, ids[:5]).any()
    cpu = VectorIndex.build(ids, xb, IndexConfig(kind="flat", use_gpu=False))
    cpu.search(xq, K)
    assert len(copies) == 2


def test_ivfpq_searches_on_cpu_even_with_a_gpu(monkeypatch, small):
    ids, xb, xq = small
    copies = []
    monkeypatch.setattr(faiss, "StandardGpuResources", _FakeGpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda *a: copies.append(a), raising=False)
    index = VectorIndex.build(ids, xb, IndexConfig(kind="ivfpq", refine_factor=16, use_gpu=True))
    _, I = index.search(xq, K)
    assert copies == []  # faiss-gpu cannot clone fast-scan PQ or IndexRefine: no GPU copy attempted
    assert recall_at_k(I, exact_search(xb, ids, xq, K)[1], K) >= 0.95


def test_ivf_gpu_copy_follows_nprobe_and_matches_cpu(fake_gpu, small):
    ids, xb, xq = small
    cfg = IndexConfig(kind="ivf", nlist=16, nprobe=4, use_gpu=True)
    gpu = VectorIndex.build(ids, xb, cfg)
    cpu = VectorIndex.build(ids, xb, cfg.model_copy(update={"use_gpu": False}))
    assert gpu.on_gpu and not cpu.on_gpu
    assert isinstance(build_backend(xb, cfg), GpuMirror)
    np.testing.assert_array_equal(gpu.search(xq, K)[1], cpu.search(xq, K)[1])
    gpu.nprobe = cpu.nprobe = 16
    assert gpu.nprobe == 16
    np.testing.assert_array_equal(gpu.search(xq, K)[1], cpu.search(xq, K)[1])
    assert fake_gpu == [len(ids), len(ids)]  # cloned again after the parameter changed
    gpu.add(ids[:3], xb[:3])  # an upsert is a change too
    gpu.search(xq[:1], K)
    assert len(fake_gpu) == 3


def test_gpu_search_returns_at_most_its_k_limit(fake_gpu):
    xb, xq = synthetic_dataset(2100, 2, 8, seed=4)
    index = VectorIndex.build(song_ids(2100), xb, IndexConfig(kind="flat", use_gpu=True))
    D, I = index.search(xq, 2100)
    assert I.shape == (2, 2100)
    assert (I[:, :2048] >= 0).all() and (I[:, 2048:] == -1).all() and np.isneginf(D[:, 2048:]).all()


def test_hnsw_is_not_cloned_and_a_loaded_index_gets_its_gpu_copy(fake_gpu, tmp_path, small):
    ids, xb, xq = small
    hnsw = VectorIndex.build(ids, xb, IndexConfig(kind="hnsw", use_gpu=True))
    hnsw.search(xq, K)
    assert fake_gpu == [] and not hnsw.on_gpu
    flat = VectorIndex.build(ids, xb, IndexConfig(kind="flat", use_gpu=True))
    flat.search(xq, K)
    flat.save(tmp_path, "v1", "fp1")  # written from the CPU index
    loaded = VectorIndex.load(tmp_path, "v1", "fp1", IndexConfig(kind="flat", exact_max=len(ids)))
    assert loaded.on_gpu
    np.testing.assert_array_equal(loaded.search(xq, K)[1], flat.search(xq, K)[1])
    assert fake_gpu == [len(ids), len(ids)]
    assert not VectorIndex.load(tmp_path, "v1", "fp1").on_gpu  # no cfg: CPU
