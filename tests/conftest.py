"""Shared fixtures: catalog databases on SQLite and PostgreSQL.

PostgreSQL tests use the server at RECSYS_TEST_PG_URL (default: the local one,
trust auth, database `test`). Each test gets its own schema, dropped afterwards.
An unreachable server fails those tests: CI must not pass without PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# `recsys ingest --embed` / `reembed` fit the explorer's maps in a detached process by default; in the tests
# that would leave UMAP fits running beside the next tests (and in deleted folders). The tests of that
# behaviour ask for it with --maps background.
os.environ.setdefault("RECSYS_JOB_MAPS", "skip")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file database (not yet migrated)."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections live in a fresh PostgreSQL schema (search_path), dropped afterwards."""
    base = make_url(os.environ.get("RECSYS_TEST_PG_URL", DEFAULT_PG_URL))
    shown = base.render_as_string(hide_password=True)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as e:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {shown} ({e.orig}). The catalog tests need it: start the server "
            f"or point RECSYS_TEST_PG_URL at one (e.g. postgresql+psycopg://user@host:5432/db).",
            pytrace=False,
        )
    # Unqualified names (our tables and alembic_version) resolve to the test schema only.
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '30s'"))
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on both catalog backends."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained workspace: 6 synthetic singers x 3 songs x 8 s, ingested, both encoders
    trained briefly (which embeds and indexes every song). Built once per test session; treat it as
    read-only (copy it with shutil.copytree to change it)."""
    from recsys.api import Recommender
    from recsys.config import load_settings
    from recsys.corpus import generate_corpus

    ws = tmp_path_factory.mktemp("demo-ws")
    settings = load_settings(
        manifest_file=None,
        workspace=ws,
        device="cpu",
        timbre={"epochs": 3, "steps_per_epoch": 8},
        melody={"epochs": 2},
    )
    manifest = generate_corpus(ws / "demo-corpus", n_singers=6, songs_per_singer=3, song_seconds=8.0, seed=0, workers=1)
    rec = Recommender(settings)
    rec.ingest(manifest, workers=1)
    rec.train()  # embeds the catalog, builds the index and switches to the new pair
    return ws
