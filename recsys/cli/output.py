"""How commands print: a result renders itself as text (`as_text()`) or JSON (`as_dict()`); commands
only choose which. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer


def text_of(result: object) -> str:
    """The text a person reads."""
    if isinstance(result, str):
        return result
    if not hasattr(result, "as_text"):
        raise TypeError(f"{type(result).__name__} has no text rendering")
    return result.as_text()


def data_of(result: object) -> Any:
    """The JSON-able data a program reads."""
    return result.as_dict() if hasattr(result, "as_dict") else result


def emit(result: object, as_json: bool = False) -> None:
    """Print a result on stdout as JSON or as text."""
    if as_json:
        typer.echo(json.dumps(data_of(result), indent=2, ensure_ascii=False, default=str))
    else:
        typer.echo(text_of(result))


def note(message: str) -> None:
    """A progress or side line, on stderr."""
    typer.echo(message, err=True)


# Tables and lines of the CLI's own ---------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """Rows of a study: a text table, or the rows themselves as JSON."""

    rows: list[dict[str, Any]]
    columns: Sequence[tuple[str, str]]  # (key, header)
    float_digits: int = 3

    def as_dict(self) -> list[dict[str, Any]]:  # the JSON is the list of rows
        return self.rows

    def as_text(self) -> str:
        from recsys.evaluation import format_table

        return format_table(self.rows, list(self.columns), float_digits=self.float_digits)


@dataclass(frozen=True)
class Lines:
    """Text lines with the data they came from."""

    text: list[str]
    data: Any = field(default=None)

    def as_dict(self) -> Any:
        return self.data

    def as_text(self) -> str:
        return "\n".join(self.text)


# Progress ---------------------------------------------------------------------------------------


def print_epoch(row: dict[str, Any], kind: str | None = None) -> None:
    """One training epoch's numbers on stderr."""
    if "epoch" in row:
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
        note(("  " if kind is None else f"  [{kind}]  ") + " ".join(parts))


def stage_done(stage: str, done: int, total: int) -> None:
    """A stage's line once it is complete."""
    if done == total:
        note(f"  {stage}: {total} done")


@contextmanager
def bar(description: str, total: int | None = None, visible: bool = True) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr (drawn only on a terminal): yields advance(done=None)."""
    from recsys.progress import progress_bar

    if not visible:
        yield _quiet
        return
    with progress_bar(description, total=total) as advance:
        yield advance


def _quiet(*_: Any, **__: Any) -> None:
    return None


class StageBars:
    """Progress of a multi-stage run, (stage, done, total) callbacks: one bar per stage."""

    def __init__(self) -> None:
        self._stage: str | None = None
        self._bar: Any = None
        self._advance: Callable[..., None] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = bar(stage, total)
            self._advance = self._bar.__enter__()
        assert self._advance is not None
        self._advance(done=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(*sys.exc_info())
        self._stage, self._bar, self._advance = None, None, None
