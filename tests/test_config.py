"""Configuration layers: defaults < data_manifest.yaml < config file < environment < CLI flags."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys.config import DEFAULT_MANIFEST, Settings, load_settings


def test_defaults_are_the_original_studys_features():
    s = Settings()
    assert (s.audio.sample_rate, s.features.n_fft, s.features.win_length) == (16000, 512, 512)
    assert (s.features.hop_length, s.features.n_mels) == (256, 48)


def test_project_manifest_declares_demo_and_an_example(monkeypatch):
    monkeypatch.delenv("RECSYS_HOME", raising=False)
    s = load_settings(manifest_file=DEFAULT_MANIFEST)
    assert "demo" in s.datasets and s.datasets["demo"].source == "generated"
    assert any(name != "demo" for name in s.datasets), "an example entry shows users how to declare theirs"


def test_layer_precedence(tmp_path: Path, monkeypatch):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("settings:\n  audio: {sample_rate: 22050, chunk_seconds: 5.0}\n  features: {n_mels: 64}\n")
    config = tmp_path / "c.yaml"
    config.write_text("audio: {sample_rate: 24000}\nfusion: {song: {timbre: 0.25}}\n")
    monkeypatch.setenv("RECSYS_AUDIO__SAMPLE_RATE", "32000")
    monkeypatch.setenv("RECSYS_FUSION__SONG__MELODY", "0.9")
    s = load_settings(config_file=config, manifest_file=manifest)
    assert s.audio.sample_rate == 32000  # env beats both files
    assert s.audio.chunk_seconds == 5.0  # manifest value survives the merge
    assert s.features.n_mels == 64
    assert (s.fusion.song.timbre, s.fusion.song.melody) == (0.25, 0.9)
    assert (s.fusion.singer.timbre, s.fusion.singer.melody) == (1.0, 0.0)  # the other questions keep theirs
    s = load_settings(config_file=config, manifest_file=manifest, workspace=tmp_path / "ws", device="cpu")
    assert s.workspace == tmp_path / "ws" and s.device == "cpu"


def test_workspace_from_recsys_home_and_default_db(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    s = load_settings(manifest_file=None)
    assert s.workspace == tmp_path / "home"
    assert s.database_url == f"sqlite:///{(tmp_path / 'home' / 'catalog.db').resolve()}"
    monkeypatch.setenv("RECSYS_DB_URL", "postgresql+psycopg://u@h/db")
    assert load_settings(manifest_file=None).database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"audio": {"normalization": "loud"}}, "normalization"),
        ({"features": {"win_length": 1024, "n_fft": 512}}, "win_length"),
        ({"fusion": {"melody": {"timbre": 0, "melody": 0}}}, "both be 0"),
        ({"fusion": {"w_timbre": 0.7}}, "w_timbre"),  # the old flat weights are gone: named, not ignored
        ({"audio": {"sampel_rate": 8000}}, "sampel_rate"),
    ],
)
def test_bad_values_are_rejected_with_the_field_named(override, needle):
    with pytest.raises(ValidationError, match=needle):
        load_settings(manifest_file=None, **override)


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_settings(config_file=bad, manifest_file=None)
    with pytest.raises(ValueError, match="unknown top-level keys"):
        (tmp_path / "m.yaml").write_text("setings: {}\n")
        load_settings(manifest_file=tmp_path / "m.yaml")
