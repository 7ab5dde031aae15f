"""One catalog's home: its settings, folders, database sessions and audio clean-up.

Everything else is handed a Workspace instead of reading settings and paths itself:

    <root>/catalog.db            SQLite catalog (unless a database URL points elsewhere)
    <root>/models/               model versions and the CURRENT pair (recsys.registry)
    <root>/index/<pair>/         FAISS index of that pair's vectors
    <root>/projections/<pair>/   UMAP maps
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.config import SeparationConfig, Settings, load_settings
from recsys.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from recsys.separation import Separator


def describe_database(url: str) -> str:
    """The database a URL names, for messages: host and port (or the file), never a password."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        return url.rsplit("@", 1)[-1]
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database or ':memory:'}"
    return f"{parsed.get_backend_name()} at {parsed.host or 'localhost'}:{parsed.port or 'default port'}" + (
        f"/{parsed.database}" if parsed.database else "")


def _first_line(error: Exception, url: str) -> str:
    """The driver's own first line of an error, with the URL's password (if any) masked."""
    from sqlalchemy.engine import make_url

    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    password = make_url(url).password
    return line.replace(str(password), "***") if password else line


class Workspace:
    """Paths and catalog sessions of one workspace; the separation its audio path applies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def open(cls, workspace: str | Path | None = None, db_url: str | None = None, **overrides: Any) -> Workspace:
        return cls(load_settings(workspace=workspace, db_url=db_url, **overrides))

    @property
    def root(self) -> Path:
        return self.settings.workspace

    def index_dir(self, version: str) -> Path:
        return self.root / "index" / version

    def catalog_exists(self) -> bool:
        """Whether a catalog is there to read (a database URL is taken to exist)."""
        return self.settings.db_url is not None or (self.root / "catalog.db").exists()

    @functools.cached_property
    def sessions(self) -> sessionmaker[Session]:
        """The catalog's session factory, created and migrated on first use."""
        from sqlalchemy.exc import SQLAlchemyError

        from recsys import catalog

        self.root.mkdir(parents=True, exist_ok=True)
        url = self.settings.database_url
        try:
            return catalog.open_catalog(url)
        except SQLAlchemyError as e:
            raise DatabaseUnavailableError(
                f"cannot open the catalog database ({describe_database(url)}): {_first_line(e, url)}",
                "check that the server is running and the URL (--db / RECSYS_DB_URL) is right") from e

    @functools.cached_property
    def separation(self) -> SeparationConfig:
        """The accompaniment suppression every audio path of this workspace applies: the configured one
        when set explicitly, else the one the catalog's latest ingest run recorded, else none."""
        if "separation" in self.settings.model_fields_set or not self.catalog_exists():
            return self.settings.separation
        from recsys import catalog

        with self.sessions() as s:
            recorded = catalog.recorded_separation(s)
        if recorded is None:
            return self.settings.separation
        try:
            return SeparationConfig(**recorded)
        except ValueError as e:
            raise ValueError(
                f"the catalog {describe_database(self.settings.database_url)} recorded an invalid "
                f"separation {recorded!r}: {e}") from e

    @functools.cached_property
    def separator(self) -> Separator | None:
        """The separator of `separation` (None for method 'none'); a neural one loads its weights once."""
        from recsys.separation import separator_from_config

        return None if self.separation.method == "none" else separator_from_config(self.separation)

    def with_separation(self, separation: SeparationConfig) -> Workspace:
        """The same workspace with an explicit separation (e.g. `recsys ingest --separate`)."""
        return Workspace(self.settings.model_copy(update={"separation": separation}))
