"""Engines, migrations and sessions for the catalog (SQLite by default, PostgreSQL to scale out).

SQLite runs in WAL mode (readers never block the writer), with foreign keys on
and a busy timeout so that concurrent ingest processes wait for each other
instead of failing. Migrations are alembic's, shipped in ``migrations/`` and run
in code: no alembic.ini is needed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_S = 60.0  # concurrent writers wait this long for the lock before failing


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ValueError(
            f"not a database URL: {url!r} (e.g. sqlite:///catalog.db or postgresql+psycopg://...)"
        ) from e
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r} in {parsed.render_as_string()!r}; "
            f"valid: {', '.join(SUPPORTED_BACKENDS)}"
        )
    return parsed


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_pragmas(dbapi_connection: Any, journal_wal: bool) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if journal_wal:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes; safe with WAL
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch a database file to WAL (a persistent setting), waiting out other processes' locks.

    Changing the journal mode fails at once with "database is locked" while another
    process holds a lock, whatever busy_timeout says: two ingest jobs opening a new
    catalog together hit this. Retry until the busy timeout; once one process has
    switched the file, the others find it in WAL mode and change nothing.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _make_sqlite_engine(url: URL, *, serialise_writes: bool = False) -> Engine:
    """An SQLite engine; with `serialise_writes`, every transaction starts with BEGIN IMMEDIATE.

    `serialise_writes` is for migrations only: it makes DDL transactional and lets
    one process at a time migrate (the others wait on the lock, then find nothing to do).
    """
    memory = _is_memory(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps}
    if memory:
        # One shared connection, or every session would see its own empty database.
        kwargs |= {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if serialise_writes:
            kwargs["poolclass"] = NullPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if serialise_writes:
            dbapi_connection.isolation_level = None  # the "begin" hook below emits BEGIN itself
        _sqlite_pragmas(dbapi_connection, journal_wal=not memory)

    if serialise_writes:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str | URL) -> Engine:
    """An engine for `url` (``sqlite:///path.db``, ``sqlite://`` in memory, ``postgresql+psycopg://...``)."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not _is_memory(parsed):
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise FileNotFoundError(f"folder of the SQLite catalog does not exist: {folder} (from {url})")
        return _make_sqlite_engine(parsed)
    return create_engine(parsed, pool_pre_ping=True, json_serializer=_json_dumps)


def _alembic_config(connection: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine_or_url: Engine | str | URL) -> None:
    """Upgrade the catalog schema to the newest migration ("head").

    Safe to call repeatedly and from several processes at once: the upgrade runs
    in one transaction under a lock (BEGIN IMMEDIATE on SQLite, an advisory lock
    on PostgreSQL), so latecomers find the schema current and do nothing.
    """
    owned = not isinstance(engine_or_url, Engine)
    engine = make_engine(engine_or_url) if owned else engine_or_url
    url = engine.url
    migration_engine = engine
    if url.get_backend_name() == "sqlite" and not _is_memory(url):
        migration_engine = _make_sqlite_engine(url, serialise_writes=True)
    try:
        with migration_engine.connect() as connection:
            command.upgrade(_alembic_config(connection), "head")
            connection.commit()
    finally:
        if migration_engine is not engine:
            migration_engine.dispose()
        if owned:
            engine.dispose()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (no reload on attribute access)."""
    return sessionmaker(engine, expire_on_commit=False)


def open_catalog(url: str | URL) -> sessionmaker[Session]:
    """Open the catalog at `url`, creating or migrating its schema as needed."""
    engine = make_engine(url)
    migrate(engine)
    return session_factory(engine)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
