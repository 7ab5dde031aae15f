"""The per-file and per-batch stages of the catalog job (pipelines/job.py maps them over a runner).

    hash_entry(entry)              sha256 of the file, or why it cannot be read (before decoding)
    prepare_file(entry, ...)       decode and validate once; the features the encoders need
    embed_prepared(embedder, ...)  vectors for a batch of prepared songs
    commit_batch(s, ...)           one transaction: errors, songs and their vectors

Idempotent by content hash: a file already in the catalog (even renamed) keeps its
row, a changed file is a new song. Bad rows and bad files become FileFailures with a
cause; nothing here raises for bad audio.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from recsys import catalog
from recsys.audio import AudioError, content_hash, iter_voiced_chunks, n_chunks, probe, voiced_stream
from recsys.config import AudioConfig, FeatureConfig, SeparationConfig
from recsys.manifest import ManifestEntry, ManifestItem, ManifestProblem

if TYPE_CHECKING:
    from recsys.embedding import Embedder
    from recsys.features import SongFeatures


@dataclass(frozen=True)
class AnalysedSong:
    """What the catalog row of one good file holds."""

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
    """A good file decoded once: its catalog row and, when asked for, its features as arrays
    (numpy crosses process boundaries cheaply)."""

    song: AnalysedSong
    mel: np.ndarray | None = None  # (n_mels, T) float32 log-mel of the voiced audio
    pitch: np.ndarray | None = None  # (N_PITCH, T) float32 waveform pitch, when an encoder reads it
    times: np.ndarray | None = None  # (T,) int64 frame positions on the file's timeline (SongFeatures.times)
    speaker: np.ndarray | None = None  # (K, 256) float32 speaker partials, when the timbre front end reads them

    def features(self) -> SongFeatures:
        import torch

        from recsys.features import SongFeatures

        if self.mel is None:
            raise ValueError(f"{self.song.entry.path} was prepared without features and cannot be embedded")
        def tensor(x: np.ndarray | None) -> torch.Tensor | None:
            return None if x is None else torch.from_numpy(x)

        return SongFeatures(torch.from_numpy(self.mel), tensor(self.pitch), tensor(self.times), tensor(self.speaker))


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
            "failures": [vars(f) for f in self.failures],
        }

    def counts(self) -> dict:
        """What the run's catalog row keeps: the figures, not the messages (ingest_errors holds those)."""
        return {k: v for k, v in self.as_dict().items() if k != "failures"}

    def as_text(self) -> str:
        verb = "would ingest" if self.dry_run else "ingested"
        lines = [f"{verb} {self.ingested} songs, skipped {self.skipped} already present, failed {self.n_failed}"]
        lines += [f"  {cause}: {n}" for cause, n in sorted(self.failed.items())]
        lines += [f"  - {f.message}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more (recsys catalog --errors)")
        return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _separator(separation: SeparationConfig):
    """One separator per config and process (a neural one loads its weights once)."""
    from recsys.separation import separator_from_config

    return separator_from_config(separation)


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
    needs: frozenset[str] = frozenset(),
) -> PreparedSong | FileFailure:
    """Decode and validate one file, and compute the features `needs` names. Never raises for bad audio.

    Runs in a worker process. The audio is streamed (flat memory for any length); with
    features, the voiced stream's length gives the chunk count and the features are
    computed block by block (recsys.features.stream_features): memory holds them, never
    the whole waveform. The file is hashed
    here only when the job has not hashed it already (`entry.content_hash`).
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
        mel = pitch = times = speaker = None
        if features is None or not needs:
            chunks = iter_voiced_chunks(entry.path, cfg, separator=separator)
            n_voiced = sum(batch.shape[0] for batch in chunks)  # flat memory
        else:
            from recsys.features import stream_features

            stream = voiced_stream(entry.path, cfg, separator)  # pass 1 only: the voiced length
            n_voiced = n_chunks(stream.n_samples, cfg)
            if n_voiced == 0:
                raise AudioError(
                    entry.path,
                    "silent",
                    f"only {stream.n_samples / cfg.sample_rate:.2f} s of voiced audio; "
                    f"at least audio.min_chunk_seconds={cfg.min_chunk_seconds:g} s is needed",
                )
            feats = stream_features(stream, needs, cfg, features)  # block by block: never the whole waveform
            mel = feats.mel.numpy()
            pitch = None if feats.pitch is None else feats.pitch.numpy()
            times = None if feats.times is None else feats.times.numpy()
            speaker = None if feats.speaker is None else feats.speaker.numpy()
        digest = entry.content_hash or content_hash(entry.path)
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
    return PreparedSong(song, mel, pitch, times, speaker)


def embed_prepared(embedder: Embedder, prepared: Sequence[PreparedSong]) -> list[EmbeddedSong]:
    """Vectors for a batch of prepared songs (each must carry its features), in the same order."""
    vectors = embedder.embed_features([p.features() for p in prepared])
    return [EmbeddedSong(p.song, vectors.timbre[i], vectors.melody[i]) for i, p in enumerate(prepared)]


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
    embedded: int  # songs given vectors (0 without vectors)


def commit_batch(
    s: Session,
    run: catalog.IngestRun | None,
    songs: Sequence[AnalysedSong],
    failures: Sequence[FileFailure] = (),
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    model_rows: Mapping[str, catalog.ModelVersion] | None = None,
) -> CommitResult:
    """Write one batch inside the caller's transaction: errors, songs and (optionally) their vectors.

    `vectors` are (timbre (B, Dt), melody (B, Dm)) rows aligned with `songs`, stored under
    `model_rows` ("timbre", "melody"). A song already in the catalog (same content hash)
    keeps its row and gets the vectors it lacks, so the batch can be replayed after a
    crash or by a concurrent job.
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
        if model_rows is None:
            raise ValueError("commit_batch with vectors needs the model rows they belong to")
        t, m = vectors
        if len(t) != len(songs) or len(m) != len(songs):
            raise ValueError(f"{len(songs)} songs but {len(t)} timbre and {len(m)} melody vectors")
        catalog.put_embeddings(s, model_rows["timbre"], "timbre", dict(zip(ids, t)))
        catalog.put_embeddings(s, model_rows["melody"], "melody", dict(zip(ids, m)))
        embedded = len(set(ids))  # a version shared with another pair may have had its vectors already
    return CommitResult(ids, created, embedded)


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
