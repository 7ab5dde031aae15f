"""Catalog manifests: a CSV with a `path` column, or a folder laid out <singer>/<song>.<ext>.

Rows are streamed, never held all at once, so a manifest of any length uses
constant memory. Rows that cannot be used are yielded as ManifestProblem
records (not raised) so that a batch can record them and go on.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from recsys.config import AUDIO_EXTENSIONS

RESERVED_COLUMNS = ("path", "singer", "title", "song_id")


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing file, no `path` column, ...)."""


@dataclass(frozen=True)
class ManifestEntry:
    path: Path  # resolved absolute path
    singer: str | None = None
    title: str | None = None
    song_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    line: int | None = None  # CSV line number, for messages
    content_hash: str | None = None  # sha256 of the file once the job hashed it (or, re-embedding, the catalog's)


@dataclass(frozen=True)
class ManifestProblem:
    """A row that cannot be ingested: where it is and why."""

    path: str
    cause: str  # short category: bad_row, not_found, unsupported
    message: str
    line: int | None = None


ManifestItem = ManifestEntry | ManifestProblem


def iter_manifest(source: str | Path) -> Iterator[ManifestItem]:
    """Entries (or problems) of a manifest CSV, a singer folder, or a single audio file.

    An unusable manifest raises ManifestError here, before anything is yielded,
    so a job can refuse it before it starts writing.
    """
    source = Path(source)
    if not source.exists():
        raise ManifestError(f"{source}: no such manifest, folder or audio file")
    if source.is_dir():
        return _iter_folder(source)
    if source.suffix.lower() == ".csv":
        _check_header(source)
        return _iter_csv(source)
    if source.suffix.lower() in AUDIO_EXTENSIONS:
        return iter([ManifestEntry(path=source.resolve(), title=source.stem)])
    raise ManifestError(
        f"{source}: not a manifest; give a .csv with a `path` column, a folder laid out "
        f"<singer>/<song>.<ext>, or an audio file ({', '.join(AUDIO_EXTENSIONS)})"
    )


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _check_header(path: Path) -> None:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = [h.strip() for h in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read manifest: {e}") from e
    if "path" not in header:
        raise ManifestError(
            f"{path}: manifest has no `path` column (columns: {', '.join(header) or 'none'}); "
            "the required column is `path`, optional ones are singer, title, song_id and any metadata"
        )


def _iter_csv(path: Path) -> Iterator[ManifestItem]:
    base = path.resolve().parent
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise ManifestError(f"{path}: cannot open manifest: {e}") from e
    with handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [h.strip() for h in (reader.fieldnames or [])]
        try:
            for row in reader:
                line = reader.line_num
                if None in row:  # more cells than header columns
                    yield ManifestProblem(
                        str(row.get("path") or ""), "bad_row", f"{path}:{line}: more cells than columns", line
                    )
                    continue
                raw = _clean(row.get("path"))
                if raw is None:
                    yield ManifestProblem("", "bad_row", f"{path}:{line}: empty `path` cell", line)
                    continue
                file = Path(raw).expanduser()
                file = (file if file.is_absolute() else base / file).resolve()
                metadata = {
                    k: v.strip() for k, v in row.items() if k not in RESERVED_COLUMNS and v and v.strip()
                }
                yield ManifestEntry(
                    path=file,
                    singer=_clean(row.get("singer")),
                    title=_clean(row.get("title")) or file.stem,
                    song_id=_clean(row.get("song_id")),
                    metadata=metadata,
                    line=line,
                )
        except csv.Error as e:
            raise ManifestError(f"{path}:{reader.line_num}: malformed CSV: {e}") from e


def _iter_folder(root: Path) -> Iterator[ManifestItem]:
    """<root>/<singer>/<song>.<ext>; audio files directly under root have no singer."""
    for entry in sorted(root.rglob("*")):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if entry.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        rel = entry.relative_to(root)
        singer = rel.parts[0] if len(rel.parts) > 1 else None
        yield ManifestEntry(path=entry.resolve(), singer=singer, title=entry.stem)
