"""The catalog: singers, songs, model versions, embeddings and ingest runs, in SQL.

SQLite by default (one file per workspace), PostgreSQL to scale out. Imports no
ML code: embeddings go in and out as numpy float32 arrays.

    factory = open_catalog("sqlite:///catalog.db")   # creates / migrates the schema
    with session_scope(factory) as s:
        song, created = add_song_if_new(s, content_hash=..., path=..., ...)
"""

from recsys.catalog.db import make_engine, migrate, open_catalog, session_factory, session_scope
from recsys.catalog.models import (
    MODEL_KINDS,
    RUN_STATUSES,
    Base,
    Embedding,
    IngestError,
    IngestRun,
    ModelVersion,
    Singer,
    Song,
)
from recsys.catalog.repository import (
    CatalogStats,
    add_song_if_new,
    catalog_stats,
    finish_run,
    get_embeddings,
    get_or_create_singer,
    hashes_with_pair,
    known_hashes,
    list_songs,
    model_version_row,
    pair_vectors,
    put_embeddings,
    recent_errors,
    recent_runs,
    record_error,
    recorded_separation,
    register_model_version,
    song_by_hash,
    songs_missing_embeddings,
    songs_missing_pair,
    start_run,
)

__all__ = [
    "MODEL_KINDS",
    "RUN_STATUSES",
    "Base",
    "CatalogStats",
    "Embedding",
    "IngestError",
    "IngestRun",
    "ModelVersion",
    "Singer",
    "Song",
    "add_song_if_new",
    "catalog_stats",
    "finish_run",
    "get_embeddings",
    "get_or_create_singer",
    "hashes_with_pair",
    "known_hashes",
    "list_songs",
    "make_engine",
    "migrate",
    "model_version_row",
    "open_catalog",
    "pair_vectors",
    "put_embeddings",
    "recent_errors",
    "recent_runs",
    "record_error",
    "recorded_separation",
    "register_model_version",
    "session_factory",
    "session_scope",
    "song_by_hash",
    "songs_missing_embeddings",
    "songs_missing_pair",
    "start_run",
]
