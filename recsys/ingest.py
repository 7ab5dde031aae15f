"""Register a catalog's songs: stream the manifest, validate and analyse each file, write in batches.

Idempotent by content hash: a file already in the catalog (even renamed) is
skipped, a changed file is a new song. Bad rows and bad files are recorded as
ingest errors with their cause and the batch goes on. Songs are committed in
small transactions, so a crash loses at most the batch in flight and a re-run
finishes the work without duplicates.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from recsys import catalog
from recsys.audio import AudioError, content_hash, iter_voiced_chunks, probe
from recsys.config import AudioConfig
from recsys.manifest import ManifestEntry, ManifestProblem, iter_manifest


@dataclass(frozen=True)
class AnalysedSong:
    """What the ingest stage learns about one good file."""

    entry: ManifestEntry
    content_hash: str
    duration_s: float
    sample_rate: int
    channels: int
    format: str
    n_voiced_chunks: int


@dataclass(frozen=True)
class FileFailure:
    path: str
    cause: str
    message: str


@dataclass
class IngestSummary:
    run_id: int | None
    ingested: int = 0
    skipped: int = 0  # already in the catalog, or listed twice in this manifest
    failed: Counter = field(default_factory=Counter)  # cause -> count
    dry_run: bool = False
    failures: list[FileFailure] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "ingested": self.ingested,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "dry_run": self.dry_run,
        }


def analyse_file(entry: ManifestEntry, cfg: AudioConfig) -> AnalysedSong | FileFailure:
    """Decode and validate one file (runs in a worker process). Never raises for bad audio."""
    try:
        info = probe(entry.path)
        if cfg.max_file_seconds is not None and info.duration > cfg.max_file_seconds:
            return FileFailure(
                str(entry.path),
                "too_long",
                f"{entry.path}: {info.duration:.0f} s is longer than audio.max_file_seconds={cfg.max_file_seconds}",
            )
        n_chunks = sum(batch.shape[0] for batch in iter_voiced_chunks(entry.path, cfg))  # flat memory
        digest = content_hash(entry.path)
    except AudioError as e:
        return FileFailure(str(entry.path), e.cause, str(e))
    except OSError as e:
        return FileFailure(str(entry.path), "unreadable", f"{entry.path}: cannot read file: {e}")
    return AnalysedSong(
        entry=entry,
        content_hash=digest,
        duration_s=info.duration,
        sample_rate=info.sample_rate,
        channels=info.channels,
        format=info.format,
        n_voiced_chunks=n_chunks,
    )


def _analyse_all(
    entries: Iterable[ManifestEntry], cfg: AudioConfig, workers: int
) -> Iterator[AnalysedSong | FileFailure]:
    """Analyse entries in worker processes with a bounded number in flight (flat memory)."""
    if workers <= 1:
        for entry in entries:
            yield analyse_file(entry, cfg)
        return
    max_in_flight = workers * 4
    # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock the children.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set[Future] = set()
        for entry in entries:
            pending.add(pool.submit(analyse_file, entry, cfg))
            if len(pending) >= max_in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        for future in pending:
            yield future.result()


def ingest(
    source: str | Path,
    sessions: sessionmaker[Session] | None,
    cfg: AudioConfig,
    *,
    workers: int | None = None,
    batch_size: int = 32,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Register every good song of `source` (CSV manifest, singer folder or audio file) once.

    `progress` is called with each processed path (for a progress bar). With
    `dry_run` the manifest and files are validated and nothing is written
    (`sessions` may then be None when no catalog exists yet).
    """
    if sessions is None and not dry_run:
        raise ValueError("ingest needs a catalog session factory unless dry_run=True")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    items = iter_manifest(source)  # raises ManifestError for an unusable manifest
    summary = IngestSummary(run_id=None, dry_run=dry_run)
    run_id: int | None = None
    if not dry_run:
        with catalog.session_scope(sessions) as s:
            run_id = catalog.start_run(s, str(source), {"workers": workers, "batch_size": batch_size}).id
        summary.run_id = run_id

    seen_in_manifest: set[Path] = set()
    unwritten_failures: list[FileFailure] = []
    batch: list[AnalysedSong] = []
    hashes_this_run: set[str] = set()

    def fail(failure: FileFailure) -> None:
        summary.failed[failure.cause] += 1
        summary.failures.append(failure)
        unwritten_failures.append(failure)
        _tick(progress, failure.path)

    def entries_to_analyse() -> Iterator[ManifestEntry]:
        for item in items:
            if isinstance(item, ManifestProblem):
                fail(FileFailure(item.path, item.cause, item.message))
            elif item.path in seen_in_manifest:
                summary.skipped += 1  # the same file listed twice
                _tick(progress, item.path)
            elif not item.path.exists():
                where = f" (manifest line {item.line})" if item.line else ""
                fail(FileFailure(str(item.path), "not_found", f"{item.path}: file does not exist{where}"))
            else:
                seen_in_manifest.add(item.path)
                yield item

    def flush() -> None:
        if not dry_run and (batch or unwritten_failures):
            with catalog.session_scope(sessions) as s:
                run = s.get(catalog.IngestRun, run_id)
                for failure in unwritten_failures:
                    catalog.record_error(s, run, failure.path, failure.cause, failure.message)
                for song in batch:
                    _, created = catalog.add_song_if_new(s, **_song_row(song))
                    summary.ingested += created
                    summary.skipped += not created  # a concurrent job registered it first
        elif dry_run:
            summary.ingested += len(batch)  # would be ingested
        batch.clear()
        unwritten_failures.clear()

    for result in _analyse_all(entries_to_analyse(), cfg, workers):
        if isinstance(result, FileFailure):
            fail(result)
            continue
        _tick(progress, result.entry.path)
        if result.content_hash in hashes_this_run or _in_catalog(sessions, result.content_hash):
            summary.skipped += 1  # already registered, perhaps under another path
            continue
        hashes_this_run.add(result.content_hash)
        batch.append(result)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not dry_run:
        with catalog.session_scope(sessions) as s:
            catalog.finish_run(s, s.get(catalog.IngestRun, run_id), summary.as_dict())
    return summary


def _in_catalog(sessions: sessionmaker[Session] | None, digest: str) -> bool:
    """Dry runs look too (when a catalog exists): they report what a real run would skip."""
    if sessions is None:
        return False
    with sessions() as s:
        return catalog.song_by_hash(s, digest) is not None


def _song_row(song: AnalysedSong) -> dict:
    entry = song.entry
    return {
        "content_hash": song.content_hash,
        "path": str(entry.path),
        "singer": entry.singer,
        "title": entry.title,
        "external_id": entry.song_id,
        "duration_s": song.duration_s,
        "sample_rate": song.sample_rate,
        "channels": song.channels,
        "format": song.format,
        "n_voiced_chunks": song.n_voiced_chunks,
        "metadata": dict(entry.metadata),
    }


def _tick(progress: Callable[[str], None] | None, path: object) -> None:
    if progress is not None:
        progress(str(path))
