"""Ingest: every bad file is recorded with its cause, good ones are registered once, re-runs change nothing."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from job_helpers import ingest

from recsys import catalog
from recsys.config import AudioConfig
from recsys.manifest import ManifestError

CFG = AudioConfig()


def _voice(seconds: float, sr: int, f0: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A vibrato-ed harmonic 'voice' with a little noise: voiced, and different per f0/seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * math.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * math.pi * 5.5 * t))) / sr
    x = sum(np.sin(h * phase) / h for h in range(1, 8)) * 0.2 + 0.003 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def _write(path: Path, data: np.ndarray, sr: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **kw)
    return path


@pytest.fixture
def messy_catalog(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A manifest holding every kind of good and bad input the foundation issue lists."""
    d = tmp_path / "audio"
    good = {
        "8k": _write(d / "a" / "r8k.wav", _voice(3, 8000, 150), 8000),
        "44k": _write(d / "a" / "r44k.flac", _voice(3, 44100, 180, seed=1), 44100),
        "48k": _write(d / "b" / "r48k.wav", _voice(3, 48000, 210, seed=2), 48000),
        "stereo": _write(d / "b" / "stereo.ogg", _voice(3, 22050, 240, channels=2, seed=3), 22050),
        "6ch": _write(d / "c" / "six.wav", _voice(3, 16000, 270, channels=6, seed=4), 16000),
        "mp3": _write(d / "c" / "song.mp3", _voice(3, 44100, 300, seed=5), 44100),
        "unicode": _write(d / "가수 ü" / "노래.wav", _voice(3, 16000, 330, seed=6), 16000),
    }
    bad = {}
    bad["empty"] = d / "empty.wav"
    bad["empty"].write_bytes(b"")
    full = _write(d / "tmp_full.wav", _voice(3, 16000, 200, seed=7), 16000).read_bytes()
    bad["truncated"] = d / "truncated.wav"
    bad["truncated"].write_bytes(full[: len(full) // 3])
    (d / "tmp_full.wav").unlink()
    bad["unreadable"] = d / "noise.mp3"
    bad["unreadable"].write_bytes(np.random.default_rng(0).bytes(4096))
    bad["silent"] = _write(d / "silent.wav", np.zeros(16000 * 2, np.float32), 16000)
    nan = _voice(2, 16000, 200, seed=8)
    nan[1000] = np.nan
    bad["non_finite"] = _write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    inf = _voice(2, 16000, 220, seed=9)
    inf[500] = np.inf
    bad["non_finite_inf"] = _write(d / "inf.wav", inf, 16000, subtype="FLOAT")

    rows = ["path,singer,title,gender"]
    for name, p in good.items():
        rows.append(f"{p.relative_to(tmp_path)},{'Ann' if name in ('8k', '44k', 'mp3') else 'Bo'},{name},female")
    for p in bad.values():
        rows.append(f"{p},Cy,bad,male")
    rows.append("audio/does_not_exist.wav,Cy,ghost,male")
    rows.append(f"{good['8k'].relative_to(tmp_path)},Ann,dup,female")  # the same file listed twice
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest, {k: str(v) for k, v in {**good, **bad}.items()}


def test_messy_catalog_on_both_backends(messy_catalog, db_url):
    manifest, files = messy_catalog
    sessions = catalog.open_catalog(db_url)
    summary = ingest(manifest, db_url, CFG, workers=2, batch_size=3)

    assert summary.ingested == 7
    assert summary.skipped == 1  # listed twice
    assert dict(summary.failed) == {
        "empty": 1, "truncated": 1, "unreadable": 1, "silent": 1, "non_finite": 2, "not_found": 1,
    }
    with sessions() as s:
        songs = catalog.list_songs(s)
        assert sorted(song.title for song in songs) == ["44k", "48k", "6ch", "8k", "mp3", "stereo", "unicode"]
        assert len({song.content_hash for song in songs}) == 7
        by_title = {song.title: song for song in songs}
        assert by_title["unicode"].path == files["unicode"]
        assert (by_title["48k"].sample_rate, by_title["6ch"].channels, by_title["stereo"].channels) == (48000, 6, 2)
        assert by_title["8k"].meta == {"gender": "female"}
        assert by_title["8k"].singer.name == "Ann" and by_title["6ch"].singer.name == "Bo"
        assert all(song.n_voiced_chunks >= 1 and song.duration_s == pytest.approx(3.0, abs=0.05) for song in songs)
        errors = catalog.recent_errors(s, limit=50)
        causes = {e.path: e.cause for e in errors}
        for key in ("empty", "truncated", "unreadable", "silent", "non_finite"):
            assert causes[files[key]] == key
            message = next(e.message for e in errors if e.path == files[key])
            assert Path(files[key]).name in message
        stats = catalog.catalog_stats(s)
        assert (stats.n_songs, stats.n_singers, stats.n_errors) == (7, 2, 7)

    again = ingest(manifest, db_url, CFG, workers=1)
    assert (again.ingested, again.skipped) == (0, 8)
    with sessions() as s:
        assert len(catalog.list_songs(s)) == 7


def test_renamed_file_is_not_new_and_changed_file_is(tmp_path, sqlite_url):
    sessions = catalog.open_catalog(sqlite_url)
    song = _write(tmp_path / "s" / "one.wav", _voice(3, 16000, 200), 16000)
    assert ingest(song, sqlite_url, CFG, workers=1).ingested == 1
    renamed = song.rename(tmp_path / "s" / "renamed.wav")
    assert ingest(renamed, sqlite_url, CFG, workers=1).skipped == 1
    _write(renamed, _voice(3, 16000, 260, seed=3), 16000)
    assert ingest(renamed, sqlite_url, CFG, workers=1).ingested == 1
    with sessions() as s:
        assert len(catalog.list_songs(s)) == 2


def test_dry_run_validates_without_writing(messy_catalog, sqlite_url, tmp_path):
    manifest, _ = messy_catalog
    summary = ingest(manifest, None, CFG, workers=1, dry_run=True, workspace=tmp_path)
    assert summary.dry_run and summary.ingested == 7 and summary.n_failed == 7
    assert not (tmp_path / "catalog.db").exists()


def test_manifest_without_path_column_fails_before_anything_is_written(tmp_path, sqlite_url):
    bad = tmp_path / "m.csv"
    bad.write_text("file,singer\nx.wav,Ann\n")
    sessions = catalog.open_catalog(sqlite_url)
    with pytest.raises(ManifestError, match="no `path` column"):
        ingest(bad, sqlite_url, CFG, workers=1)
    with sessions() as s:
        assert catalog.catalog_stats(s).n_runs == 0


def test_cli_ingest_and_catalog(messy_catalog, tmp_path):
    manifest, _ = messy_catalog
    ws = tmp_path / "ws"
    run = [sys.executable, "-m", "recsys", "--workspace", str(ws)]
    out = subprocess.run([*run, "ingest", str(manifest)], capture_output=True, text=True, check=True).stdout
    assert "ingested 7 songs, skipped 1 already present, failed 7" in out
    assert "truncated" in out and "does_not_exist.wav: file does not exist" in out
    out = subprocess.run([*run, "catalog"], capture_output=True, text=True, check=True).stdout
    assert "singers: 2   songs: 7" in out and "errors: 7" in out
    out = subprocess.run([*run, "ingest", str(manifest)], capture_output=True, text=True, check=True).stdout
    assert "ingested 0 songs, skipped 8 already present" in out
