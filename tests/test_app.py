"""The explorer: its helpers (uploads, rankings, map selection), the `recsys app` command, and the page
itself under Streamlit's AppTest on a copy of the demo workspace.

AppTest shares st.cache_resource across runs in this process, so only the first page run loads
the models and fits the map (umap's numba compilation, tens of seconds on a busy machine).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from explorer_helpers import LABELS, label_of, labelled_catalog, singers_with

from app import views
from recsys import catalog
from recsys.api import Recommender
from recsys.config import load_settings
from recsys.embedding import Weights
from recsys.projection import FIRST_PAGE_MAPS, projection_path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "app" / "explorer.py")


@pytest.fixture(scope="module")
def app_ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the demo workspace (its songs stay where they are), with one failed ingestion."""
    ws = tmp_path_factory.mktemp("explorer-ws")
    for part in ("models", "index"):
        shutil.copytree(demo_workspace / part, ws / part)
    # SQLite's backup API: a consistent copy even while another connection holds commits in the WAL.
    with sqlite3.connect(demo_workspace / "catalog.db") as src, sqlite3.connect(ws / "catalog.db") as dst:
        src.backup(dst)
    bad = ws / "incoming" / "singer_bad"
    bad.mkdir(parents=True)
    (bad / "broken.wav").write_bytes(b"RIFF this is not audio at all")
    summary = _rec(ws).ingest(ws / "incoming", workers=1)
    assert summary.n_failed == 1 and summary.ingested == 0
    return ws


def _rec(ws: Path) -> Recommender:
    return Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu"))


@pytest.fixture(scope="module")
def rec(app_ws: Path) -> Recommender:
    return _rec(app_ws)


def _wav_bytes(x: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _sung(seconds: float = 6.0) -> np.ndarray:
    """A new take (not in the catalog) by the demo catalog's third singer."""
    from recsys.corpus import make_melodies, make_singers, sing

    return sing(make_singers(6, 0)[2], make_melodies(3, 0)[1], seconds, 16000, seed=123)


# Uploads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, data, max_bytes, match",
    [
        ("notes.txt", b"hello", 2**20, r"notes.txt: unsupported file type '\.txt'; upload one of: wav, flac"),
        ("empty.wav", b"", 2**20, "empty.wav: the file is empty"),
        (
            "junk.wav",
            b"RIFF\x00\x00junk that is not audio" * 10,
            2**20,
            r"junk.wav: cannot use this file \(unreadable\)",
        ),
        ("big.wav", b"\x00" * 3000, 2048, "big.wav: 0.0 MB is over the upload limit of 0.00195312 MB"),
    ],
)
def test_handle_upload_rejects_bad_files_with_a_clear_message(rec, name, data, max_bytes, match):
    with pytest.raises(views.UploadError, match=match):
        views.handle_upload(name, data, rec, max_bytes=max_bytes)


def test_handle_upload_rejects_silence(rec):
    silent = _wav_bytes(np.zeros(3 * 16000, np.float32))
    with pytest.raises(views.UploadError, match=r"silent.wav: cannot use this file \(silent\)"):
        views.handle_upload("silent.wav", silent, rec)


def test_handle_upload_of_a_new_recording_ranks_singers_and_songs(rec):
    q = views.handle_upload("take.flac", _flac_bytes(_sung()), rec)
    assert q.song_id is None and q.exclude_ids == frozenset() and q.label == "take.flac"
    assert np.isclose(np.linalg.norm(q.timbre), 1, atol=1e-4) and np.isclose(
        np.linalg.norm(q.melody), 1, atol=1e-4
    )
    w = Weights(0.7, 0.3)
    singers = views.singers_like_query(rec, q, 4, w)
    songs = views.songs_like_query(rec, q, 5, w)
    assert len(singers) == 4 and len(songs) == 5
    # Same ranking as the library's own query path over the same vectors.
    ref = rec.search_vectors(q.timbre, q.melody, "ref", 5, w)
    assert [h.song_id for h in songs] == [h.song_id for h in ref.songs]
    assert [h.singer for h in singers] == [h.singer for h in ref.singers][:4]


def _flac_bytes(x: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC")
    return buf.getvalue()


def test_uploading_a_catalog_song_finds_it_and_leaves_it_out(rec):
    song = rec.songs()[4]
    q = views.handle_upload("again.wav", Path(song["path"]).read_bytes(), rec)
    assert q.song_id == song["id"] and q.exclude_ids == {song["id"]}
    t, m = rec.searcher.song_vectors(song["id"])
    np.testing.assert_allclose(q.timbre, t, atol=1e-5)
    np.testing.assert_allclose(q.melody, m, atol=1e-5)
    assert song["id"] not in [h.song_id for h in views.songs_like_query(rec, q, 17, Weights())]


# Rankings, filters, map selection ------------------------------------------------------------------


def test_top_k_fetches_more_until_enough_pass_the_filter():
    calls = []

    def fetch(n):
        calls.append(n)
        return list(range(n))

    assert views.top_k(fetch, 3, 100, keep=lambda h: h % 10 == 0) == [0, 10, 20]
    assert calls == [3, 12, 48]
    assert views.top_k(fetch, 3, 5, keep=lambda h: h > 3) == [4]  # exhausted: fewer than k
    assert views.top_k(fetch, 2, 100) == [0, 1]


def test_filters_and_score_split(rec):
    songs = views.song_table(rec.songs())
    columns = views.catalog_columns(songs)
    singers = views.singer_table(songs, columns)
    assert len(singers) == 6 and singers.n_songs.sum() == len(songs) == 18
    options = {c.name: list(c.values) for c in columns}
    assert list(options) == ["melody_id", "gender", "register", "style"]  # tempo_bpm, key_shift: numbers
    assert [c.name for c in columns if c.per_singer] == ["gender", "register", "style"]
    assert views.allowed_songs(songs, {"gender": []}) is None
    assert views.allowed_singers(songs, None) is None
    gender = options["gender"][0]
    song_ids = views.allowed_songs(songs, {"gender": [gender]})
    assert song_ids == set(songs.index[songs.gender == gender])
    allowed = views.allowed_singers(songs, song_ids)
    assert allowed == set(singers.index[singers.gender == gender]) and 0 < len(allowed) < 6
    name = min(set(singers.index) - allowed)
    hits = views.singers_like_singer(rec, name, 5, Weights(0.6, 0.4), allowed)
    assert hits and {h.singer for h in hits} <= allowed
    frame = views.singer_hits_frame(hits, views.singer_fusion(rec, Weights(0.6, 0.4)))
    np.testing.assert_allclose(frame.timbre_part + frame.melody_part, frame.score, atol=1e-5)
    assert frame["rank"].tolist() == list(range(1, len(hits) + 1))


def _song(i: int, singer: str, metadata: dict, predicted: dict | None = None) -> dict:
    return {
        "id": i,
        "singer": singer,
        "title": f"t{i}",
        "path": f"/s/{i}.wav",
        "metadata": metadata,
        "predicted": predicted or {},
    }


def test_every_categorical_column_given_or_predicted_is_offered():
    calm = {"mood": {"value": "calm", "confidence": 0.8}}
    songs = views.song_table(
        [
            _song(1, "a", {"label": "Motown", "tempo_bpm": "120.5", "isrc": "x1", "gender": "female"}, calm),
            _song(
                2,
                "a",
                {"label": "Sub Pop", "tempo_bpm": "98", "isrc": "x2"},
                {"gender": {"value": "female", "confidence": 0.9}, **calm},
            ),
            _song(
                3,
                "b",
                {"label": "Motown", "isrc": "x3", "gender": "male"},
                {"mood": {"value": "bright", "confidence": 0.7}, "gender": {"value": "female"}},
            ),
            _song(4, "b", {"isrc": "x4"}),
        ]
    )
    columns = {c.name: c for c in views.catalog_columns(songs, max_values=3)}
    # tempo_bpm holds numbers; isrc has 4 distinct values, over max_values.
    assert list(columns) == ["label", "gender", "mood"]
    assert columns["label"].values == ("Motown", "Sub Pop") and columns["label"].label == "Label"
    assert not columns["label"].per_singer and columns["mood"].per_singer  # singer a has two labels, one mood
    assert views.catalog_columns(songs.drop(index=2), max_values=3)[0].per_singer  # label: one per singer
    # A prediction fills in a missing value only, marked as such; a given value wins.
    assert columns["gender"].values == ("female", "female (predicted)", "male")
    assert not columns["gender"].predicted and columns["gender"].label == "Gender"
    assert columns["mood"].predicted and columns["mood"].label == "Mood (predicted)"
    assert columns["mood"].values == ("bright (predicted)", "calm (predicted)")
    assert views.color_options(list(columns.values())) == {
        "label": "Label",
        "gender": "Gender",
        "mood": "Mood (predicted)",
        "cluster": "cluster",
    }
    # Filters select songs; a singer passes with any one matching song.
    ids = views.allowed_songs(songs, {"label": ["Sub Pop"], "gender": []})
    assert ids == {2} and views.allowed_singers(songs, ids) == {"a"}
    assert views.allowed_songs(songs, {"label": ["Motown"], "mood": ["calm (predicted)"]}) == {1}
    singers = views.singer_table(songs, list(columns.values()))
    assert singers.loc["a", "mood"] == "calm (predicted)" and singers.loc["b", "label"] == "Motown"
    frame = views.songs_frame(songs, list(columns.values()), {1, 3})
    assert views.songs_frame(songs, list(columns.values())).song_id.tolist() == [1, 2, 3, 4]
    assert frame.song_id.tolist() == [1, 3] and frame.columns.tolist() == [
        "song_id",
        "singer",
        "title",
        "label",
        "gender",
        "mood",
    ]
    assert views.catalog_columns(views.song_table([])) == []


def test_singer_from_selection():
    event = {"selection": {"points": [{"x": 1.0, "y": 2.0}, {"customdata": ["singer_03", "Song"]}]}}
    assert views.singer_from_selection(event) == "singer_03"
    assert views.singer_from_selection({"selection": {"points": []}}) is None
    assert views.singer_from_selection(None) is None


# The `recsys app` command ----------------------------------------------------------------------------


def test_recsys_app_serves_the_workspace_through_the_warmed_server(monkeypatch, app_ws, tmp_path):
    from typer.testing import CliRunner

    import app.server
    from recsys.cli import app as cli

    calls = []

    def fake_serve(explorer_args, port, env=None, on_ready=None, address=None):
        calls.append({"args": list(explorer_args), "port": port, "env": env, "address": address})
        on_ready("ok")  # what serve reports once its warm-up run of the page answered
        return 0

    monkeypatch.setattr(app.server, "serve", fake_serve)
    url = f"sqlite:///{app_ws / 'catalog.db'}"  # a catalog and trained models: what `app` checks first
    options = ["--workspace", str(app_ws), "--db", url, "--device", "cpu"]
    result = CliRunner().invoke(cli, [*options, "app", "--port", "8765", "--address", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["port"] == 8765 and call["address"] == "127.0.0.1"
    assert call["args"] == ["--workspace", str(app_ws)]
    assert call["env"]["RECSYS_DB_URL"] == url and url not in " ".join(call["args"])  # no password in argv
    assert call["env"]["RECSYS_DEVICE"] == "cpu"
    ready = [line for line in result.output.splitlines() if "ready on" in line]
    assert ready == [f"explorer for {app_ws} ready on http://127.0.0.1:8765 (page warmed; Ctrl-C to stop)"]

    # A --config given to recsys reaches the explorer, which then serves those settings; without
    # --address the server listens everywhere (streamlit's default) and says localhost; a warm-up run
    # that failed is said as such.
    config = tmp_path / "cfg.yaml"
    config.write_text("fusion: {song: {timbre: 0.2, melody: 0.8}}\n")

    def failed_warm_up(explorer_args, port, env=None, on_ready=None, address=None):
        calls.append({"args": list(explorer_args), "port": port, "address": address})
        on_ready("timeout")
        return 3  # streamlit's own exit code is the command's

    monkeypatch.setattr(app.server, "serve", failed_warm_up)
    result = CliRunner().invoke(cli, ["--workspace", str(app_ws), "--config", str(config), "app"])
    assert result.exit_code == 3, result.output
    call = calls[-1]
    assert call["port"] == 8501 and call["address"] is None
    assert "ready on http://localhost:8501 (warm-up run: timeout;" in result.output
    explorer_argv = call["args"]
    assert explorer_argv[explorer_argv.index("--config") + 1] == str(config.resolve())
    from app.explorer import parse_args
    from recsys.config import load_settings

    args = parse_args(explorer_argv)
    assert args.config == str(config.resolve()) and args.workspace == str(app_ws)
    assert load_settings(config_file=Path(args.config)).fusion.song.melody == 0.8


def test_recsys_app_says_when_the_server_never_answers(monkeypatch, app_ws):
    from typer.testing import CliRunner

    import app.server
    from recsys.cli import app as cli

    def silent(explorer_args, port, env=None, on_ready=None, address=None):
        raise RuntimeError(f"streamlit did not answer on port {port} within 120 s (no answer)")

    monkeypatch.setattr(app.server, "serve", silent)
    result = CliRunner().invoke(cli, ["--workspace", str(app_ws), "app", "--port", "8766"])
    assert result.exit_code == 1
    assert "error: the explorer did not start: streamlit did not answer on port 8766" in result.output
    assert "hint:" in result.output and "ready on" not in result.output


def test_serve_runs_the_page_once_before_it_says_the_explorer_is_ready(monkeypatch):
    from app import server

    events: list = []

    class FakeServer:
        returncode = None

        def poll(self):
            return self.returncode

        def wait(self, timeout=None):
            events.append("serving until stopped")
            self.returncode = 0
            return 0

        def terminate(self):
            events.append("terminate")

    def popen(cmd, env=None):
        events.append(("start", cmd, env))
        return FakeServer()

    monkeypatch.setattr(server.subprocess, "Popen", popen)
    monkeypatch.setattr(server, "wait_until_up", lambda port, proc, host: events.append(("up", port, host)))
    monkeypatch.setattr(server, "warm", lambda port, host: events.append("warm") or "ok")
    code = server.serve(["--workspace", "ws"], 8765, {"RECSYS_DEVICE": "cpu"}, on_ready=events.append)
    assert code == 0
    (_, cmd, env), *rest = events
    assert cmd[1:5] == ["-m", "streamlit", "run", str(server.SCRIPT)] and env == {"RECSYS_DEVICE": "cpu"}
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--server.scriptHealthCheckEnabled") + 1] == "true"
    assert cmd[cmd.index("--") + 1 :] == ["--workspace", "ws"]
    assert rest == [("up", 8765, "127.0.0.1"), "warm", "ok", "serving until stopped"]


# The page under AppTest ------------------------------------------------------------------------------


@pytest.fixture
def at(app_ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RECSYS_HOME", str(app_ws))
    monkeypatch.setenv("RECSYS_DEVICE", "cpu")
    monkeypatch.delenv("RECSYS_DB_URL", raising=False)
    return AppTest.from_file(SCRIPT, default_timeout=300)


def _page_weights(at) -> Weights:
    """The weights the page ranks with: its timbre slider, and the melody weight that completes it."""
    w = at.slider(key="w_timbre").value
    return Weights(w, round(1.0 - w, 6))


def _singer_ranking(at):
    """The first ranking on the page (the Singer tab's)."""
    return at.tabs[0].dataframe[0].value


def _open_tab(at, label: str) -> None:
    """Click a tab: its label becomes the tabs' state, and the page runs again (on_change="rerun")."""
    at.session_state["tab"] = label
    at.run()


def _figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _map(at) -> list[dict]:
    """The map's traces, with x and y as arrays (plotly ships numeric arrays base64-encoded)."""
    fig = next(f for f in _figures(at) if f["data"][0]["type"] == "scatter")
    return [{**t, "x": _array(t["x"]), "y": _array(t["y"])} for t in fig["data"]]


def _array(v) -> np.ndarray:
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, dtype=float)


@pytest.mark.slow
def test_page_renders_every_section(at, app_ws, rec):
    at.run()
    assert not at.exception, at.exception
    assert not at.error
    for key in ("w_timbre", "k"):
        assert at.slider(key=key).value is not None
    assert [m.key for m in at.multiselect] == [
        "filter_melody_id",
        "filter_gender",
        "filter_register",
        "filter_style",
    ]
    assert at.multiselect(key="filter_gender").label == "Gender"
    assert at.radio(key="map_what").options == ["singers", "songs"]
    assert at.radio(key="map_weighting").options == ["fused", "timbre", "melody"]
    assert "cluster" in at.selectbox(key="map_color").options
    assert at.selectbox(key="map_color").value == "gender"  # the first attribute of a singer, not of a song
    assert [t.label for t in at.tabs] == ["Singer", "Query by song", "Catalog"]
    # Singer view: top-5 singers like the selected one, with the split and audio.
    singer = at.selectbox(key="singer").value
    ranking = _singer_ranking(at)
    assert len(ranking) == 5 and singer not in ranking.singer.tolist()
    assert ranking.singer.tolist() == [h.singer for h in rec.similar_singers(singer, 5, _page_weights(at))]
    np.testing.assert_allclose(ranking.timbre_part + ranking.melody_part, ranking.score, atol=1e-5)
    assert any(f"Best match for {singer}: **{ranking.singer[0]}**" in m.value for m in at.markdown)
    assert len(at.get("audio")) == 4  # the selected singer + the top 3
    assert [e.label.startswith("Listen: ") for e in at.expander] == [True] * 4  # folded until opened
    # The score split as bars in the ranking itself, on one scale; the map (fitted once, saved under the
    # model version) is the page's one figure.
    bars = {name: json.loads(at.tabs[0].dataframe[0].proto.columns).get(name, {}) for name in ("timbre_part",
                                                                                               "melody_part")}
    assert {b.get("type_config", {}).get("type") for b in bars.values()} == {"progress"}, bars
    assert len({(b["type_config"]["min_value"], b["type_config"]["max_value"]) for b in bars.values()}) == 1
    assert (app_ws / "projections" / rec.model_version / "singers-fused.npz").is_file()
    figures = _figures(at)
    assert len(figures) == 1
    assert sum(len(trace["x"]) for trace in _map(at)) == 6
    # The query tab waits for a query.
    assert any("Upload a recording or pick a catalog song" in i.value for i in at.tabs[1].info)
    # The Catalog tab is made when it is opened, not for the first page.
    assert at.session_state["tab"] == "Singer"
    assert not at.tabs[2].children and not at.metric
    _open_tab(at, "Catalog")
    assert not at.exception, at.exception
    # Catalog statistics, runs and the failed ingestion.
    metrics = {m.label: m.value for m in at.tabs[2].metric}
    assert metrics["Singers"] == "6" and metrics["Songs"] == "18" and metrics["Ingestion errors"] == "1"
    runs, errors = at.tabs[2].dataframe[0].value, at.tabs[2].dataframe[1].value
    # newest first: the failed ingestion, the demo's embedding job (a run too), its ingestion
    assert len(runs) == 3 and runs.failed.tolist() == [1, 0, 0] and runs.source[1].startswith("reembed ")
    assert errors.path.str.endswith("broken.wav").all() and errors.cause.tolist() == ["unreadable"]
    catalog_songs = at.tabs[2].dataframe[2].value
    assert len(catalog_songs) == 18 and {"gender", "melody_id"} <= set(catalog_songs.columns)
    # The other tabs keep their content meanwhile.
    assert _singer_ranking(at).singer.tolist() == ranking.singer.tolist()
    assert sum(len(trace["x"]) for trace in _map(at)) == 6


@pytest.mark.slow
def test_weight_slider_changes_the_ranking(at, rec):
    at.run()
    singer = at.selectbox(key="singer").value
    at.slider(key="w_timbre").set_value(1.0).run()
    timbre_only = _singer_ranking(at)
    at.slider(key="w_timbre").set_value(0.0).run()
    melody_only = _singer_ranking(at)
    assert not at.exception
    # Scores are the timbre evidence alone, then the melody evidence alone (calibrated cosines)...
    np.testing.assert_allclose(timbre_only.score, timbre_only.timbre_part, atol=1e-5)
    np.testing.assert_allclose(timbre_only.melody_part, 0, atol=1e-6)
    np.testing.assert_allclose(melody_only.score, melody_only.melody_part, atol=1e-5)
    np.testing.assert_allclose(melody_only.timbre_part, 0, atol=1e-6)
    assert (np.diff(timbre_only.score) <= 1e-7).all() and (np.diff(melody_only.score) <= 1e-7).all()
    assert (np.diff(timbre_only.timbre) <= 1e-6).all() and (np.diff(melody_only.melody) <= 1e-6).all()
    # ...the rendered values change with the slider, and match the library.
    assert not np.allclose(timbre_only.score.to_numpy(), melody_only.score.to_numpy())
    for frame, w in ((timbre_only, Weights(1, 0)), (melody_only, Weights(0, 1))):
        ref = rec.similar_singers(singer, 5, w)
        assert frame.singer.tolist() == [h.singer for h in ref]
        np.testing.assert_allclose(frame.score, [h.score for h in ref], atol=1e-5)


@pytest.mark.slow
def test_filters_k_and_singer_choice(at, rec):
    at.run()
    gender = at.multiselect(key="filter_gender").options[0]
    at.multiselect(key="filter_gender").set_value([gender])
    at.slider(key="k").set_value(2)
    other = rec.searcher.singers[-1]
    at.selectbox(key="singer").set_value(other).run()
    assert not at.exception
    singers = views.singer_table(views.song_table(rec.songs()))
    ranking = _singer_ranking(at)
    assert 1 <= len(ranking) <= 2 and set(ranking.singer) <= set(singers.index[singers.gender == gender])
    assert other not in ranking.singer.tolist()
    shown = [c[0] for trace in _map(at) for c in trace["customdata"]]
    assert set(shown) == set(singers.index[singers.gender == gender])


@pytest.mark.slow
def test_query_by_catalog_song_ranks_and_marks_the_map(at, rec):
    at.run()
    song_id = rec.songs()[7]["id"]
    at.selectbox(key="pick_song").set_value(song_id).run()
    assert not at.exception
    query_tab = at.tabs[1]
    singers, songs = query_tab.dataframe[0].value, query_tab.dataframe[1].value
    ref = rec.search_song(song_id, 5, _page_weights(at))
    assert singers.singer.tolist() == [h.singer for h in ref.singers]
    assert songs.song_id.tolist() == [h.song_id for h in ref.songs] and song_id not in songs.song_id.tolist()
    np.testing.assert_allclose(songs.timbre_part + songs.melody_part, songs.score, atol=1e-5)
    query = [t for t in _map(at) if t.get("name") == "query"]
    assert len(query) == 1 and query[0]["marker"]["symbol"] == "star"
    # On the song map, a catalog song as the query sits exactly on its own point.
    at.radio(key="map_what").set_value("songs").run()
    at.selectbox(key="map_color").set_value("melody_id").run()
    assert not at.exception
    traces = _map(at)
    points = {
        int(c[2]): (x, y)
        for t in traces
        if t.get("name") != "query"
        for c, x, y in zip(t["customdata"], t["x"], t["y"])
    }
    assert len(points) == 18
    q = next(t for t in traces if t.get("name") == "query")
    np.testing.assert_allclose((q["x"][0], q["y"][0]), points[song_id], atol=1e-4)
    assert {t["name"] for t in traces} - {"query"} <= {s["metadata"]["melody_id"] for s in rec.songs()}


def _query_rankings(at):
    """The query tab's singer and song rankings."""
    return at.tabs[1].dataframe[0].value, at.tabs[1].dataframe[1].value


def _assert_same_ranking(frame, hits, key: str) -> None:
    assert frame[key].tolist() == [getattr(h, key) for h in hits]
    np.testing.assert_allclose(frame.score, [h.score for h in hits], atol=1e-4)


@pytest.mark.slow
def test_each_question_ranks_as_recsys_search_by_that_question(at, rec):
    import inspect

    from recsys.cli.search import search_cmd

    at.run()
    question = at.radio(key="question")
    # The page starts on the question `recsys search` and Recommender.search answer by default.
    cli_default = inspect.signature(search_cmd).parameters["by"].default
    assert question.value == cli_default == inspect.signature(Recommender.search).parameters["by"].default
    assert question.options == ["similar singers", "similar songs", "same melody"]
    assert at.slider(key="w_timbre").value == views.timbre_share(rec.weights_for(cli_default))
    song = rec.songs()[7]
    at.selectbox(key="pick_song").set_value(song["id"]).run()
    singer = at.selectbox(key="singer").value
    shown = {}
    for by in ("song", "melody", "singer"):
        at.radio(key="question").set_value(by).run()
        assert not at.exception, at.exception
        weights = rec.weights_for(by)  # settings.fusion
        assert at.slider(key="w_timbre").value == pytest.approx(views.timbre_share(weights))
        assert any(c.value.endswith(f"({views.QUESTION_LABELS[by]})") for c in at.sidebar.caption)
        # What `recsys search SONG.wav --by BY` answers for the same recording (itself left out).
        ref = rec.search(song["path"], 5, by=by)
        singers, songs = _query_rankings(at)
        _assert_same_ranking(singers, ref.singers, "singer")
        _assert_same_ranking(songs, ref.songs, "song_id")
        # The Singer tab answers the same question about the selected singer.
        _assert_same_ranking(_singer_ranking(at), rec.similar_singers(singer, 5, weights), "singer")
        shown[by] = songs
    # The three questions are answered differently: timbre evidence alone, melody alone, both.
    np.testing.assert_allclose(shown["singer"].melody_part, 0, atol=1e-6)
    np.testing.assert_allclose(shown["melody"].timbre_part, 0, atol=1e-6)
    assert (shown["song"].timbre_part.abs() > 1e-6).all() and (shown["song"].melody_part.abs() > 1e-6).all()
    assert shown["singer"].song_id.tolist() != shown["melody"].song_id.tolist()


@pytest.mark.slow
def test_weights_by_hand_start_from_the_question_and_a_question_sets_them_back(at, rec):
    at.run()
    at.radio(key="question").set_value("melody").run()
    assert at.slider(key="w_timbre").value == 0.0
    at.slider(key="w_timbre").set_value(0.3).run()
    assert not at.exception, at.exception
    assert at.radio(key="question").value == "melody"
    assert any(c.value == "timbre 0.30 / melody 0.70 (set by hand)" for c in at.sidebar.caption)
    singer = at.selectbox(key="singer").value
    _assert_same_ranking(_singer_ranking(at), rec.similar_singers(singer, 5, Weights(0.3, 0.7)), "singer")
    at.radio(key="question").set_value("song").run()
    assert at.slider(key="w_timbre").value == 0.5
    assert any(c.value == "timbre 0.50 / melody 0.50 (similar songs)" for c in at.sidebar.caption)


@pytest.mark.slow
def test_question_weights_come_from_the_configuration(at, app_ws, monkeypatch):
    # Weights that are not shares already: the page ranks with the question's own, as the CLI does.
    monkeypatch.setenv("RECSYS_FUSION__SINGER__MELODY", "0.2")
    monkeypatch.setenv("RECSYS_FUSION__MELODY__TIMBRE", "0.5")
    configured = _rec(app_ws)  # the same environment as the page's
    assert configured.weights_for("singer") == Weights(1.0, 0.2)
    at.run()
    assert not at.exception, at.exception
    assert at.slider(key="w_timbre").value == pytest.approx(1 / 1.2)
    song = configured.songs()[3]
    at.selectbox(key="pick_song").set_value(song["id"]).run()
    for by in ("singer", "melody"):
        at.radio(key="question").set_value(by).run()
        share = views.timbre_share(configured.weights_for(by))
        assert at.slider(key="w_timbre").value == pytest.approx(share)
        ref = configured.search(song["path"], 5, by=by)
        singers, songs = _query_rankings(at)
        _assert_same_ranking(singers, ref.singers, "singer")
        _assert_same_ranking(songs, ref.songs, "song_id")


@pytest.mark.slow
def test_a_workspace_without_models_shows_an_error(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("RECSYS_DB_URL", raising=False)
    at = AppTest.from_file(SCRIPT, default_timeout=120).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("Cannot open the workspace")
    assert "recsys train" in at.error[0].value  # the next step


# A catalog of the user's own: a metadata column the code never names, maps fitted by the job ----------


@pytest.fixture(scope="module")
def labelled_ws(demo_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new catalog with a `label` column, ingested, then embedded by `embed_catalog` (the demo's models).

    Its songs also get a probe-style prediction of `mood`, an attribute no song gives.
    """
    ws = tmp_path_factory.mktemp("labelled-ws")
    shutil.copytree(demo_workspace / "models", ws / "models")
    rec = _rec(ws)
    assert rec.ingest(labelled_catalog(ws / "corpus"), workers=1).ingested == 12
    summary = rec.embed_catalog()
    assert summary.embedded == 12 and summary.index_size == 12
    with catalog.session_scope(rec.sessions) as s:
        for song in catalog.list_songs(s):
            mood = "calm" if song.singer.name < "singer_03" else "bright"
            song.predicted = {**(song.predicted or {}), "mood": {"value": mood, "confidence": 0.8}}
    return ws


def test_embed_catalog_fits_the_maps_of_the_first_page(labelled_ws):
    rec = _rec(labelled_ws)
    for what, weighting in FIRST_PAGE_MAPS:
        assert projection_path(labelled_ws, rec.model_version, what, weighting).is_file()
        assert rec.catalog_map(what, weighting)[0].status == "loaded"


@pytest.fixture
def labelled_at(labelled_ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RECSYS_HOME", str(labelled_ws))
    monkeypatch.setenv("RECSYS_DEVICE", "cpu")
    monkeypatch.delenv("RECSYS_DB_URL", raising=False)
    return AppTest.from_file(SCRIPT, default_timeout=300)


@pytest.mark.slow
def test_page_filters_and_colours_by_a_column_it_has_never_heard_of(labelled_at, labelled_ws, monkeypatch):
    from recsys import projection

    def no_fit(*args, **kwargs):
        raise AssertionError("the first page load fitted UMAP: the job should have fitted its map")

    umap_fit = projection._umap_fit
    monkeypatch.setattr(projection, "_umap_fit", no_fit)
    at = labelled_at.run()
    assert not at.exception, at.exception
    assert any("map loaded" in c.value for c in at.caption)
    label = at.multiselect(key="filter_label")
    assert label.label == "Label" and label.options == list(LABELS)
    mood = at.multiselect(key="filter_mood")
    assert mood.label == "Mood (predicted)" and mood.options == ["bright (predicted)", "calm (predicted)"]
    assert {"Label", "Mood (predicted)", "cluster"} <= set(at.selectbox(key="map_color").options)

    label.set_value(["Motown"])
    at.selectbox(key="map_color").set_value("label")
    _open_tab(at, "Catalog")
    assert not at.exception, at.exception
    songs = {s["id"]: s for s in _rec(labelled_ws).songs()}
    motown = {i for i, s in songs.items() if s["metadata"]["label"] == "Motown"}
    assert len(motown) == 5
    table = at.tabs[2].dataframe[-1].value
    assert set(table.song_id) == motown and set(table.label) == {"Motown"}
    assert any("5 of 12 match the filters" in m.value for m in at.markdown)
    traces = _map(at)
    assert {c[0] for t in traces for c in t["customdata"]} == singers_with("Motown")
    ranking = _singer_ranking(
        at
    )  # singers like singer_00 (a Blue Note singer), among those with a Motown song
    assert set(ranking.singer) == singers_with("Motown")

    monkeypatch.setattr(projection, "_umap_fit", umap_fit)  # the song map is not on the first page
    at.radio(key="map_what").set_value("songs").run()
    assert not at.exception, at.exception
    points = {int(c[2]) for t in _map(at) for c in t["customdata"]}
    assert points == motown
    assert {t["name"] for t in _map(at)} == {"Motown"}  # coloured by label
    for song_id in points:
        s = songs[song_id]
        assert label_of(s["singer"], Path(s["path"]).stem) == "Motown"
