"""Accompaniment suppression in the product path: audio -> song_mel, ingest, the Recommender, the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from job_helpers import ingest
from typer.testing import CliRunner

from recsys import catalog
from recsys.api import Recommender
from recsys.audio import iter_voiced_chunks, voiced_audio
from recsys.cli import app
from recsys.config import AudioConfig, FeatureConfig, SeparationConfig, load_settings
from recsys.corpus import generate_corpus
from recsys.features import song_mel
from recsys.separation import RepetSimSeparator, make_separator
from recsys.workspace import Workspace

SR = 16000
# Keep every frame and every level: mels of the mix, its separation and the clean voice then align.
RAW = AudioConfig(
    silence_threshold_db=-200.0, silence_floor_db=-200.0, normalization="none", block_seconds=2.5
)
FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def mixed_song(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated song with accompaniment 3 dB under the voice, and its stems (mix == vocals + backing)."""
    out = tmp_path_factory.mktemp("mixed")
    manifest = generate_corpus(
        out,
        n_singers=1,
        songs_per_singer=1,
        song_seconds=6.0,
        seed=3,
        accompaniment=True,
        accompaniment_db=-3.0,
        workers=1,
    )
    with open(manifest, newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    return {
        "manifest": manifest,
        "mix": out / row["path"],
        "vocals": out / row["vocals_path"],
        "accompaniment": out / row["accompaniment_path"],
    }


class CountingSeparator:
    """RepetSimSeparator that counts how many samples it was asked to separate."""

    name = "classical"

    def __init__(self) -> None:
        self.inner = RepetSimSeparator(block_seconds=3.0, overlap_seconds=0.5)
        self.samples = 0

    def separate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        self.samples += wave.numel()
        return self.inner.separate(wave, sample_rate)

    def separate_stream(self, blocks, sample_rate):
        def counted():
            for block in blocks:
                self.samples += block.numel()
                yield block

        return self.inner.separate_stream(counted(), sample_rate)


def test_song_mel_with_classical_separation_is_closer_to_the_clean_voice(mixed_song):
    separator = make_separator("classical", block_seconds=3.0, overlap_seconds=0.5)
    clean = song_mel(mixed_song["vocals"], RAW, FEATURES)
    mixed = song_mel(mixed_song["mix"], RAW, FEATURES)
    separated = song_mel(mixed_song["mix"], RAW, FEATURES, separator=separator)
    assert clean.shape == mixed.shape == separated.shape
    err_mixed = float((mixed - clean).abs().mean())
    err_separated = float((separated - clean).abs().mean())
    assert err_separated < 0.8 * err_mixed, (err_separated, err_mixed)


def test_separation_raises_the_voice_to_accompaniment_ratio(mixed_song):
    """The separated mix, projected on the two stems, holds relatively more voice than the mix."""
    separator = make_separator("classical", block_seconds=3.0, overlap_seconds=0.5)
    vocals = voiced_audio(mixed_song["vocals"], RAW).double()
    backing = voiced_audio(mixed_song["accompaniment"], RAW).double()
    mix = voiced_audio(mixed_song["mix"], RAW).double()
    separated = voiced_audio(mixed_song["mix"], RAW, separator=separator).double()
    stems = torch.stack([vocals, backing], dim=1)  # (N, 2)

    def ratio_db(x: torch.Tensor) -> float:
        a, b = torch.linalg.lstsq(stems, x[:, None]).solution[:, 0]  # x ~ a * vocals + b * backing
        return 10 * float(torch.log10((a * a * vocals.square().sum()) / (b * b * backing.square().sum())))

    assert ratio_db(mix) == pytest.approx(3.0, abs=0.3)  # what the corpus mixed in
    assert ratio_db(separated) > ratio_db(mix) + 3.0


def test_a_file_is_separated_once_and_matches_the_in_memory_path(mixed_song):
    counting = CountingSeparator()
    from_file = voiced_audio(mixed_song["mix"], RAW, separator=counting)
    n = sf.info(str(mixed_song["mix"])).frames
    assert counting.samples == n  # pass 2 replays the spilled samples instead of separating again
    wave = torch.from_numpy(sf.read(str(mixed_song["mix"]), dtype="float32")[0])
    in_memory = voiced_audio(
        wave, RAW, separator=make_separator("classical", block_seconds=3.0, overlap_seconds=0.5)
    )
    torch.testing.assert_close(from_file, in_memory, atol=1e-5, rtol=0)
    chunks = torch.cat(list(iter_voiced_chunks(mixed_song["mix"], RAW, separator=counting)))
    assert chunks.shape[1] == round(RAW.chunk_seconds * SR)
    assert counting.samples == 2 * n


def test_separation_changes_what_silence_removal_sees(tmp_path):
    """Loud noise under a short tone: without separation all frames are 'voiced'; the
    separator's output (here: a stand-in that keeps the tone) decides what is kept."""
    t = np.arange(3 * SR) / SR
    tone = np.where(t < 1.0, 0.3 * np.sin(2 * np.pi * 220 * t), 0.0)
    noise = 0.2 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path / "noisy.wav"
    sf.write(path, (tone + noise).astype(np.float32), SR, subtype="FLOAT")

    class KeepTone:
        name = "tone"

        def separate(self, wave, sample_rate):
            return torch.from_numpy(tone.astype(np.float32))[: wave.numel()]

        def separate_stream(self, blocks, sample_rate):
            start = 0
            for block in blocks:
                yield torch.from_numpy(tone[start : start + block.numel()].astype(np.float32))
                start += block.numel()

    cfg = AudioConfig()
    assert voiced_audio(path, cfg).numel() > 2.9 * SR
    kept = voiced_audio(path, cfg, separator=KeepTone()).numel()
    assert 0.9 * SR < kept < 1.1 * SR


def test_ingest_records_the_separation_and_counts_chunks_on_the_voice(mixed_song, tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    sessions = catalog.open_catalog(url)
    separation = SeparationConfig(method="classical", block_seconds=3.0, overlap_seconds=0.5)
    summary = ingest(mixed_song["manifest"], url, AudioConfig(), workers=1, separation=separation,
                     workspace=tmp_path)
    assert summary.ingested == 1
    with sessions() as s:
        run = catalog.recent_runs(s, 1)[0]
        assert run.options["separation"]["method"] == "classical"
        assert run.options["separation"]["block_seconds"] == 3.0
    settings = load_settings(
        manifest_file=None, workspace=tmp_path, db_url=f"sqlite:///{tmp_path / 'catalog.db'}"
    )
    # not configured: the catalog's choice is remembered for training, embedding and search
    assert Workspace(settings).separation == separation
    rec = Recommender(settings)
    assert rec.separation == separation and rec.separator.name == "classical"
    # configured explicitly: the configuration wins
    explicit = load_settings(manifest_file=None, workspace=tmp_path, separation={"method": "none"})
    assert Workspace(explicit).separation.method == "none"
    assert Recommender(explicit).separator is None


def test_training_audio_tags_the_content_hash_with_the_separation(mixed_song, tmp_path):
    db = f"sqlite:///{tmp_path / 'catalog.db'}"
    plain = Recommender(
        load_settings(manifest_file=None, workspace=tmp_path, db_url=db, audio=RAW.model_dump())
    )
    plain.ingest(mixed_song["manifest"], workers=1)
    separated = Recommender(
        load_settings(
            manifest_file=None,
            workspace=tmp_path,
            db_url=db,
            audio=RAW.model_dump(),
            separation={"method": "classical", "block_seconds": 3.0, "overlap_seconds": 0.5},
        )
    )
    (a,), (b,) = plain.training_songs(), separated.training_songs()
    assert a.content_hash != b.content_hash and a.content_hash[:64] == b.content_hash[:64]
    assert a.mel.shape == b.mel.shape and not torch.allclose(a.mel, b.mel)


def test_cli_neural_without_weights_fails_clearly(mixed_song, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(tmp_path / "ws"),
            "ingest",
            str(mixed_song["manifest"]),
            "--separate",
            "neural",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 2
    assert "needs pretrained weights" in result.output and "--separation-weights" in result.output
    assert "downloaded" in result.output
    result = CliRunner().invoke(
        app,
        ["--workspace", str(tmp_path / "ws"), "ingest", str(mixed_song["manifest"]), "--separate", "karaoke"],
    )
    assert result.exit_code == 2 and "'classical'" in result.output


def test_cli_ingest_with_classical_separation(mixed_song, tmp_path):
    ws = tmp_path / "ws"
    result = CliRunner().invoke(
        app,
        [
            "--workspace",
            str(ws),
            "ingest",
            str(mixed_song["manifest"]),
            "--separate",
            "classical",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    sessions = catalog.open_catalog(f"sqlite:///{ws / 'catalog.db'}")
    with sessions() as s:
        assert catalog.recent_runs(s, 1)[0].options["separation"]["method"] == "classical"
