"""The command line: help everywhere, no heavy imports for --help, and the demo job end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from recsys.cli import app

COMMANDS = [
    [], ["config"], ["demo-corpus"], ["ingest"], ["catalog"], ["train"], ["train", "timbre"], ["train", "melody"],
    ["embed"], ["export"], ["index"], ["index", "rebuild"], ["index", "check"], ["similar-singers"], ["search"],
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
    env = {**os.environ, "RECSYS_FUSION__W_MELODY": "0.45"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys", "--workspace", str(tmp_path), "--device", "cpu", "config"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    assert "w_melody: 0.45" in out and f"workspace: {tmp_path}" in out and "device: cpu" in out


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("audio: {sample_rate: -5}\n")
    result = CliRunner().invoke(app, ["--config", str(bad), "config"])
    assert result.exit_code == 2 and "sample_rate" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "RECSYS_TIMBRE__EPOCHS": "2", "RECSYS_TIMBRE__STEPS_PER_EPOCH": "4",
           "RECSYS_MELODY__EPOCHS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "recsys", "--workspace", str(tmp_path / "ws"), "--device", "cpu",
         "demo", "--singers", "4", "--songs", "2", "--seconds", "6"],
        capture_output=True, text=True, env=env, timeout=600,
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
