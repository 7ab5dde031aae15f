"""The batch ingestion job: manifest -> decode -> features -> vectors -> catalog and index.

    summary = run_ingest("songs/manifest.csv", settings, embed=True, runner=LocalRunner())

Stages, each a library function (recsys.ingest) mapped by a runner (pipelines.runners):

1. screen the manifest (bad rows, missing files, paths listed twice), a window at a time;
2. hash each file (sha256): a song already in the catalog (and, with `embed`, already
   embedded under the current model version) is skipped before it is decoded, so a
   re-run is a cheap no-op and a renamed file is not a new song;
3. decode and compute features (worker processes or Ray tasks);
4. embed (batched, in this process or in Ray actors holding the models);
5. commit the batch in one transaction (errors, songs, vectors), then add the committed
   vectors to the index and save it atomically with the fingerprint of the ids it holds.

Crash safety: the catalog is the truth and the index a cache of it. A job killed at
any moment loses at most its uncommitted batch; the next run skips what was committed,
and `load_or_rebuild` against the catalog's fingerprint rebuilds an index that lags or
was cut mid-save. Index updates take a file lock, and the job ends with that check, so
concurrent jobs leave an index that agrees with the catalog.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.runners import LocalRunner, Runner, Stages
from recsys import catalog
from recsys.config import Settings
from recsys.ingest import (
    EmbeddedSong,
    FileFailure,
    IngestSummary,
    PreparedSong,
    commit_batch,
    embedded_hashes,
    usable_entries,
)
from recsys.manifest import ManifestEntry, iter_manifest

KILL_ENV = "RECSYS_TEST_KILL_AT"  # tests: "<point>:<n>" SIGKILLs the job at the n-th time it reaches <point>
KILL_POINTS = ("before_commit", "after_commit", "after_index")
MAX_KEPT_FAILURES = 1000  # failure messages kept in the summary (all are counted and written to the catalog)


class MissingModelsError(RuntimeError):
    """Embedding was asked for, but the workspace has no trained models."""


@dataclass
class JobSummary(IngestSummary):
    """IngestSummary plus what the embedding stage and the index did."""

    embedded: int = 0  # songs given vectors (new songs, and registered songs that had none)
    model_version: str | None = None
    index_size: int | None = None
    index_rebuilt: bool = False  # the final check found the index disagreeing with the catalog
    audio_seconds: float = 0.0  # audio decoded by this run
    wall_seconds: float = 0.0
    batches: int = 0

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return super().as_dict() | {
            "embedded": self.embedded,
            "model_version": self.model_version,
            "index_size": self.index_size,
            "index_rebuilt": self.index_rebuilt,
            "audio_seconds": round(self.audio_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "batches": self.batches,
        }


@dataclass(frozen=True)
class BatchReport:
    """Progress after one committed batch (for a progress line)."""

    batch: int
    files: int  # results in this batch
    summary: JobSummary  # running totals


# ---------------------------------------------------------------------------- index


def ids_fingerprint(ids: np.ndarray) -> str:
    """The fingerprint an index is saved with: which song ids it holds (as Recommender.load_index)."""
    from recsys.training.checkpoint import catalog_fingerprint

    return catalog_fingerprint([(str(int(i)), "") for i in ids])


@contextmanager
def index_lock(index_dir: Path) -> Iterator[None]:
    """An exclusive lock on one index folder, across processes on this machine."""
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(index_dir.parent / f".{index_dir.name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LiveIndex:
    """The job's copy of the song index: committed vectors are added, saved every `save_every_s`."""

    def __init__(self, rec: Any, save_every_s: float) -> None:
        self.rec = rec
        self.save_every_s = save_every_s
        self.index: Any = None
        self._dirty = False
        self._saved_at = -float("inf")  # the first batch is saved at once

    def open(self) -> None:
        """Load the saved index, rebuilt first when it disagrees with the catalog (e.g. after a crash)."""
        self._agree()

    def _agree(self) -> bool:
        """Under the lock: the saved index when its fingerprint is the catalog's, else rebuilt and saved.

        Returns whether it was rebuilt (no index while the catalog has no vectors).
        """
        from recsys.embedding import INDEX_WEIGHTS
        from recsys.index import load_or_rebuild

        with index_lock(self.rec.index_dir):
            ids, vectors = self.rec.catalog_vectors()
            if len(ids) == 0:
                return False
            self.index, rebuilt = load_or_rebuild(
                self.rec.index_dir, self.rec.model_version, ids_fingerprint(ids),
                lambda: (ids, vectors.fused(INDEX_WEIGHTS)), self.rec.settings.index,
            )
        return rebuilt

    def add(self, ids: list[int], timbre: np.ndarray, melody: np.ndarray) -> bool:
        """Upsert committed (n,) ids with their (n, Dt) timbre and (n, Dm) melody rows; True if saved."""
        from recsys.embedding import INDEX_WEIGHTS, fuse
        from recsys.index import VectorIndex

        # a batch may hold one song twice (the same content under two paths): index it once
        ids_arr, first = np.unique(np.asarray(ids, dtype=np.int64), return_index=True)
        xb = fuse(timbre[first], melody[first], INDEX_WEIGHTS)
        if self.index is None:
            self.index = VectorIndex.build(ids_arr, xb, self.rec.settings.index)
        else:
            self.index.add(ids_arr, xb)
        self._dirty = True
        if time.monotonic() - self._saved_at >= self.save_every_s:
            return self.save()
        return False

    def save(self) -> bool:
        """Save atomically (index file, then metadata with the fingerprint of the ids it holds)."""
        if self.index is None or not self._dirty:
            return False
        with index_lock(self.rec.index_dir):
            self.index.save(self.rec.index_dir, self.rec.model_version, ids_fingerprint(self.index.ids()))
        self._dirty = False
        self._saved_at = time.monotonic()
        return True

    def check(self) -> tuple[int, bool]:
        """Save, then make the saved index agree with the catalog: (songs in it, rebuilt?)."""
        self.save()
        rebuilt = self._agree()
        return (len(self.index) if self.index is not None else 0), rebuilt


# ---------------------------------------------------------------------------- the job


def _kill_point() -> tuple[str, int] | None:
    """The test hook: RECSYS_TEST_KILL_AT=after_commit:2 kills the job with SIGKILL at that point."""
    raw = os.environ.get(KILL_ENV)
    if not raw:
        return None
    point, _, n = raw.partition(":")
    if point not in KILL_POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"{KILL_ENV}={raw!r}: expected <point>:<n> with point in {', '.join(KILL_POINTS)}, n >= 1")
    return point, int(n)


def load_embedder(rec: Any) -> Any:
    """The workspace's current encoders, moved to the configured device; a clear error without models."""
    from recsys.training.common import pick_device

    try:
        embedder = rec.embedder
    except FileNotFoundError as e:
        raise MissingModelsError(
            f"embedding needs trained models in {rec.settings.workspace / 'models'}, and there are none: "
            f"run `recsys train` first ({e})"
        ) from e
    device = pick_device(rec.settings.device)
    embedder.timbre.to(device)
    embedder.melody.to(device)
    return embedder


def _published_version(workspace: Path) -> str:
    """The fused version the current models would write, without loading them."""
    from recsys.training.checkpoint import latest_version

    metas = [latest_version(workspace, kind) for kind in ("timbre", "melody")]
    if None in metas:
        raise MissingModelsError(
            f"embedding needs trained models in {workspace / 'models'}, and there are none: run `recsys train` first"
        )
    return "+".join(m.version for m in metas)  # type: ignore[union-attr]


def _windows(entries: Iterator[ManifestEntry], size: int) -> Iterator[list[ManifestEntry]]:
    window: list[ManifestEntry] = []
    for entry in entries:
        window.append(entry)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def run_ingest(
    source: str | Path,
    settings: Settings,
    *,
    embed: bool = False,
    runner: Runner | None = None,
    batch_size: int = 32,
    window: int = 512,
    dry_run: bool = False,
    index_save_every_s: float = 10.0,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> JobSummary:
    """Register (and with `embed`, embed and index) every good song of `source` exactly once.

    `source` is a manifest CSV, a <singer>/<song>.<ext> folder or an audio file; it is
    streamed `window` entries at a time. Batches of `batch_size` files are committed in
    one transaction each. With `dry_run` files are hashed and decoded but nothing is
    written. Raises ManifestError for an unusable manifest (before anything is written)
    and MissingModelsError when `embed` finds no trained models.
    """
    from recsys.api import Recommender

    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
    started = time.monotonic()
    kill = _kill_point()
    reached: dict[str, int] = {}

    def checkpoint(point: str) -> None:
        reached[point] = reached.get(point, 0) + 1
        if kill is not None and kill == (point, reached[point]):
            os.kill(os.getpid(), signal.SIGKILL)

    items = iter_manifest(source)  # raises ManifestError before anything is written
    rec = Recommender(settings)
    has_catalog = not dry_run or settings.db_url is not None or (settings.workspace / "catalog.db").exists()
    sessions = rec.sessions if has_catalog else None
    separation = rec.separation if sessions is not None else settings.separation
    if separation.method != "none":
        from recsys.separation import separator_from_config

        try:
            separator_from_config(separation)  # fail now rather than once per file in the workers
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"separation {separation.method!r} cannot be used: {e}") from e
    summary = JobSummary(run_id=None, dry_run=dry_run)
    embedder = None
    if embed and dry_run:
        summary.model_version = _published_version(settings.workspace)  # checks the models, loads nothing
    elif embed:
        embedder = load_embedder(rec)
        summary.model_version = rec.model_version
    model_rows: dict[str, Any] | None = None
    if not dry_run:
        with catalog.session_scope(sessions) as s:
            options = {"job": "pipelines.ingest", "embed": embed, "batch_size": batch_size,
                       "runner": type(runner).__name__ if runner else "LocalRunner",
                       "separation": separation.model_dump(mode="json")}
            summary.run_id = catalog.start_run(s, str(source), options).id
            if embed:
                model_rows = rec._model_rows(s)  # registers the versions (and checks the separation)
    live = LiveIndex(rec, index_save_every_s) if embed and not dry_run else None
    if live is not None:
        live.open()

    stages = Stages(settings.audio, settings.features if embedder else None, embedder, batch_size, separation)
    runner_ = runner if runner is not None else LocalRunner()
    unwritten: list[FileFailure] = []
    seen: set[Path] = set()

    def fail(failure: FileFailure) -> None:
        summary.failed[failure.cause] += 1
        if len(summary.failures) < MAX_KEPT_FAILURES:
            summary.failures.append(failure)
        unwritten.append(failure)

    def duplicate(_entry: ManifestEntry) -> None:
        summary.skipped += 1

    def todo() -> Iterator[ManifestEntry]:
        """Entries whose content is not yet done, a window at a time (memory bounded by the window)."""
        for win in _windows(usable_entries(items, fail, duplicate, seen), window):
            seen.clear()  # paths listed twice in different windows are caught by their hash below
            hashes = runner_.hash(win)
            done: set[str] = set()
            if sessions is not None:
                good = [h for h in hashes if isinstance(h, str)]
                with sessions() as s:
                    done = (embedded_hashes(s, good, summary.model_version) if embed
                            else catalog.known_hashes(s, good))
            in_window: set[str] = set()
            for entry, digest in zip(win, hashes):
                if isinstance(digest, FileFailure):
                    fail(digest)
                elif digest in done or digest in in_window:
                    summary.skipped += 1  # already present (perhaps under another path), or listed twice
                else:
                    in_window.add(digest)
                    yield entry

    try:
        for results in runner_.process(todo(), stages):
            songs = [r for r in results if isinstance(r, (EmbeddedSong, PreparedSong))]
            for r in results:
                if isinstance(r, FileFailure):
                    fail(r)
            summary.audio_seconds += sum(r.song.duration_s for r in songs)
            summary.batches += 1
            if dry_run:
                summary.ingested += len(songs)  # would be ingested
                unwritten.clear()
            else:
                _commit(sessions, summary, songs, unwritten, model_rows, settings, live, checkpoint)
            summary.wall_seconds = time.monotonic() - started
            if on_batch is not None:
                on_batch(BatchReport(summary.batches, len(results), summary))
        if not dry_run and unwritten:  # failures found after the last batch
            _commit(sessions, summary, [], unwritten, model_rows, settings, live, checkpoint)
    finally:
        if runner is None:
            runner_.close()
    if live is not None:
        summary.index_size, summary.index_rebuilt = live.check()
    summary.wall_seconds = time.monotonic() - started
    if not dry_run:
        with catalog.session_scope(sessions) as s:
            catalog.finish_run(s, s.get(catalog.IngestRun, summary.run_id), summary.as_dict())
    return summary


def _commit(
    sessions: Any,
    summary: JobSummary,
    songs: list[EmbeddedSong | PreparedSong],
    unwritten: list[FileFailure],
    model_rows: dict[str, Any] | None,
    settings: Settings,
    live: LiveIndex | None,
    checkpoint: Callable[[str], None],
) -> None:
    """One transaction for the batch, then its committed vectors into the index."""
    from recsys.embedding import Weights

    embedded = [r for r in songs if isinstance(r, EmbeddedSong)]
    vectors = None
    if model_rows is not None and embedded:
        if len(embedded) != len(songs):
            raise RuntimeError("a batch mixes embedded and unembedded songs")
        vectors = (np.stack([r.timbre for r in embedded]), np.stack([r.melody for r in embedded]))
    checkpoint("before_commit")
    with catalog.session_scope(sessions) as s:
        run = s.get(catalog.IngestRun, summary.run_id)
        result = commit_batch(
            s, run, [r.song for r in songs], unwritten, vectors, model_rows,
            Weights(settings.fusion.w_timbre, settings.fusion.w_melody),
        )
    unwritten.clear()
    summary.ingested += result.created
    summary.skipped += len(songs) - result.created  # registered before (or by a concurrent job)
    summary.embedded += result.embedded
    checkpoint("after_commit")
    if live is not None and vectors is not None and live.add(result.song_ids, *vectors):
        checkpoint("after_index")


def format_report(report: BatchReport) -> str:
    """One progress line per committed batch."""
    s = report.summary
    return (f"batch {report.batch}: {report.files} files; total ingested {s.ingested}, embedded {s.embedded}, "
            f"skipped {s.skipped}, failed {s.n_failed}; {s.audio_seconds:.0f} s of audio in "
            f"{s.wall_seconds:.1f} s ({s.realtime_factor:.0f}x real time)")

