"""The command line: help everywhere, no heavy imports for --help, results rendered as text or JSON, and the
demo end to end. First-run mistakes and the error layer: tests/test_cli_errors.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app

COMMANDS = [
    [], ["config"], ["demo-corpus"], ["ingest"], ["catalog"], ["train"], ["train", "timbre"], ["train", "melody"],
    ["embed"], ["export"], ["maps"], ["index"], ["index", "rebuild"], ["index", "check"], ["similar-singers"], ["search"],
    ["demo"], ["evaluate"], ["reembed"], ["app"], ["experiment"], ["experiment", "pair-policies"],
    ["experiment", "melody-variants"], ["probe"], ["probe", "train"], ["probe", "predict"], ["probe", "list"],
]


def test_help_list_covers_every_command():
    import click
    import typer

    def walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
        subs = getattr(cmd, "commands", {})
        return [path] + [p for name, sub in subs.items() for p in walk(sub, [*path, name])]

    assert sorted(walk(typer.main.get_command(app), [])) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "recsys")
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output) > 200


def test_help_imports_no_heavy_packages():
    code = (
        "import sys; from recsys.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in ('torch', 'ray', 'streamlit', 'faiss', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_and_config_layers(tmp_path):
    env = {**os.environ, "RECSYS_AUDIO__SAMPLE_RATE": "22050"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys", "--workspace", str(tmp_path), "--device", "cpu", "config"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    assert "sample_rate: 22050" in out and f"workspace: {tmp_path}" in out and "device: cpu" in out


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("audio: {sample_rate: -5}\n")
    result = CliRunner().invoke(app, ["--config", str(bad), "config"])
    assert result.exit_code == 2 and "sample_rate" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # handled, not raised
    result = CliRunner().invoke(app, ["--debug", "--config", str(bad), "config"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "ValidationError"


def test_bad_options_exit_with_usage_status(tmp_path):
    song = tmp_path / "q.wav"
    song.write_bytes(b"")
    base = ["--workspace", str(tmp_path / "ws"), "--device", "cpu", "search", str(song)]
    result = CliRunner().invoke(app, [*base, "--by", "album"])
    assert result.exit_code == 2 and "--by must be singer, song or melody" in result.output
    result = CliRunner().invoke(app, [*base, "--weights", "timbre=oops"])
    assert result.exit_code == 2 and "not a number" in result.output
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "embed", str(song)])
    assert result.exit_code == 2 and "--out" in result.output


def test_results_render_themselves_as_text_and_json():
    from recsys.embedding import Weights
    from recsys.results import IndexReport, SearchResult, TrainingReport
    from recsys.search import SingerHit, SongHit

    result = SearchResult("q.wav", Weights(0.7, 0.3), [SingerHit("Ann", 0.9, 0.95, 0.8, 3, 7)],
                          [SongHit(7, "Ann", "Blue", 0.85, 0.9, 0.7)])
    text = result.as_text()
    assert text.splitlines()[0] == "query: q.wav  (weights timbre=0.7, melody=0.3)"
    assert "singers:" in text and "1. Ann" in text and "(timbre 0.950, melody 0.800; 3 songs)" in text
    assert "songs:" in text and "Blue by Ann" in text
    data = json.loads(json.dumps(result.as_dict()))
    assert set(data) == {"query", "weights", "singers", "songs"} and data["songs"][0]["song_id"] == 7
    assert "songs:" not in SearchResult("singer:Ann", Weights(), result.singers, []).as_text()

    class Trained:  # what a trainer returns
        version = type("V", (), {"version": "abc123"})()
        best_epoch, history, stopped_early = 2, [{}, {}, {}], True

    report = TrainingReport.of({"timbre": Trained()})
    assert report.as_text() == "timbre: model version abc123 (best epoch 2, 3 epochs, stopped early)"
    assert report.as_dict()["timbre"]["version"] == "abc123"
    index = IndexReport(4, "flat", Path("/ws/index/v"), "ok")
    assert index.as_text() == "index ok: 4 songs, flat, in /ws/index/v" and index.as_dict()["size"] == 4


def test_job_summaries_render_themselves():
    from recsys.cli.output import data_of, text_of
    from recsys.ingest import FileFailure, IngestSummary

    summary = IngestSummary(run_id=1, ingested=2, skipped=1)
    summary.failed["not_found"] += 1
    summary.failures.append(FileFailure("x.wav", "not_found", "x.wav: file does not exist"))
    text = text_of(summary)
    assert "ingested 2 songs, skipped 1 already present, failed 1" in text and "x.wav: file does not exist" in text
    assert data_of(summary)["failures"] == [{"path": "x.wav", "cause": "not_found",
                                              "message": "x.wav: file does not exist"}]
    from pipelines.job import JobSummary

    job = JobSummary(run_id=2, ingested=3, embedded=3, model_version="t+m", index_size=3, audio_seconds=9.0,
                     wall_seconds=1.0)
    assert text_of(job).splitlines()[-2:] == [
        "embedded 3 songs under model version t+m; 9 s of audio in 1.0 s (9x real time)",
        "index: 3 songs, agrees with the catalog"]


def test_cli_modules_stay_small():
    root = Path(__file__).resolve().parent.parent / "recsys"
    for path in [*sorted((root / "cli").glob("*.py")), root / "demo.py", root / "results.py"]:
        assert len(path.read_text().splitlines()) <= 600, path


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "RECSYS_TIMBRE__EPOCHS": "2", "RECSYS_TIMBRE__STEPS_PER_EPOCH": "4",
           "RECSYS_MELODY__EPOCHS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys", "--workspace", str(tmp_path / "ws"), "--device", "cpu",
         "demo", "--singers", "4", "--songs", "2", "--seconds", "6"],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "ingested 8 songs" in text and "failed 0" in text
    assert "timbre: model version" in text and "melody: model version" in text
    assert "embedded 8 songs" in text
    assert text.count("query: singer:") == 3 and "singers:" in text and "songs:" in text
    assert "recsys --workspace" in text and " app" in text
    # The explorer's default maps are fitted already, so its first page load does not wait for UMAP.
    maps = sorted(p.name for p in (tmp_path / "ws" / "projections").glob("*/*.npz"))
    assert maps == ["singers-fused.npz", "songs-fused.npz"]


@pytest.mark.slow
def test_ingest_train_search_needs_no_other_step(tmp_path):
    """What a new user types: ingest, train, search. Training embeds the catalog and switches to the new
    models, so the search answers; a second training keeps answering with the newest models."""
    from recsys.corpus import generate_corpus

    manifest = generate_corpus(tmp_path / "songs", n_singers=3, songs_per_singer=2, song_seconds=5.0, seed=2,
                               workers=1)
    env = {**os.environ, "RECSYS_TIMBRE__EPOCHS": "1", "RECSYS_TIMBRE__STEPS_PER_EPOCH": "4",
           "RECSYS_MELODY__EPOCHS": "1"}
    base = [sys.executable, "-m", "recsys", "--workspace", str(tmp_path / "ws"), "--device", "cpu"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], check=False, capture_output=True, text=True, env=env, timeout=600)

    query = min((tmp_path / "songs").glob("singer_*/*.wav"))
    for step in (["ingest", str(manifest)], ["train"], ["search", str(query), "--json"]):
        out = run(*step)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (step, out.stderr[-2000:])
    result = json.loads(out.stdout)
    assert result["singers"] and result["singers"][0]["singer"] == "singer_00"
    assert "now serving" in run("train", "timbre").stdout  # retrained: embedded and switched again
    assert run("search", str(query)).returncode == 0


def test_experiment_epochs_option_overrides_only_its_own_section():
    from recsys.cli.studies import _with_epochs
    from recsys.config import load_settings

    settings = load_settings(manifest_file=None)
    melody = _with_epochs(settings, "melody", 2)
    assert melody.melody.epochs == 2 and melody.timbre.epochs == settings.timbre.epochs
    assert _with_epochs(settings, "timbre", 3).timbre.epochs == 3
    assert _with_epochs(settings, "timbre", None) is settings
