"""Runners: where the per-file and per-batch stages of an ingest job run.

A runner maps the stages of recsys.ingest over a stream of manifest entries:

    hash(entries)            -> sha256 or FileFailure per entry (cheap; before decoding)
    process(todo, stages)    -> batches of EmbeddedSong / PreparedSong / FileFailure

`LocalRunner` decodes and computes features in spawned worker processes and runs the
encoders batched in this process; `RayRunner` runs the same stage functions on a Ray
cluster through Ray Data (tasks for decoding, an actor pool holding the models). The
job (pipelines/ingest.py) writes the catalog and index from the batches it gets back,
so both runners produce the same rows.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from recsys.config import AudioConfig, FeatureConfig, SeparationConfig
from recsys.ingest import EmbeddedSong, FileFailure, PreparedSong, embed_prepared, hash_entry, prepare_file
from recsys.manifest import ManifestEntry

if TYPE_CHECKING:
    from recsys.embedding import Embedder

Result = EmbeddedSong | PreparedSong | FileFailure
RUNNERS = ("local", "ray")


@dataclass(frozen=True)
class Stages:
    """What to do with each file: decode (always); features and vectors when there is an `embedder`."""

    audio: AudioConfig
    features: FeatureConfig
    embedder: Embedder | None  # None: register only (PreparedSong results, no features)
    batch_size: int = 32
    separation: SeparationConfig | None = None
    device: str = "auto"  # what was asked for (auto, cpu, cuda): Ray actors use their GPU unless "cpu"

    @property
    def needs(self) -> frozenset[str]:
        """The features the workers compute: what the encoders read, nothing without an embedder."""
        return self.embedder.needs if self.embedder is not None else frozenset()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class Runner(Protocol):
    def hash(self, entries: list[ManifestEntry]) -> list[str | FileFailure]: ...

    def process(self, todo: Iterable[ManifestEntry], stages: Stages) -> Iterator[list[Result]]: ...

    def close(self) -> None: ...


def finish_batch(items: list[Result], embedder: Embedder | None) -> list[Result]:
    """Embed the good songs of a prepared batch (when there is an embedder); songs embedded by a worker
    already and failures pass through."""
    done: list[Result] = [e for e in items if isinstance(e, EmbeddedSong)]
    good = [p for p in items if isinstance(p, PreparedSong)]
    failed: list[Result] = [f for f in items if isinstance(f, FileFailure)]
    if embedder is None or not good:
        return [*done, *good, *failed]
    return [*done, *embed_prepared(embedder, good), *failed]


def prepare_or_fail(
    entry: ManifestEntry,
    audio: AudioConfig,
    features: FeatureConfig,
    separation: SeparationConfig | None,
    needs: frozenset[str] = frozenset(),
) -> PreparedSong | FileFailure:
    """prepare_file, with an unexpected exception recorded as that file's failure (cause 'unexpected'),
    so one odd file cannot stop a job of thousands; bad audio is already a FileFailure."""
    try:
        return prepare_file(entry, audio, features, separation, needs)
    except Exception as e:  # noqa: BLE001 - recorded with its type and message; the job goes on
        return FileFailure(str(entry.path), "unexpected", f"{entry.path}: {type(e).__name__}: {e}")


_worker_embedder: tuple[str, Embedder] | None = None  # a worker's copy of the job's encoders, by token


def prepare_and_embed(
    entry: ManifestEntry,
    audio: AudioConfig,
    features: FeatureConfig,
    separation: SeparationConfig | None,
    needs: frozenset[str],
    token: str,
    pickled_embedder: bytes,
) -> EmbeddedSong | PreparedSong | FileFailure:
    """prepare_or_fail, then the song's vectors, in a worker: on CPU the encoders cost as much as the
    features, so they run on every core instead of one. The encoders arrive pickled (under 1 MB) and are
    unpickled once per worker and job (`token`)."""
    global _worker_embedder
    item = prepare_or_fail(entry, audio, features, separation, needs)
    if not isinstance(item, PreparedSong):
        return item
    if _worker_embedder is None or _worker_embedder[0] != token:
        _worker_embedder = (token, pickle.loads(pickled_embedder))
    try:
        return embed_prepared(_worker_embedder[1], [item])[0]
    except Exception as e:  # noqa: BLE001 - recorded with its type and message; the job goes on
        return FileFailure(str(entry.path), "unexpected", f"{entry.path}: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------- local


_PR_SET_PDEATHSIG = 1


def init_worker() -> None:
    """Worker setup: one torch thread per process (the pool gives the parallelism), the modules its
    tasks run imported now (at pool start, not in the first file's time: about a second), and on
    Linux die with the parent, so a job killed with SIGKILL leaves no workers behind."""
    import torch

    import recsys.embedding
    import recsys.features  # noqa: F401 - imported for their cost, see above

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


class LocalRunner:
    """`workers` spawned processes decode and compute features; on CPU they embed each song too.

    At most `max_in_flight` files are submitted ahead of the batch being committed, so
    memory stays flat for any manifest length while the workers keep busy during commits.
    Results come back in submission order. On CPU with more than one worker, each worker
    also runs the encoders on its song (`prepare_and_embed`, one torch thread): they cost
    about as much as the features, and in this process they ran on one core while the
    others waited. On a GPU (or with one worker) the encoders run here, batched: a
    whole batch at once on the GPU, `cpu_embed_batch` songs at a time on CPU as they
    arrive, with `encoder_threads` torch threads (default: the cores the workers leave,
    at least 1; torch's thread team on small tensors costs far more than it gains when
    the workers fill the cores).
    """

    def __init__(
        self,
        workers: int | None = None,
        max_in_flight: int | None = None,
        encoder_threads: int | None = None,
        cpu_embed_batch: int = 8,
    ) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.max_in_flight = max_in_flight
        cores = os.cpu_count() or 1
        self.encoder_threads = encoder_threads or max(1, cores - (self.workers if self.workers > 1 else 0))
        self.cpu_embed_batch = cpu_embed_batch
        self._pool: ProcessPoolExecutor | None = None
        self._threads: ThreadPoolExecutor | None = None

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock the children.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
            )
        return self._pool

    def hash(self, entries: list[ManifestEntry]) -> list[str | FileFailure]:
        """Threads suffice: sha256 releases the GIL on large buffers, and reading is I/O."""
        if self.workers <= 1 or len(entries) <= 1:
            return [hash_entry(e) for e in entries]
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hash")
        return list(self._threads.map(hash_entry, entries))

    def process(self, todo: Iterable[ManifestEntry], stages: Stages) -> Iterator[list[Result]]:
        import torch

        def finish(batch: list[Result]) -> list[Result]:
            threads = torch.get_num_threads()
            torch.set_num_threads(self.encoder_threads)
            try:
                return finish_batch(batch, stages.embedder)
            finally:
                torch.set_num_threads(threads)

        # Embed what has arrived whenever the next file is not decoded yet (the encoders work
        # while the workers decode), at most `step` songs at once: a few on CPU, a batch on GPU.
        on_gpu = stages.embedder is not None and stages.embedder.device.type != "cpu"
        step = stages.batch_size if on_gpu or stages.embedder is None else min(stages.batch_size,
                                                                                 self.cpu_embed_batch)
        waiting: list[Result] = []
        done: list[Result] = []
        for item, next_ready in self._prepared(todo, stages):
            waiting.append(item)
            if len(waiting) >= step or not next_ready or len(done) + len(waiting) >= stages.batch_size:
                done += finish(waiting)
                waiting = []
            if len(done) >= stages.batch_size:
                yield done
                done = []
        if waiting:
            done += finish(waiting)
        if done:
            yield done

    def _prepared(
        self, todo: Iterable[ManifestEntry], stages: Stages
    ) -> Iterator[tuple[Result, bool]]:
        """(result, whether the next result is ready already) in submission order; on CPU with
        several workers the results are embedded songs already."""
        args = (stages.audio, stages.features, stages.separation, stages.needs)
        if self.workers <= 1:
            for entry in todo:
                yield prepare_or_fail(entry, *args), True  # decoded here, on demand
            return
        task: Any = prepare_or_fail
        if stages.embedder is not None and stages.embedder.device.type == "cpu":
            task = prepare_and_embed
            args = (*args, uuid.uuid4().hex, pickle.dumps(stages.embedder))
        limit = self.max_in_flight or max(2 * stages.batch_size, 4 * self.workers)
        pool = self._processes()
        pending: deque[Future] = deque()
        for entry in todo:
            pending.append(pool.submit(task, entry, *args))
            while len(pending) >= limit:
                result = pending.popleft().result()
                yield result, pending[0].done()
        while pending:
            result = pending.popleft().result()
            yield result, bool(pending) and pending[0].done()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None


# ---------------------------------------------------------------------------- Ray
# Rows travel through Ray Data as one binary column, "item": a pickled ManifestEntry,
# PreparedSong, EmbeddedSong or FileFailure. The stage functions are those of the local
# runner, so both runners give the same songs and vectors.


def _items(batch: dict[str, Any]) -> list[Any]:
    return [pickle.loads(x) for x in batch["item"]]


def _rows(items: list[Any]) -> dict[str, Any]:
    import numpy as np

    out = np.empty(len(items), dtype=object)
    out[:] = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
    return {"item": out}


def _ray_hash(batch: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {"i": np.asarray(batch["i"]), **_rows([hash_entry(e) for e in _items(batch)])}


def _ray_prepare(
    batch: dict[str, Any],
    audio: AudioConfig,
    features: FeatureConfig,
    separation: SeparationConfig | None,
    needs: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one CPU per task, as scheduled
    return _rows([prepare_or_fail(e, audio, features, separation, needs) for e in _items(batch)])


def _ray_prepare_and_embed(
    batch: dict[str, Any],
    audio: AudioConfig,
    features: FeatureConfig,
    separation: SeparationConfig | None,
    needs: frozenset[str],
    token: str,
    pickled_embedder: bytes,
) -> dict[str, Any]:
    """A CPU cluster's task: decode, features and both encoders in one task per few files (as the local
    runner's workers do), so no log-mel or pitch array crosses the object store."""
    import torch

    torch.set_num_threads(1)  # one CPU per task, as scheduled
    return _rows([prepare_and_embed(e, audio, features, separation, needs, token, pickled_embedder)
                  for e in _items(batch)])


class _RayEmbed:
    """An actor holding the encoders (on its GPU when it has one, unless the CPU was asked for);
    embeds a batch of prepared songs."""

    def __init__(self, embedder: Embedder, device: str = "auto") -> None:
        import torch

        use_gpu = device != "cpu" and torch.cuda.is_available()
        self.embedder = embedder.to("cuda") if use_gpu else embedder

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _rows(finish_batch(_items(batch), self.embedder))


class RayRunner:
    """Run the stages on a Ray cluster with Ray Data, a window of entries at a time.

    Each window is one dataset: `from_items` -> `map_batches(prepare)` (CPU tasks, a few
    files each) -> `map_batches(_RayEmbed, concurrency=n)` (an actor pool; one GPU per
    actor) -> streamed back with `iter_batches`. On a cluster without GPUs (or with
    device cpu) the tasks embed their own files too, as the local runner's workers do:
    one actor embedding for every decoding task was the bottleneck (docs/scaling.md). Audio paths
    (and a SQLite catalog) must be reachable from every node: use shared storage and
    PostgreSQL on a real cluster. Connects to `address` (None: the running Ray, else a
    new local one).
    """

    def __init__(
        self,
        address: str | None = None,
        embed_actors: int | None = None,
        window: int = 2048,
        files_per_task: int = 2,
        init_kwargs: dict[str, Any] | None = None,
        embed_in_tasks: bool | None = None,
    ) -> None:
        """`embed_in_tasks`: the decoding tasks embed their files too (None: when the cluster has no GPU
        or the device asked for is cpu); False: the actor pool embeds, as on GPU nodes."""
        if window < 1 or files_per_task < 1:
            raise ValueError(f"window and files_per_task must be >= 1, got {window} and {files_per_task}")
        self.address = address
        self.embed_actors = embed_actors
        self.window = window
        self.files_per_task = files_per_task
        self.init_kwargs = dict(init_kwargs or {})
        self.embed_in_tasks = embed_in_tasks
        self._started = False

    def _ray(self) -> Any:
        try:
            import ray
            import ray.data  # the runner needs Ray Data, not only Ray core
        except ImportError as e:
            from recsys.errors import MissingDependencyError

            raise MissingDependencyError("the Ray runner needs Ray Data, which is not installed",
                                         "pip install 'singer-recsys[ray]'") from e

        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, **self.init_kwargs)
            self._started = True
        return ray

    def hash(self, entries: list[ManifestEntry]) -> list[str | FileFailure]:
        if not entries:
            return []
        ray = self._ray()
        rows = [{"i": i, "item": pickle.dumps(e)} for i, e in enumerate(entries)]
        ds = ray.data.from_items(rows).map_batches(
            _ray_hash, batch_size=64, batch_format="numpy", num_cpus=1
        )
        out: list[str | FileFailure | None] = [None] * len(entries)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, item in zip(batch["i"], _items(batch)):
                out[int(i)] = item
        missing = [str(entries[i].path) for i, x in enumerate(out) if x is None]
        if missing:
            raise RuntimeError(f"Ray returned no hash for {len(missing)} files, e.g. {missing[:3]}")
        return out  # type: ignore[return-value]

    def process(self, todo: Iterable[ManifestEntry], stages: Stages) -> Iterator[list[Result]]:
        window: list[ManifestEntry] = []
        for entry in todo:
            window.append(entry)
            if len(window) >= self.window:
                yield from self._window(window, stages)
                window = []
        if window:
            yield from self._window(window, stages)

    def _window(self, entries: list[ManifestEntry], stages: Stages) -> Iterator[list[Result]]:
        ray = self._ray()
        ds = ray.data.from_items([{"item": pickle.dumps(e)} for e in entries])
        gpus = int(ray.cluster_resources().get("GPU", 0))
        in_tasks = self.embed_in_tasks if self.embed_in_tasks is not None else gpus == 0 or stages.device == "cpu"
        if stages.embedder is not None and in_tasks:
            ds = ds.map_batches(
                _ray_prepare_and_embed,
                batch_size=self.files_per_task,
                batch_format="numpy",
                num_cpus=1,
                fn_kwargs={"audio": stages.audio, "features": stages.features, "separation": stages.separation,
                           "needs": stages.needs, "token": uuid.uuid4().hex,
                           "pickled_embedder": pickle.dumps(stages.embedder.to("cpu"))},
            )
            for batch in ds.iter_batches(batch_size=stages.batch_size, batch_format="numpy"):
                yield _items(batch)
            return
        ds = ds.map_batches(
            _ray_prepare,
            batch_size=self.files_per_task,
            batch_format="numpy",
            num_cpus=1,
            fn_kwargs={"audio": stages.audio, "features": stages.features, "separation": stages.separation,
                       "needs": stages.needs},
        )
        if stages.embedder is not None:  # GPU nodes: an actor per GPU embeds whole batches
            actors = self.embed_actors or max(1, gpus)
            ds = ds.map_batches(
                _RayEmbed,
                fn_constructor_kwargs={"embedder": stages.embedder, "device": stages.device},
                concurrency=actors,
                batch_size=stages.batch_size,
                batch_format="numpy",
                num_gpus=1 if gpus else 0,
                num_cpus=0 if gpus else 1,
            )
        for batch in ds.iter_batches(batch_size=stages.batch_size, batch_format="numpy"):
            yield _items(batch)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_runner(kind: str, workers: int | None = None, address: str | None = None) -> Runner:
    """'local' (processes on this machine) or 'ray' (a Ray cluster at `address`, or a local one)."""
    if kind == "local":
        return LocalRunner(workers)
    if kind == "ray":
        return RayRunner(address=address)
    raise ValueError(f"unknown runner {kind!r}; valid: {', '.join(RUNNERS)}")
