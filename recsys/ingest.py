"""Register a catalog's songs: stream the manifest, validate and analyse each file, write in batches.

Idempotent by content hash: a file already in the catalog (even renamed) is
skipped, a changed file is a new song. Bad rows and bad files are recorded as
ingest errors with their cause and the batch goes on. Songs are committed in
small transactions, so a crash loses at most the batch in flight and a re-run
finishes the work without duplicates.

The per-file and per-batch stages (hash_entry, prepare_file, embed_prepared,
commit_batch) are also what the batch job (pipelines/ingest.py) maps over its
runners, local processes or Ray, to register and embed a catalog in one pass.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from recsys import catalog
from recsys.audio import AudioError, content_hash, iter_voiced_chunks, n_chunks, probe, voiced_audio
from recsys.config import AudioConfig, FeatureConfig, SeparationConfig
from recsys.manifest import ManifestEntry, ManifestItem, ManifestProblem, iter_manifest

if TYPE_CHECKING:
    from recsys.embedding import Embedder, Weights

MAX_TIMBRE_CHUNKS_PER_PASS = 512  # chunks per encoder forward pass in embed_mels (bounds GPU memory)


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


@dataclass(frozen=True)
class PreparedSong:
    """A good file decoded once: what the catalog row needs, plus its features when asked for."""

    song: AnalysedSong
    mel: np.ndarray | None  # (n_mels, T) float32 log-mel of the voiced audio; None without features
    pitch: np.ndarray | None = None  # (N_PITCH, T) float32 waveform pitch (recsys.pitch.wave_pitch) when asked for


@dataclass(frozen=True)
class EmbeddedSong:
    """A good file with its vectors, ready to commit."""

    song: AnalysedSong
    timbre: np.ndarray  # (Dt,) float32, unit norm
    melody: np.ndarray  # (Dm,) float32, unit norm


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


@functools.lru_cache(maxsize=4)
def _separator(separation: SeparationConfig):
    """One separator per config and process (a neural one loads its weights once)."""
    from recsys.separation import separator_from_config

    return separator_from_config(separation)


def analyse_file(
    entry: ManifestEntry, cfg: AudioConfig, separation: SeparationConfig | None = None
) -> AnalysedSong | FileFailure:
    """Decode and validate one file (runs in a worker process). Never raises for bad audio.

    With a `separation` other than 'none', voiced chunks are counted on the estimated voice.
    """
    result = prepare_file(entry, cfg, None, separation)
    return result.song if isinstance(result, PreparedSong) else result


def hash_entry(entry: ManifestEntry) -> str | FileFailure:
    """sha256 of one file's bytes, or why it cannot be read: the cheap first stage, before decoding."""
    try:
        return content_hash(entry.path)
    except AudioError as e:
        return FileFailure(str(entry.path), e.cause, str(e))


def prepare_file(
    entry: ManifestEntry,
    cfg: AudioConfig,
    features: FeatureConfig | None = None,
    separation: SeparationConfig | None = None,
    pitch: bool = False,
) -> PreparedSong | FileFailure:
    """Decode, validate and (with `features`) compute the log-mel of one file. Never raises for bad audio.

    Runs in a worker process. Without features the audio is streamed (flat memory for
    any length); with them the voiced audio is decoded once into memory (4 bytes per
    voiced sample) and gives both the chunk count and the (n_mels, T) log-mel, the same
    as recsys.features.song_mel; with `pitch` also the waveform pitch on the same frames
    (recsys.features.song_features). With a `separation` other than 'none' all come from
    the estimated voice.
    """
    separator = _separator(separation) if separation is not None and separation.method != "none" else None
    try:
        info = probe(entry.path)
        if cfg.max_file_seconds is not None and info.duration > cfg.max_file_seconds:
            return FileFailure(
                str(entry.path),
                "too_long",
                f"{entry.path}: {info.duration:.0f} s is longer than audio.max_file_seconds={cfg.max_file_seconds}",
            )
        mel = wave_pitch = None
        if features is None:
            chunks = iter_voiced_chunks(entry.path, cfg, separator=separator)
            n_voiced = sum(batch.shape[0] for batch in chunks)  # flat memory
        else:
            from recsys.features import log_mel

            wave = voiced_audio(entry.path, cfg, separator)  # (N,)
            n_voiced = n_chunks(wave.numel(), cfg)
            if n_voiced == 0:
                raise AudioError(
                    entry.path,
                    "silent",
                    f"only {wave.numel() / cfg.sample_rate:.2f} s of voiced audio; "
                    f"at least audio.min_chunk_seconds={cfg.min_chunk_seconds:g} s is needed",
                )
            mel = log_mel(wave, features, cfg.sample_rate).numpy()  # (n_mels, T)
            if pitch:
                from recsys.pitch import wave_pitch as compute_pitch

                wave_pitch = compute_pitch(wave, cfg.sample_rate, features.hop_length).numpy()  # (N_PITCH, T)
        digest = content_hash(entry.path)
    except AudioError as e:
        return FileFailure(str(entry.path), e.cause, str(e))
    except OSError as e:
        return FileFailure(str(entry.path), "unreadable", f"{entry.path}: cannot read file: {e}")
    song = AnalysedSong(
        entry=entry,
        content_hash=digest,
        duration_s=info.duration,
        sample_rate=info.sample_rate,
        channels=info.channels,
        format=info.format,
        n_voiced_chunks=n_voiced,
    )
    return PreparedSong(song, mel, wave_pitch)


def device_of(module: object) -> torch.device:
    """The device of a module's parameters (CPU for objects without any)."""
    params = getattr(module, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def embed_mels(
    embedder: Embedder,
    mels: Sequence[torch.Tensor | np.ndarray],
    pitches: Sequence[torch.Tensor | np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """B songs' (n_mels, T_i) log-mels -> (timbre (B, Dt), melody (B, Dm)) float32 unit vectors.

    `pitches`: each song's waveform pitch, needed when embedder.needs_pitch.

    The timbre encoder sees the chunks of all B songs in few forward passes (what makes a
    GPU pay off); the melody encoder pools per song and runs song by song. Equal to
    Embedder.embed_mel on each song up to float rounding (the encoders are in eval mode,
    so a chunk's embedding does not depend on its batch).
    """
    timbre, melody = embedder.timbre, embedder.melody
    dt, dm = embedder.dims
    if not mels:
        return np.zeros((0, dt), np.float32), np.zeros((0, dm), np.float32)
    with torch.no_grad():
        t_dev, m_dev = device_of(timbre), device_of(melody)
        if hasattr(timbre, "chunk_song") and hasattr(timbre, "embed"):
            chunks = [timbre.chunk_song(torch.as_tensor(x).to(t_dev)) for x in mels]  # (n_i, n_mels, F_i)
            by_frames: dict[int, list[int]] = defaultdict(list)  # songs shorter than a chunk keep their length
            for i, c in enumerate(chunks):
                by_frames[c.shape[-1]].append(i)
            rows: list[torch.Tensor | None] = [None] * len(mels)
            for idx in by_frames.values():
                stacked = torch.cat([chunks[i] for i in idx])  # (sum n_i, n_mels, F)
                z = torch.cat([timbre.embed(part) for part in stacked.split(MAX_TIMBRE_CHUNKS_PER_PASS)])
                for i, zi in zip(idx, z.split([chunks[i].shape[0] for i in idx])):
                    rows[i] = F.normalize(zi.mean(0), dim=-1)
            t = torch.stack(rows)  # type: ignore[arg-type]  # (B, Dt)
        else:
            t = torch.stack([timbre.embed_song(torch.as_tensor(x).to(t_dev)) for x in mels])
        pitches = pitches if pitches is not None else [None] * len(mels)
        m = torch.stack([embedder.embed_melody(torch.as_tensor(x).to(m_dev), p).to(t.device)
                         for x, p in zip(mels, pitches)])  # (B, Dm)
    return t.cpu().numpy().astype(np.float32), m.cpu().numpy().astype(np.float32)


def embed_prepared(embedder: Embedder, prepared: Sequence[PreparedSong]) -> list[EmbeddedSong]:
    """Vectors for a batch of prepared songs (each must carry its mel), in the same order."""
    missing = [p.song.entry.path for p in prepared if p.mel is None]
    if missing:
        raise ValueError(f"songs prepared without features cannot be embedded: {missing[:3]}")
    if embedder.needs_pitch and any(p.pitch is None for p in prepared):
        raise ValueError("the melody encoder reads the waveform pitch: prepare the songs with pitch=True")
    t, m = embed_mels(embedder, [p.mel for p in prepared], [p.pitch for p in prepared])  # type: ignore[misc]
    return [EmbeddedSong(p.song, t[i], m[i]) for i, p in enumerate(prepared)]


def usable_entries(
    items: Iterable[ManifestItem],
    on_failure: Callable[[FileFailure], None],
    on_duplicate: Callable[[ManifestEntry], None],
    seen: set[Path],
) -> Iterator[ManifestEntry]:
    """The manifest entries worth reading: bad rows and missing files go to `on_failure`,
    paths already in `seen` (listed twice) to `on_duplicate`. The caller owns `seen` and
    may clear it to bound memory (a duplicate is then caught by its content hash)."""
    for item in items:
        if isinstance(item, ManifestProblem):
            on_failure(FileFailure(item.path, item.cause, item.message))
        elif item.path in seen:
            on_duplicate(item)
        elif not item.path.exists():
            where = f" (manifest line {item.line})" if item.line else ""
            on_failure(FileFailure(str(item.path), "not_found", f"{item.path}: file does not exist{where}"))
        else:
            seen.add(item.path)
            yield item


@dataclass(frozen=True)
class CommitResult:
    song_ids: list[int]  # catalog id of each committed song, in input order
    created: int  # songs that were new
    embedded: int  # fused vectors inserted (0 without vectors)


def commit_batch(
    s: Session,
    run: catalog.IngestRun | None,
    songs: Sequence[AnalysedSong],
    failures: Sequence[FileFailure] = (),
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    model_rows: Mapping[str, catalog.ModelVersion] | None = None,
    weights: Weights | None = None,
) -> CommitResult:
    """Write one batch inside the caller's transaction: errors, songs and (optionally) their vectors.

    `vectors` are (timbre (B, Dt), melody (B, Dm)) rows aligned with `songs`, stored under
    `model_rows` ("timbre", "melody", "fused"), the fused one with `weights`. A song already
    in the catalog (same content hash) keeps its row and gets the vectors it lacks, so the
    batch can be replayed after a crash or by a concurrent job.
    """
    if run is not None:
        for failure in failures:
            catalog.record_error(s, run, failure.path, failure.cause, failure.message)
    ids, created = [], 0
    for song in songs:
        row, new = catalog.add_song_if_new(s, **_song_row(song))
        ids.append(row.id)
        created += new
    embedded = 0
    if vectors is not None and songs:
        from recsys.embedding import fuse

        if model_rows is None or weights is None:
            raise ValueError("commit_batch with vectors needs model_rows and weights")
        t, m = vectors
        if len(t) != len(songs) or len(m) != len(songs):
            raise ValueError(f"{len(songs)} songs but {len(t)} timbre and {len(m)} melody vectors")
        inserted = {  # fused last: it marks a song done
            kind: catalog.put_embeddings(s, model_rows[kind], kind, dict(zip(ids, x)))
            for kind, x in (("timbre", t), ("melody", m), ("fused", fuse(t, m, weights)))
        }
        embedded = inserted["fused"]
    return CommitResult(ids, created, embedded)


def embedded_hashes(s: Session, hashes: Iterable[str], fused_version: str) -> set[str]:
    """The subset of `hashes` whose song has a fused vector under model version `fused_version`."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        query = (
            select(catalog.Song.content_hash)
            .join(catalog.Embedding, catalog.Embedding.song_id == catalog.Song.id)
            .join(catalog.ModelVersion, catalog.ModelVersion.id == catalog.Embedding.model_version_id)
            .where(
                catalog.Song.content_hash.in_(wanted[start : start + 500]),
                catalog.Embedding.kind == "fused",
                catalog.ModelVersion.kind == "fused",
                catalog.ModelVersion.version == fused_version,
            )
        )
        found.update(s.scalars(query))
    return found


def _analyse_all(
    entries: Iterable[ManifestEntry],
    cfg: AudioConfig,
    workers: int,
    separation: SeparationConfig | None = None,
) -> Iterator[AnalysedSong | FileFailure]:
    """Analyse entries in worker processes with a bounded number in flight (flat memory)."""
    if workers <= 1:
        for entry in entries:
            yield analyse_file(entry, cfg, separation)
        return
    max_in_flight = workers * 4
    # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock the children.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set[Future] = set()
        for entry in entries:
            pending.add(pool.submit(analyse_file, entry, cfg, separation))
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
    separation: SeparationConfig | None = None,
) -> IngestSummary:
    """Register every good song of `source` (CSV manifest, singer folder or audio file) once.

    `progress` is called with each processed path (for a progress bar). With
    `dry_run` the manifest and files are validated and nothing is written
    (`sessions` may then be None when no catalog exists yet). `separation` (default:
    none) suppresses accompaniment before the files are analysed; it is recorded in
    the run's options. A separator that cannot be built (e.g. 'neural' without
    weights) raises ValueError before any file is read.
    """
    if sessions is None and not dry_run:
        raise ValueError("ingest needs a catalog session factory unless dry_run=True")
    separation = separation if separation is not None else SeparationConfig()
    if separation.method != "none":
        _separator(separation)  # fail now, with the separator's message, rather than once per file
    workers = workers if workers is not None else (os.cpu_count() or 1)
    items = iter_manifest(source)  # raises ManifestError for an unusable manifest
    summary = IngestSummary(run_id=None, dry_run=dry_run)
    run_id: int | None = None
    if not dry_run:
        with catalog.session_scope(sessions) as s:
            options = {"workers": workers, "batch_size": batch_size,
                       "separation": separation.model_dump(mode="json")}
            run_id = catalog.start_run(s, str(source), options).id
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

    def duplicate(entry: ManifestEntry) -> None:
        summary.skipped += 1  # the same file listed twice
        _tick(progress, entry.path)

    def flush() -> None:
        if not dry_run and (batch or unwritten_failures):
            with catalog.session_scope(sessions) as s:
                run = s.get(catalog.IngestRun, run_id)
                result = commit_batch(s, run, batch, unwritten_failures)
                summary.ingested += result.created
                summary.skipped += len(batch) - result.created  # a concurrent job registered it first
        elif dry_run:
            summary.ingested += len(batch)  # would be ingested
        batch.clear()
        unwritten_failures.clear()

    entries = usable_entries(items, fail, duplicate, seen_in_manifest)
    for result in _analyse_all(entries, cfg, workers, separation):
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
