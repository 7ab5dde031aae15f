"""Alembic environment of the catalog.

`recsys.catalog.migrate` passes an open connection in ``config.attributes["connection"]``;
the alembic command line may instead set ``sqlalchemy.url``. The upgrade runs in
one transaction; on PostgreSQL it first takes an advisory lock so that
concurrent migrators run one after the other (on SQLite, ``migrate`` opens the
transaction with BEGIN IMMEDIATE, which does the same).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

from recsys.catalog.models import Base

# Any constant shared by all migrators: pg_advisory_xact_lock(key) serialises them.
PG_MIGRATION_LOCK_KEY = 0x5EC5_CA7A


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: call recsys.catalog.migrate(url) or set sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
