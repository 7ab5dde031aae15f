"""Manifests: CSV with a `path` column, or a <singer>/<song>.<ext> folder."""

from pathlib import Path

import pytest

from recsys.manifest import ManifestEntry, ManifestError, ManifestProblem, iter_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def test_csv_relative_and_absolute_paths_and_metadata(tmp_path):
    song = _touch(tmp_path / "audio" / "a.wav")
    other = _touch(tmp_path / "elsewhere" / "b.flac")
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,singer,title,song_id,gender,genre\naudio/a.wav,Ann,Song A,s1,female,pop\n{other},,,,,\n")
    items = list(iter_manifest(csv))
    assert items[0] == ManifestEntry(song.resolve(), "Ann", "Song A", "s1", {"gender": "female", "genre": "pop"}, 2)
    assert items[1].path == other.resolve() and items[1].singer is None and items[1].title == "b"
    assert items[1].metadata == {}


def test_csv_without_path_column_is_rejected(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("file,singer\na.wav,Ann\n")
    with pytest.raises(ManifestError, match=r"m.csv: manifest has no `path` column \(columns: file, singer\)"):
        list(iter_manifest(csv))


def test_csv_bad_rows_become_problems_not_exceptions(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,singer\n,Ann\na.wav,Bo,extra\nb.wav,Cy\n")
    items = list(iter_manifest(csv))
    assert [type(i) for i in items] == [ManifestProblem, ManifestProblem, ManifestEntry]
    assert "empty `path`" in items[0].message and "more cells" in items[1].message
    assert all(i.cause == "bad_row" for i in items[:2])


def test_folder_layout_gives_singers(tmp_path):
    _touch(tmp_path / "Ann" / "one.wav")
    _touch(tmp_path / "Ann" / "two.MP3")
    _touch(tmp_path / "가수" / "노래.ogg")
    _touch(tmp_path / "Ann" / "notes.txt")
    _touch(tmp_path / "loose.flac")
    got = {(e.singer, e.title) for e in iter_manifest(tmp_path)}
    assert got == {("Ann", "one"), ("Ann", "two"), ("가수", "노래"), (None, "loose")}


def test_missing_source_and_unknown_kind(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        list(iter_manifest(tmp_path / "nope.csv"))
    odd = _touch(tmp_path / "x.txt")
    with pytest.raises(ManifestError, match="not a manifest"):
        list(iter_manifest(odd))
