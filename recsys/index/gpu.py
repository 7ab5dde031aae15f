"""A GPU copy of a flat or IVF index, cloned from the CPU index with ``faiss.index_cpu_to_gpu``.

The CPU index stays the source of truth: changes go to it, and the GPU copy is cloned
again at the next search after a change; files are always written from the CPU index.
faiss-gpu clones IndexIDMap2(IndexFlatIP) and IndexIVFFlat, not HNSW, fast-scan PQ or
IndexRefine, so the other kinds search on the CPU.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from recsys.config import IndexConfig
from recsys.index.kinds import IndexBackend

GPU_KINDS = ("flat", "ivf")
GPU_MAX_K = 2048  # faiss-gpu's k-selection returns at most this many results per query

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    """Whether this faiss was built with GPU support and sees a CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def for_device(cfg: IndexConfig, device: str) -> IndexConfig:
    """`cfg` as the compute device asked for (auto, cpu, cuda) wants it: 'cpu' keeps FAISS off the GPU too."""
    if device == "cpu" and cfg.use_gpu:
        return cfg.model_copy(update={"use_gpu": False})
    return cfg


def on_device(backend: IndexBackend, use_gpu: bool) -> IndexBackend:
    """`backend` searched on a GPU copy when asked for, possible for its kind and available."""
    if not use_gpu or not gpu_available():
        return backend
    if backend.name not in GPU_KINDS:
        log.info("index kind %r searches on CPU: faiss-gpu cannot clone it", backend.name)
        return backend
    return GpuMirror(backend)


class GpuMirror:
    """The contract of the kind it wraps, with searches on a GPU clone of its CPU index."""

    max_k = GPU_MAX_K

    def __init__(self, cpu: IndexBackend, device: int = 0) -> None:
        self.cpu = cpu
        self.device = device
        self._resources = None  # faiss.StandardGpuResources, made at the first search
        self._copy: faiss.Index | None = None  # dropped after every change

    def _changed(self) -> None:
        self._copy = None

    @property
    def name(self) -> str:
        return self.cpu.name

    @property
    def index(self) -> faiss.Index:
        return self.cpu.index

    @property
    def d(self) -> int:
        return self.cpu.d

    @property
    def nlist(self) -> int | None:
        return self.cpu.nlist

    @property
    def trained_n(self) -> int | None:
        return self.cpu.trained_n

    def __len__(self) -> int:
        return len(self.cpu)

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        self.cpu.add(ids, xb)
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        removed = self.cpu.remove(ids)
        self._changed()
        return removed

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._copy is None:
            if self._resources is None:
                self._resources = faiss.StandardGpuResources()
            self._copy = faiss.index_cpu_to_gpu(self._resources, self.device, self.cpu.index)
        return self._copy.search(xq, k)

    def ids(self) -> np.ndarray:
        return self.cpu.ids()

    def configure(self, cfg: IndexConfig) -> None:
        self.cpu.configure(cfg)
        self._changed()

    def problem(self) -> str | None:
        return self.cpu.problem()

    @property
    def nprobe(self) -> int | None:
        return self.cpu.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.cpu.nprobe = value
        self._changed()

    @property
    def refine_factor(self) -> int | None:
        return self.cpu.refine_factor

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        self.cpu.refine_factor = value
        self._changed()

    @property
    def ef_search(self) -> int | None:
        return self.cpu.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.cpu.ef_search = value
        self._changed()
