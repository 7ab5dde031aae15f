"""Reads and writes on the catalog: plain functions taking a Session.

Writes that concurrent processes may race on (a song's hash, a singer's name, a
model version, an embedding) are ``INSERT ... ON CONFLICT DO NOTHING`` followed by
a select, so two ingest jobs adding the same file end with one row and no error.
Functions flush but never commit: the caller's ``session_scope`` decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Table, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from recsys.catalog.models import (
    MODEL_KINDS,
    RUN_STATUSES,
    Embedding,
    IngestError,
    IngestRun,
    ModelVersion,
    Singer,
    Song,
    utcnow,
)

VECTOR_DTYPE = np.dtype("<f4")  # stored embedding bytes: little-endian float32
MAX_CAUSE_LEN = 64
_CHUNK = 500  # ids per IN (...) clause, well below every backend's parameter limit
_SHA256 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


@dataclass(frozen=True)
class CatalogStats:
    n_singers: int
    n_songs: int
    total_duration_s: float
    songs_by_status: dict[str, int] = field(default_factory=dict)
    n_errors: int = 0
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    n_runs: int = 0


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert(s: Session, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``."""
    name = s.get_bind().dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"unsupported database dialect {name!r}; valid: sqlite, postgresql")


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")


# --- singers and songs -------------------------------------------------------------------------


def get_or_create_singer(s: Session, name: str, metadata: dict[str, Any] | None = None) -> Singer:
    """The singer called `name`, created if new (`metadata` is only used on creation)."""
    if not name or not name.strip():
        raise ValueError(f"singer name must be a non-empty string, got {name!r}")
    singer = s.scalar(select(Singer).where(Singer.name == name))
    if singer is not None:
        return singer
    table = Singer.__table__
    stmt = _insert(s, table).values(name=name, metadata=dict(metadata or {}))
    s.execute(stmt.on_conflict_do_nothing(index_elements=[table.c.name]))
    return s.scalars(select(Singer).where(Singer.name == name)).one()


def song_by_hash(s: Session, content_hash: str) -> Song | None:
    return s.scalar(select(Song).where(Song.content_hash == content_hash))


def add_song_if_new(
    s: Session,
    *,
    content_hash: str,
    path: str,
    singer: str | None,
    title: str | None,
    external_id: str | None,
    duration_s: float,
    sample_rate: int,
    channels: int,
    format: str,
    n_voiced_chunks: int,
    metadata: dict[str, Any],
) -> tuple[Song, bool]:
    """Register a recording unless its content hash is known; returns (song, created).

    A file renamed or copied elsewhere has the same hash and is not a new song (the
    stored row, path included, is returned unchanged); an edited file is a new song.
    """
    if not _SHA256.fullmatch(content_hash):
        raise ValueError(
            f"content_hash must be 64 lowercase hex digits (sha256), got {content_hash!r} for {path}"
        )
    singer_id = get_or_create_singer(s, singer).id if singer else None
    table = Song.__table__
    stmt = (
        _insert(s, table)
        .values(
            singer_id=singer_id,
            external_id=external_id,
            title=title,
            path=str(path),
            content_hash=content_hash,
            duration_s=float(duration_s),
            sample_rate=int(sample_rate),
            channels=int(channels),
            format=format,
            n_voiced_chunks=int(n_voiced_chunks),
            metadata=dict(metadata),
        )
        .on_conflict_do_nothing(index_elements=[table.c.content_hash])
        .returning(table.c.id)
    )
    new_id = s.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        song = s.get(Song, new_id)
        assert song is not None
        return song, True
    song = song_by_hash(s, content_hash)
    if song is None:  # the conflicting row vanished between our insert and select
        raise RuntimeError(
            f"song with hash {content_hash} ({path}) conflicted on insert but cannot be read back"
        )
    return song, False


def known_hashes(s: Session, hashes: Iterable[str]) -> set[str]:
    """The subset of `hashes` already in the catalog."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        found.update(s.scalars(select(Song.content_hash).where(Song.content_hash.in_(chunk))))
    return found


def list_songs(s: Session, *, singer: str | None = None, status: str | None = None) -> list[Song]:
    """Songs ordered by id, optionally of one singer (by name) and/or in one status."""
    query = select(Song).order_by(Song.id)
    if singer is not None:
        query = query.join(Singer, Song.singer_id == Singer.id).where(Singer.name == singer)
    if status is not None:
        query = query.where(Song.status == status)
    return list(s.scalars(query))


# --- ingest runs ---------------------------------------------------------------------------------


def start_run(s: Session, source: str, options: dict[str, Any]) -> IngestRun:
    run = IngestRun(source=str(source), options=dict(options), status="running", counts={})
    s.add(run)
    s.flush()
    return run


def record_error(s: Session, run: IngestRun, path: str, cause: str, message: str) -> IngestError:
    """Keep why one file of `run` failed: `cause` a short category ('truncated', 'silent', ...)."""
    if not cause or len(cause) > MAX_CAUSE_LEN:
        raise ValueError(f"error cause must be a short category (1..{MAX_CAUSE_LEN} chars), got {cause!r}")
    error = IngestError(run_id=run.id, path=str(path), cause=cause, message=message)
    s.add(error)
    s.flush()
    return error


def finish_run(s: Session, run: IngestRun, counts: dict[str, Any], status: str = "finished") -> None:
    """Close `run` with its final counts (ingested, skipped, failed by cause)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES)}")
    row = s.get(IngestRun, run.id)
    if row is None:
        raise ValueError(f"ingest run {run.id} is not in the catalog")
    row.counts = dict(counts)
    row.status = status
    row.finished_at = utcnow()
    s.flush()


def recent_runs(s: Session, limit: int = 10) -> list[IngestRun]:
    """The newest runs first."""
    return list(s.scalars(select(IngestRun).order_by(IngestRun.id.desc()).limit(limit)))


def recent_errors(s: Session, limit: int = 10, run: IngestRun | None = None) -> list[IngestError]:
    """The newest ingest errors first, optionally of one run."""
    query = select(IngestError).order_by(IngestError.id.desc()).limit(limit)
    if run is not None:
        query = query.where(IngestError.run_id == run.id)
    return list(s.scalars(query))


# --- model versions and embeddings ---------------------------------------------------------------


def register_model_version(
    s: Session,
    kind: str,
    version: str,
    config: dict[str, Any],
    fingerprint: str,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """The (kind, version) row, created if new; registering it again is a no-op.

    Raises ValueError if (kind, version) exists with another fingerprint: a
    different model must get a different version. Given `metrics` replace the stored ones.
    """
    _check_kind(kind)
    table = ModelVersion.__table__
    stmt = _insert(s, table).values(
        kind=kind, version=version, config=dict(config), fingerprint=fingerprint, metrics=dict(metrics or {})
    )
    s.execute(stmt.on_conflict_do_nothing(index_elements=[table.c.kind, table.c.version]))
    row = s.scalars(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).one()
    if row.fingerprint != fingerprint:
        raise ValueError(
            f"{kind} model version {version!r} is already registered with fingerprint {row.fingerprint!r}, "
            f"not {fingerprint!r}; register the new model under a new version"
        )
    if metrics is not None and row.metrics != metrics:
        row.metrics = dict(metrics)
        s.flush()
    return row


def _vector_bytes(song_id: int, vector: np.ndarray, dim: int | None) -> bytes:
    a = np.asarray(vector)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"song {song_id}: an embedding must be a non-empty 1-D vector, got shape {a.shape}")
    if dim is not None and a.size != dim:
        raise ValueError(f"song {song_id}: embedding has {a.size} dims, the others {dim}")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"song {song_id}: embedding dtype {a.dtype} is not numeric")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"song {song_id}: embedding has non-finite values")
    return a.astype(VECTOR_DTYPE).tobytes()


def put_embeddings(
    s: Session, model_version: ModelVersion, kind: str, vectors: Mapping[int, np.ndarray]
) -> int:
    """Store song_id -> (d,) vectors as float32; rows that exist already are kept. Returns rows inserted."""
    _check_kind(kind)
    if not vectors:
        return 0
    dim: int | None = None
    rows = []
    for song_id, vector in vectors.items():
        blob = _vector_bytes(int(song_id), vector, dim)
        dim = len(blob) // VECTOR_DTYPE.itemsize
        rows.append(
            {
                "song_id": int(song_id),
                "model_version_id": model_version.id,
                "kind": kind,
                "dim": dim,
                "vector": blob,
            }
        )
    stored_dim = s.scalar(
        select(Embedding.dim)
        .where(Embedding.model_version_id == model_version.id, Embedding.kind == kind)
        .limit(1)
    )
    if stored_dim is not None and stored_dim != dim:
        raise ValueError(
            f"{kind} embeddings of model version {model_version.version!r} have {stored_dim} dims, got {dim}"
        )
    ids = sorted(r["song_id"] for r in rows)
    known: set[int] = set()
    for chunk in _chunks(ids):
        known.update(s.scalars(select(Song.id).where(Song.id.in_(chunk))))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(
            f"no songs with ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''} in the catalog"
        )
    table = Embedding.__table__
    stmt = (
        _insert(s, table)
        .on_conflict_do_nothing(index_elements=[table.c.song_id, table.c.model_version_id, table.c.kind])
        .returning(table.c.id)
    )
    inserted = 0
    for chunk in _chunks(rows):
        inserted += len(s.execute(stmt, list(chunk)).all())
    return inserted


def get_embeddings(
    s: Session, model_version: ModelVersion, kind: str, song_ids: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) int64, X (n, d) float32) ordered by song id; `song_ids` without a vector are left out.

    With no rows, X has shape (0, 0).
    """
    _check_kind(kind)
    query = select(Embedding.song_id, Embedding.dim, Embedding.vector).where(
        Embedding.model_version_id == model_version.id, Embedding.kind == kind
    )
    if song_ids is None:
        rows = list(s.execute(query.order_by(Embedding.song_id)))
    else:
        wanted = sorted({int(i) for i in song_ids})
        rows = []
        for chunk in _chunks(wanted):
            rows.extend(s.execute(query.where(Embedding.song_id.in_(chunk))))
        rows.sort(key=lambda r: r.song_id)
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    dims = {r.dim for r in rows}
    if len(dims) != 1:
        raise ValueError(
            f"{kind} embeddings of model version {model_version.version!r} mix dims {sorted(dims)}"
        )
    d = dims.pop()
    for r in rows:
        if len(r.vector) != d * VECTOR_DTYPE.itemsize:
            raise ValueError(
                f"embedding of song {r.song_id} holds {len(r.vector)} bytes, expected {d} float32"
            )
    ids = np.fromiter((r.song_id for r in rows), dtype=np.int64, count=len(rows))
    X = np.frombuffer(b"".join(r.vector for r in rows), dtype=VECTOR_DTYPE).reshape(len(rows), d)
    return ids, X.astype(np.float32)  # native byte order, writable copy


def songs_missing_embeddings(s: Session, model_version: ModelVersion, kind: str) -> list[Song]:
    """Songs with no `kind` vector from `model_version`, ordered by id."""
    _check_kind(kind)
    has_vector = exists().where(
        Embedding.song_id == Song.id, Embedding.model_version_id == model_version.id, Embedding.kind == kind
    )
    return list(s.scalars(select(Song).where(~has_vector).order_by(Song.id)))


def model_version_row(s: Session, kind: str, version: str) -> ModelVersion | None:
    """The (kind, version) row, or None when it was never registered."""
    _check_kind(kind)
    return s.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version))


def _has_vector(row: ModelVersion | None, kind: str) -> Any:
    if row is None:
        return False
    return exists().where(Embedding.song_id == Song.id, Embedding.model_version_id == row.id, Embedding.kind == kind)


def songs_missing_pair(s: Session, timbre: ModelVersion | None, melody: ModelVersion | None) -> list[Song]:
    """Songs lacking the timbre or the melody vector of a model pair (rows None: never registered), by id."""
    done = _has_vector(timbre, "timbre") & _has_vector(melody, "melody") if timbre and melody else None
    query = select(Song) if done is None else select(Song).where(~done)
    return list(s.scalars(query.order_by(Song.id)))


def hashes_with_pair(s: Session, hashes: Iterable[str], timbre_version: str, melody_version: str) -> set[str]:
    """The subset of `hashes` whose song has both vectors of the (timbre, melody) pair."""
    rows = {kind: model_version_row(s, kind, v) for kind, v in (("timbre", timbre_version),
                                                                ("melody", melody_version))}
    if rows["timbre"] is None or rows["melody"] is None:
        return set()
    done = _has_vector(rows["timbre"], "timbre") & _has_vector(rows["melody"], "melody")
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        found.update(s.scalars(select(Song.content_hash).where(Song.content_hash.in_(chunk), done)))
    return found


def pair_vectors(
    s: Session, timbre: ModelVersion | None, melody: ModelVersion | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids (n,), timbre (n, Dt), melody (n, Dm)) of the songs with both vectors of a pair, by id.

    With a row missing or no vectors, the arrays are empty ((0,), (0, 0), (0, 0)).
    """
    if timbre is None or melody is None:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
    ids_t, xt = get_embeddings(s, timbre, "timbre")
    ids_m, xm = get_embeddings(s, melody, "melody")
    common = np.intersect1d(ids_t, ids_m)
    return common, xt[np.isin(ids_t, common)], xm[np.isin(ids_m, common)]


def recorded_separation(s: Session) -> dict[str, Any] | None:
    """The separation options the latest ingest run that recorded one used (None: never recorded)."""
    for options in s.scalars(select(IngestRun.options).order_by(IngestRun.id.desc())):
        if options and "separation" in options:
            return dict(options["separation"])
    return None


# --- summary -------------------------------------------------------------------------------------


def catalog_stats(s: Session) -> CatalogStats:
    n_songs, total = s.execute(
        select(func.count(Song.id), func.coalesce(func.sum(Song.duration_s), 0.0))
    ).one()
    by_status = {
        k: int(v) for k, v in s.execute(select(Song.status, func.count(Song.id)).group_by(Song.status))
    }
    by_cause = {
        k: int(v)
        for k, v in s.execute(
            select(IngestError.cause, func.count(IngestError.id)).group_by(IngestError.cause)
        )
    }
    return CatalogStats(
        n_singers=s.scalar(select(func.count(Singer.id))) or 0,
        n_songs=int(n_songs),
        total_duration_s=float(total),
        songs_by_status=dict(sorted(by_status.items())),
        n_errors=sum(by_cause.values()),
        errors_by_cause=dict(sorted(by_cause.items())),
        n_runs=s.scalar(select(func.count(IngestRun.id))) or 0,
    )
