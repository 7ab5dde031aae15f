"""The CLI's one error layer: a known failure becomes `error: ...` (and a hint) on stderr, and an exit code.

The root command group runs every command inside `ErrorLayer.invoke`, so this is the only handler.
Anything not recognised is a bug and keeps its traceback; `recsys --debug` shows the traceback of
known failures too. Classes of heavy modules (torch, SQLAlchemy) are matched without importing them:
an error of a module that was never imported cannot have been raised.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup

from recsys.errors import InvalidOptionError, RecsysError

FAILED = 1  # the work could not be done
USAGE = 2  # the input was wrong: options, settings, a manifest

DB_HINT = "check that the server is running and that --db / RECSYS_DB_URL names the right host, port and database"


@dataclass(frozen=True)
class Failure:
    """What the user is shown: one line, an optional next step, the exit status."""

    message: str
    hint: str = ""
    code: int = FAILED


def _raised_as(error: BaseException, qualname: str) -> bool:
    """isinstance(error, <qualname>) without importing the class's module."""
    module, _, name = qualname.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(error, cls)


def _first_line(x: object) -> str:
    text = str(x).strip()
    return text.splitlines()[0].strip() if text else type(x).__name__


def scrub(text: str, url: str | None = None) -> str:
    """`text` without the password of `url`, nor any user:password@ of a URL inside it."""
    if url:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001 - an unparsable URL has no password to hide
            password = None
        if password:
            text = text.replace(str(password), "***")
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def where(url: str) -> str:
    """The database a URL names, for messages: host and port (or the file), never a password."""
    from recsys.workspace import describe_database

    return describe_database(url)


def _validation(error: Any) -> Failure:
    """A pydantic ValidationError: each bad field as `section.field: why (got value)`."""
    parts = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e.get("loc", ())) or "value"
        got = repr(e.get("input"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')} (got {got[:60] + '...' if len(got) > 60 else got})")
    hint = ("check --config, the manifest's `settings:` and RECSYS_* variables" if error.title == "Settings"
            else "`recsys config` prints the effective settings")
    return Failure(f"invalid {error.title}: " + "; ".join(parts), hint, USAGE)


def _database(error: BaseException, url: str | None) -> Failure:
    shown = where(url) if url else "the catalog database"
    reason = _first_line(getattr(error, "orig", None) or error)
    return Failure(f"cannot reach the catalog database ({shown}): {reason}", DB_HINT)


def _os_error(error: OSError) -> Failure:
    if error.filename is not None and error.strerror:
        return Failure(f"{error.filename}: {error.strerror}")
    return Failure(str(error))


def describe(error: BaseException, database_url: str | None = None) -> Failure | None:
    """The short form of a known error; None for anything else (a bug: keep the traceback)."""
    if isinstance(error, RecsysError):
        return Failure(error.message, error.hint, USAGE if isinstance(error, InvalidOptionError) else FAILED)
    if _raised_as(error, "pydantic.ValidationError"):
        return _validation(error)
    if _raised_as(error, "recsys.manifest.ManifestError"):
        return Failure(str(error), "a source is a manifest CSV with a `path` column, a <singer>/<song> folder "
                       "or one audio file", USAGE)
    if _raised_as(error, "recsys.audio.AudioError"):
        return Failure(str(error))
    if _raised_as(error, "recsys.training.checkpoint.CheckpointMismatchError"):
        return Failure(str(error), "retrain with `recsys train`, or restore the settings the model was trained with")
    if _raised_as(error, "sqlalchemy.exc.OperationalError") or _raised_as(error, "sqlalchemy.exc.InterfaceError"):
        return _database(error, database_url)
    if _raised_as(error, "sqlalchemy.exc.ArgumentError"):
        return Failure(f"cannot use the database URL: {_first_line(error)}",
                       "e.g. postgresql+psycopg://user@host:5432/db or sqlite:////path/to/catalog.db", USAGE)
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return _os_error(error)
    if isinstance(error, ImportError) and error.name is None:  # raised with a message: an optional package
        return Failure(str(error))
    if isinstance(error, ValueError):
        return Failure(str(error))
    return None


def show(failure: Failure, database_url: str | None = None) -> None:
    """Print a failure on stderr, with no password in it."""
    typer.secho(f"error: {scrub(failure.message, database_url)}", err=True, fg=typer.colors.RED)
    if failure.hint:
        typer.echo(f"hint: {scrub(failure.hint, database_url)}", err=True)


def _database_url(ctx: typer.Context) -> str | None:
    """The catalog URL the command used (recsys.cli.root.Context), to name it and hide its password."""
    return getattr(ctx.obj, "database_url", None) or ctx.params.get("db") or os.environ.get("RECSYS_DB_URL")


class ErrorLayer(TyperGroup):
    """The root command group: every command (and the global options) run inside `invoke`."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: usage errors, exits
            raise
        except Exception as error:
            url = _database_url(ctx)
            failure = None if ctx.params.get("debug") else describe(error, url)
            if failure is None:
                raise
            show(failure, url)
            raise typer.Exit(failure.code) from None


@contextmanager
def option_errors(option: str = "") -> Iterator[None]:
    """ValueErrors inside are about the user's options (exit status 2), not failures of the work."""
    try:
        yield
    except (RecsysError, typer.TyperException):
        raise
    except (ValueError, FileNotFoundError) as e:
        known = describe(e)
        if known is not None and known.code == USAGE:
            raise
        message = str(e) if not option or option in str(e) else f"{option}: {e}"
        raise InvalidOptionError(message) from e
