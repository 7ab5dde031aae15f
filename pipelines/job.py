"""The one catalog job: entries -> hash -> decode and features -> vectors -> catalog and index.

Register, ingest-and-embed and re-embed are this job with different entries and stages:

- register: manifest entries, no embedder (songs are decoded, validated and written);
- ingest --embed: manifest entries and an embedder of the pair being written;
- re-embed: the catalog's songs that lack vectors of a pair, and that pair's embedder.

Each entry is hashed once (a song already done is skipped before it is decoded), decoded
once by the runner's workers (local processes or Ray), and its batch is committed in one
transaction with one session (errors, songs, vectors). Committed vectors go into the
pair's index, saved atomically with the fingerprint of the ids it holds.

Crash safety: the catalog is the truth and the index a cache of it. A job killed at any
moment loses at most its uncommitted batch; the next run skips what was committed, and
`load_or_rebuild` against the catalog's fingerprint rebuilds an index that lags or was
cut mid-save. Index updates take a file lock, and the job ends with that check, so
concurrent jobs leave an index that agrees with the catalog. A connection to the catalog
lost mid-job stops it with one DatabaseUnavailableError naming the database and the
batch; the batches before it are kept, and the same command finishes the work.
"""

from __future__ import annotations

import dataclasses
import fcntl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pipelines.runners import LocalRunner, Runner, Stages
from recsys import catalog
from recsys.errors import DatabaseUnavailableError
from recsys.ingest import EmbeddedSong, FileFailure, IngestSummary, PreparedSong, commit_batch, usable_entries
from recsys.manifest import ManifestEntry, ManifestItem
from recsys.workspace import describe_database

if TYPE_CHECKING:
    from recsys.embedding import Embedder
    from recsys.workspace import Workspace

MAX_KEPT_FAILURES = 1000  # failure messages kept in the summary (all are counted and written to the catalog)
RERUN_HINT = "the batches before it are kept; run the same command again to finish"
KEPT_HINT = "every committed batch is kept; run the same command again to finish"
DISCONNECT_SQLSTATES = ("57P01", "57P02", "57P03")  # server shut down or starting (and class 08: connection)


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

    def as_text(self) -> str:
        lines = [super().as_text()]
        if self.model_version:
            verb = "would embed under" if self.dry_run else f"embedded {self.embedded} songs under"
            lines.append(f"{verb} model version {self.model_version}; {self.audio_seconds:.0f} s of audio in "
                         f"{self.wall_seconds:.1f} s ({self.realtime_factor:.0f}x real time)")
            if self.index_size is not None:
                state = "rebuilt to match the catalog" if self.index_rebuilt else "agrees with the catalog"
                lines.append(f"index: {self.index_size} songs, {state}")
        return "\n".join(lines)

    def fail(self, failure: FileFailure) -> None:
        self.failed[failure.cause] += 1
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(failure)


@dataclass(frozen=True)
class BatchReport:
    """Progress after one committed batch (for a progress line)."""

    batch: int
    files: int  # results in this batch
    summary: JobSummary  # running totals

    def as_text(self) -> str:
        s = self.summary
        return (f"batch {self.batch}: {self.files} files; total ingested {s.ingested}, embedded {s.embedded}, "
                f"skipped {s.skipped}, failed {s.n_failed}; {s.audio_seconds:.0f} s of audio in "
                f"{s.wall_seconds:.1f} s ({s.realtime_factor:.0f}x real time)")


# ---------------------------------------------------------------------------- index


def ids_fingerprint(ids: np.ndarray) -> str:
    from recsys.api import ids_fingerprint as fingerprint

    return fingerprint(ids)


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
    """The job's copy of one pair's song index: committed vectors are added, saved every `save_every_s`."""

    def __init__(self, workspace: Workspace, model_rows: dict[str, Any], version: str, save_every_s: float) -> None:
        self.workspace = workspace
        self.model_rows = model_rows
        self.version = version
        self.dir = workspace.index_dir(version)
        self.save_every_s = save_every_s
        self.index: Any = None
        self._dirty = False
        self._saved_at = -float("inf")  # the first batch is saved at once

    def agree(self) -> bool:
        """Under the lock: the saved index when its fingerprint is the catalog's, else rebuilt and saved.

        Returns whether it was rebuilt (no index while the catalog has no vectors of the pair).
        """
        from recsys.embedding import INDEX_WEIGHTS, fuse
        from recsys.index import load_or_rebuild

        with index_lock(self.dir):
            with self.workspace.sessions() as s:
                rows = {k: s.get(catalog.ModelVersion, r.id) for k, r in self.model_rows.items()}
                ids, xt, xm = catalog.pair_vectors(s, rows["timbre"], rows["melody"])
            if len(ids) == 0:
                return False
            self.index, rebuilt = load_or_rebuild(
                self.dir, self.version, ids_fingerprint(ids),
                lambda: (ids, fuse(xt, xm, INDEX_WEIGHTS)), self.workspace.settings.index,
            )
        return rebuilt

    def add(self, ids: list[int], timbre: np.ndarray, melody: np.ndarray) -> None:
        """Upsert committed (n,) ids with their (n, Dt) timbre and (n, Dm) melody rows."""
        from recsys.embedding import INDEX_WEIGHTS, fuse
        from recsys.index import VectorIndex

        # a batch may hold one song twice (the same content under two paths): index it once
        ids_arr, first = np.unique(np.asarray(ids, dtype=np.int64), return_index=True)
        xb = fuse(timbre[first], melody[first], INDEX_WEIGHTS)
        if self.index is None:
            self.index = VectorIndex.build(ids_arr, xb, self.workspace.settings.index)
        else:
            self.index.add(ids_arr, xb)
        self._dirty = True
        if time.monotonic() - self._saved_at >= self.save_every_s:
            self.save()

    def save(self) -> None:
        """Save atomically (index file, then metadata with the fingerprint of the ids it holds)."""
        if self.index is None or not self._dirty:
            return
        with index_lock(self.dir):
            self.index.save(self.dir, self.version, ids_fingerprint(self.index.ids()))
        self._dirty = False
        self._saved_at = time.monotonic()

    def check(self) -> tuple[int, bool]:
        """Save, then make the saved index agree with the catalog: (songs in it, rebuilt?)."""
        self.save()
        rebuilt = self.agree()
        return (len(self.index) if self.index is not None else 0), rebuilt


# ---------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Job:
    """One run's parts: where it writes, what it computes and where that runs."""

    workspace: Workspace
    embedder: Embedder | None = None  # None: register only
    runner: Runner | None = None  # None: a LocalRunner on every core, closed at the end
    batch_size: int = 32
    window: int = 512  # entries hashed and looked up together (memory is bounded by it)
    dry_run: bool = False
    index_save_every_s: float = 10.0
    on_batch: Callable[[BatchReport], None] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {self.batch_size} and {self.window}")


def register_pair(workspace: Workspace, embedder: Embedder) -> dict[str, catalog.ModelVersion]:
    """The catalog rows of the embedder's two model versions, registered if new."""
    models = embedder.models
    with catalog.session_scope(workspace.sessions) as s:
        rows = {
            kind: catalog.register_model_version(s, kind, meta.version, meta.model_config, meta.fingerprint,
                                                 meta.metrics)
            for kind, meta in (("timbre", models.timbre_meta), ("melody", models.melody_meta))
        }
        s.expunge_all()
    return rows


def run_job(items: Iterable[ManifestItem], job: Job, source: str, options: dict[str, Any]) -> JobSummary:
    """Write every good, not yet done entry of `items` once; returns the run's summary.

    An entry whose `content_hash` is set (re-embedding) must still hash to it: a file that
    changed since it was registered is recorded as cause 'changed' and left alone.
    """
    started = time.monotonic()
    ws, embedder = job.workspace, job.embedder
    sessions = ws.sessions if not job.dry_run or ws.catalog_exists() else None
    summary = JobSummary(run_id=None, dry_run=job.dry_run,
                         model_version=embedder.version if embedder is not None else None)
    with _database(ws, "starting the job, before batch 1"):
        model_rows = register_pair(ws, embedder) if embedder is not None and not job.dry_run else None
        if not job.dry_run:
            with catalog.session_scope(ws.sessions) as s:
                summary.run_id = catalog.start_run(s, source, options).id
    live = None
    if model_rows is not None and embedder is not None:
        live = LiveIndex(ws, model_rows, embedder.version, job.index_save_every_s)
        with _database(ws, "checking the index against the catalog, before batch 1"):
            live.agree()
    stages = Stages(ws.settings.audio, ws.settings.features, embedder, job.batch_size, ws.separation,
                    ws.settings.device)
    runner = job.runner if job.runner is not None else LocalRunner()
    unwritten: list[FileFailure] = []

    def fail(failure: FileFailure) -> None:
        summary.fail(failure)
        unwritten.append(failure)

    def skip(_entry: ManifestEntry) -> None:
        summary.skipped += 1

    def lookup() -> AbstractContextManager[None]:
        return _database(ws, f"looking up the songs already done, before batch {summary.batches + 1}")

    todo = _todo(items, runner, sessions, embedder, job.window, fail, skip, lookup)
    try:
        for results in runner.process(todo, stages):
            songs = [r for r in results if isinstance(r, (EmbeddedSong, PreparedSong))]
            for r in results:
                if isinstance(r, FileFailure):
                    fail(r)
            summary.audio_seconds += sum(r.song.duration_s for r in songs)
            summary.batches += 1
            if job.dry_run:
                summary.ingested += len(songs)  # would be ingested
                unwritten.clear()
            else:
                with _database(ws, f"committing batch {summary.batches}"):
                    _commit(ws, summary, songs, unwritten, model_rows, live)
            summary.wall_seconds = time.monotonic() - started
            if job.on_batch is not None:
                job.on_batch(BatchReport(summary.batches, len(results), summary))
        if not job.dry_run and unwritten:  # failures found after the last batch
            with _database(ws, f"recording the failed files after batch {summary.batches}"):
                _commit(ws, summary, [], unwritten, model_rows, live)
    finally:
        if job.runner is None:
            runner.close()
    if live is not None:
        checking = f"checking the index against the catalog after batch {summary.batches}"
        with _database(ws, checking, KEPT_HINT):
            summary.index_size, summary.index_rebuilt = live.check()
    summary.wall_seconds = time.monotonic() - started
    if not job.dry_run:
        with (_database(ws, f"recording the end of the run after batch {summary.batches}", KEPT_HINT),
              catalog.session_scope(ws.sessions) as s):
            catalog.finish_run(s, s.get(catalog.IngestRun, summary.run_id), summary.counts())
    return summary


def _lost_connection(error: DBAPIError) -> bool:
    """Whether a database error means the connection is gone, not that a statement failed (a constraint)."""
    if error.connection_invalidated:
        return True
    if isinstance(error, (OperationalError, InterfaceError)) and error.statement is None:
        return True  # raised while connecting: the pool found its connection dead and could not open another
    sqlstate = str(getattr(error.orig, "sqlstate", None) or "")
    return sqlstate.startswith("08") or sqlstate in DISCONNECT_SQLSTATES


@contextmanager
def _database(ws: Workspace, doing: str, hint: str = RERUN_HINT) -> Iterator[None]:
    """A catalog connection lost in the block becomes one DatabaseUnavailableError saying what the job did.

    Other database errors (constraints, locks, SQL) are not outages and pass through unchanged.
    """
    try:
        yield
    except DBAPIError as e:
        if not _lost_connection(e):
            raise
        where = describe_database(ws.settings.database_url)
        raise DatabaseUnavailableError(f"lost the connection to the catalog database ({where}) while {doing}",
                                       hint) from e


def _todo(
    items: Iterable[ManifestItem],
    runner: Runner,
    sessions: Any,
    embedder: Embedder | None,
    window: int,
    fail: Callable[[FileFailure], None],
    skip: Callable[[ManifestEntry], None],
    lookup: Callable[[], AbstractContextManager[None]],
) -> Iterator[ManifestEntry]:
    """Entries whose content is not yet done, each with its hash, a window at a time.

    `lookup()` wraps each window's catalog query (it names the batch in a lost-connection error).
    """
    seen: set[Path] = set()
    for win in _windows(usable_entries(items, fail, skip, seen), window):
        seen.clear()  # paths listed twice in different windows are caught by their hash below
        hashes = runner.hash(win)
        done: set[str] = set()
        if sessions is not None:
            good = [h for h in hashes if isinstance(h, str)]
            with lookup(), sessions() as s:
                done = (catalog.hashes_with_pair(s, good, embedder.models.pair.timbre, embedder.models.pair.melody)
                        if embedder is not None else catalog.known_hashes(s, good))
        in_window: set[str] = set()
        for entry, digest in zip(win, hashes):
            if isinstance(digest, FileFailure):
                fail(digest)
            elif entry.content_hash is not None and digest != entry.content_hash:
                fail(FileFailure(str(entry.path), "changed",
                                 f"{entry.path}: the file changed since it was ingested (its content hash is "
                                 "no longer the catalog's); ingest it again"))
            elif digest in done or digest in in_window:
                skip(entry)  # already present (perhaps under another path), or listed twice
            else:
                in_window.add(digest)
                yield dataclasses.replace(entry, content_hash=digest)


def _windows(entries: Iterable[ManifestEntry], size: int) -> Iterator[list[ManifestEntry]]:
    window: list[ManifestEntry] = []
    for entry in entries:
        window.append(entry)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _commit(
    ws: Workspace,
    summary: JobSummary,
    songs: list[EmbeddedSong | PreparedSong],
    unwritten: list[FileFailure],
    model_rows: dict[str, Any] | None,
    live: LiveIndex | None,
) -> None:
    """One transaction for the batch, then its committed vectors into the index."""
    embedded = [r for r in songs if isinstance(r, EmbeddedSong)]
    vectors = None
    if model_rows is not None and embedded:
        if len(embedded) != len(songs):
            raise RuntimeError("a batch mixes embedded and unembedded songs")
        vectors = (np.stack([r.timbre for r in embedded]), np.stack([r.melody for r in embedded]))
    with catalog.session_scope(ws.sessions) as s:
        run = s.get(catalog.IngestRun, summary.run_id)
        rows = {k: s.merge(r, load=False) for k, r in model_rows.items()} if model_rows is not None else None
        result = commit_batch(s, run, [r.song for r in songs], unwritten, vectors, rows)
    unwritten.clear()
    summary.ingested += result.created
    summary.skipped += len(songs) - result.created  # registered before (or by a concurrent job)
    summary.embedded += result.embedded
    if live is not None and vectors is not None:
        live.add(result.song_ids, *vectors)
