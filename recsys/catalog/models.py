"""ORM tables of the catalog: singers, songs, model versions, embeddings, ingest runs and errors.

The schema itself is created by the alembic migrations in ``migrations/versions``;
a test checks that those migrations and these classes describe the same tables.
No ML code here: embedding vectors are float32 bytes (see ``repository``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MODEL_KINDS = ("timbre", "melody", "fused")
RUN_STATUSES = ("running", "finished", "failed")

# Deterministic constraint names, so later migrations (SQLite batch mode included) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: catalog timestamps must be timezone-aware")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# JSON objects; JSONB on PostgreSQL. MutableDict tracks in-place changes to top-level keys.
JSONDict = MutableDict.as_mutable(JSON().with_variant(JSONB(), "postgresql"))


def _kind_check(column: str) -> CheckConstraint:
    return CheckConstraint(f"{column} IN ({', '.join(repr(k) for k in MODEL_KINDS)})", name=f"{column}_valid")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Singer(Base):
    __tablename__ = "singers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # `metadata` is reserved by SQLAlchemy's declarative base: the attribute is `meta`.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    songs: Mapped[list[Song]] = relationship(back_populates="singer", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Singer(id={self.id}, name={self.name!r})"


class Song(Base):
    """One distinct recording, identified by the sha256 of its bytes; ``id`` is its FAISS vector id."""

    __tablename__ = "songs"
    # AUTOINCREMENT: SQLite never reuses the id of a deleted song, so FAISS ids stay unambiguous.
    __table_args__ = (
        Index("ix_songs_singer_id", "singer_id"),
        Index("ix_songs_status", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    singer_id: Mapped[int | None] = mapped_column(ForeignKey("singers.id", ondelete="SET NULL"))
    external_id: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    duration_s: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(32))
    n_voiced_chunks: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDict, default=dict)
    predicted: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="registered")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    singer: Mapped[Singer | None] = relationship(back_populates="songs")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="song", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Song(id={self.id}, title={self.title!r}, hash={self.content_hash[:12]})"


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("kind", "version"), _kind_check("kind"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)
    fingerprint: Mapped[str] = mapped_column(String(255))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"ModelVersion(id={self.id}, kind={self.kind!r}, version={self.version!r})"


class Embedding(Base):
    """One song's vector from one model version: ``dim`` float32 values, little-endian bytes."""

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("song_id", "model_version_id", "kind"),
        Index("ix_embeddings_model_version_id_kind", "model_version_id", "kind"),
        _kind_check("kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    song_id: Mapped[int] = mapped_column(ForeignKey("songs.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    song: Mapped[Song] = relationship(back_populates="embeddings")
    model_version: Mapped[ModelVersion] = relationship()


class IngestRun(Base):
    __tablename__ = "ingest_runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})", name="status_valid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    counts: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)

    errors: Mapped[list[IngestError]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"IngestRun(id={self.id}, source={self.source!r}, status={self.status!r})"


class IngestError(Base):
    """A file an ingest run could not register: ``cause`` is a short category, ``message`` the full text."""

    __tablename__ = "ingest_errors"
    __table_args__ = (Index("ix_ingest_errors_run_id", "run_id"), Index("ix_ingest_errors_cause", "cause"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    run: Mapped[IngestRun] = relationship(back_populates="errors")
