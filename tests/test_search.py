"""Search over a trained demo workspace: weights steer rankings, explanations add up, bad queries fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recsys.api import Recommender
from recsys.audio import AudioError
from recsys.config import load_settings
from recsys.embedding import Weights
from recsys.errors import UnknownSingerError


def _rec(ws: Path) -> Recommender:
    return Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu"))


def test_weights_parse_and_reject():
    assert Weights.parse("timbre=0.7,melody=0.3") == Weights(0.7, 0.3)
    assert Weights.parse("melody=1") == Weights(0.0, 1.0)
    for bad in ("timbre=x", "pitch=1", "timbre=0,melody=0", "0.7"):
        with pytest.raises(ValueError):
            Weights.parse(bad)


def test_weights_steer_rankings(demo_workspace):
    """Melody-only ranks a shared-melody song first more often than timbre-only, and vice versa for singers."""
    rec = _rec(demo_workspace)
    songs = {s["id"]: s for s in rec.songs()}
    same_melody = {"melody": 0, "timbre": 0}
    same_singer = {"melody": 0, "timbre": 0}
    for song_id, song in songs.items():
        for name, w in (("melody", Weights(0, 1)), ("timbre", Weights(1, 0))):
            top = rec.search_song(song_id, k=1, weights=w, by="song").songs[0]
            assert top.song_id != song_id
            other = songs[top.song_id]
            same_melody[name] += other["metadata"]["melody_id"] == song["metadata"]["melody_id"]
            same_singer[name] += other["singer"] == song["singer"]
    assert same_melody["melody"] > same_melody["timbre"]
    assert same_singer["timbre"] > same_singer["melody"]


def test_scores_explain_themselves(demo_workspace):
    rec = _rec(demo_workspace)
    w = Weights(0.6, 0.4)
    result = rec.search_song(rec.songs()[0]["id"], k=5, weights=w)
    assert len(result.songs) == 5 and len(result.singers) == 5
    sr = rec.searcher
    for hits, cal in ((result.songs, sr.song_calibration), (result.singers, sr.singer_calibration)):
        for hit in hits:  # shares of each similarity standardised against the catalog's own distribution
            expected = (0.6 * (hit.timbre - cal.timbre_mean) / cal.timbre_std
                        + 0.4 * (hit.melody - cal.melody_mean) / cal.melody_std)
            assert hit.score == pytest.approx(expected, abs=1e-4)
    assert [h.score for h in result.songs] == sorted((h.score for h in result.songs), reverse=True)


def test_similar_singers_excludes_the_singer_and_unknown_names_fail(demo_workspace):
    rec = _rec(demo_workspace)
    hits = rec.similar_singers("singer_00", k=10)
    assert "singer_00" not in [h.singer for h in hits] and len(hits) == 5
    with pytest.raises(UnknownSingerError, match="no singer named 'nobody'"):
        rec.similar_singers("nobody")
    with pytest.raises(UnknownSingerError, match="did you mean 'singer_01'"):
        rec.similar_singers("Singer_1")  # the closest names are suggested


def test_search_file_excludes_itself_and_rejects_silence_and_junk(demo_workspace, tmp_path):
    rec = _rec(demo_workspace)
    song = rec.songs()[0]
    result = rec.search(song["path"], k=3)
    assert song["id"] not in [h.song_id for h in result.songs]
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 3, np.float32), 16000)
    with pytest.raises(AudioError, match="silent.wav: no voiced audio"):
        rec.search(silent)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"definitely not audio" * 100)
    with pytest.raises(AudioError, match="junk.mp3"):
        rec.search(junk)


def test_mean_and_max_aggregation_both_answer(demo_workspace):
    from recsys.search import Searcher

    rec = _rec(demo_workspace)
    ids, vectors = rec.catalog_vectors()
    meta = {s["id"]: s for s in rec.songs()}
    singers = [meta[int(i)]["singer"] for i in ids]
    for aggregation in ("mean", "max"):
        sr = Searcher(ids, singers, [None] * len(ids), vectors, aggregation=aggregation)
        hits = sr.similar_to_singer("singer_01", k=3)
        assert len(hits) == 3 and "singer_01" not in [h.singer for h in hits]
    with pytest.raises(ValueError, match="valid: mean, max"):
        Searcher(ids, singers, [None] * len(ids), vectors, aggregation="median")


def _cli(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys", "--workspace", str(ws), *args],
                          capture_output=True, text=True, check=False)


def test_cli_json_schema_and_npz_exports(demo_workspace, tmp_path):
    song = _rec(demo_workspace).songs()[0]
    out = _cli(demo_workspace, "search", song["path"], "--k", "3", "--json", "--weights", "timbre=1,melody=1")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"query", "weights", "singers", "songs"}
    assert data["weights"] == {"timbre": 1.0, "melody": 1.0}
    for hit in data["songs"]:
        assert set(hit) == {"song_id", "singer", "title", "score", "timbre", "melody"}
        assert hit["song_id"] != song["id"]
    for hit in data["singers"]:
        assert set(hit) == {"singer", "score", "timbre", "melody", "n_songs", "best_song_id"}
    out = _cli(demo_workspace, "similar-singers", "singer_02", "--k", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["singer"] != "singer_02" for h in json.loads(out.stdout)["singers"]] == [True, True]

    export = tmp_path / "all.npz"
    assert _cli(demo_workspace, "export", "--out", str(export)).returncode == 0
    z = np.load(export)
    n = len(z["song_id"])
    assert n == 18 and z["timbre"].shape[0] == z["melody"].shape[0] == z["fused"].shape[0] == len(z["path"]) == n
    np.testing.assert_allclose(np.linalg.norm(z["fused"], axis=1), 1.0, atol=1e-5)

    files = tmp_path / "files.npz"
    out = _cli(demo_workspace, "embed", song["path"], "--out", str(files))
    assert out.returncode == 0, out.stderr
    f = np.load(files)
    assert list(f["song_id"]) == [-1]
    row = int(np.where(z["song_id"] == song["id"])[0][0])
    np.testing.assert_allclose(f["timbre"][0], z["timbre"][row], atol=1e-5)

    bad = _cli(demo_workspace, "similar-singers", "nobody")
    assert bad.returncode == 1 and "no singer named 'nobody'" in bad.stderr
    bad = _cli(demo_workspace, "search", song["path"], "--weights", "timbre=oops")
    assert bad.returncode == 2 and "not a number" in bad.stderr


def test_corrupt_index_is_rebuilt_not_used(demo_workspace, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace, ws)
    rec = _rec(ws)
    faiss_file = rec.index_dir / "index.faiss"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    _, rebuilt = rec.load_index()
    assert rebuilt
    _, rebuilt = _rec(ws).load_index()
    assert not rebuilt


def test_singer_search_uses_the_song_index_rules_past_exact_max():
    """Many singers get an approximate singer index, as many songs do; its answers match exact search."""
    from recsys.config import IndexConfig
    from recsys.embedding import INDEX_WEIGHTS, Vectors
    from recsys.index import VectorIndex
    from recsys.search import Searcher

    rng = np.random.default_rng(0)
    n_singers, per = 1500, 2
    centre = rng.standard_normal((n_singers, 24)).astype(np.float32)
    songs = np.repeat(centre, per, axis=0) + 0.3 * rng.standard_normal((n_singers * per, 24)).astype(np.float32)
    unit = songs / np.linalg.norm(songs, axis=1, keepdims=True)
    vectors = Vectors(np.ascontiguousarray(unit[:, :16] / np.linalg.norm(unit[:, :16], axis=1, keepdims=True)),
                      np.ascontiguousarray(unit[:, 16:] / np.linalg.norm(unit[:, 16:], axis=1, keepdims=True)))
    ids = np.arange(1, n_singers * per + 1, dtype=np.int64)
    names = [f"s{i // per:04d}" for i in range(n_singers * per)]
    approx = Searcher(ids, names, [None] * len(ids), vectors, IndexConfig(exact_max=500, use_gpu=False))
    exact = Searcher(ids, names, [None] * len(ids), vectors, IndexConfig(kind="flat", exact_max=500, use_gpu=False))
    assert approx.singer_index.kind == "ivf" and exact.singer_index.kind == "ivf"  # a forced kind is the songs'
    assert exact.index.kind == "flat"
    exact.singer_index = VectorIndex.build(np.arange(len(exact.singers), dtype=np.int64),
                                           exact.profiles.fused(INDEX_WEIGHTS), IndexConfig(kind="flat"))
    overlap = [
        len({h.singer for h in approx.similar_to_singer(name, 5)} & {h.singer for h in exact.similar_to_singer(name, 5)})
        for name in approx.singers[::30]
    ]
    assert np.mean(overlap) >= 4.5, overlap
    forced = Searcher(ids, names, [None] * len(ids), vectors, IndexConfig(kind="ivf", nlist=70, use_gpu=False))
    assert forced.index.nlist == 70 and forced.singer_index.nlist != 70  # sized for 1,500 singers, not 3,000 songs
