"""The melody-variant study: melody P@1 against a plain loop, the rows it scores, the trainer it is handed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from recsys import corpus, pitch
from recsys.config import FeatureConfig, MelodyConfig, Settings
from recsys.features import SongFeatures, log_mel
from recsys.studies.melody_variants import (
    MELODY_VARIANTS,
    _three_minutes,
    compare_melody_variants,
    melody_precision_at_1,
    melody_variant_study,
)
from recsys.studies.trainers import TRAINERS, Trained
from recsys.training.checkpoint import save_version
from recsys.training.data import TrainingSong

SR = 16000
FEAT = FeatureConfig()
SETTINGS = Settings(device="cpu", features=FEAT)


def _melody_cfg(**kw) -> MelodyConfig:
    base = {"model": "frame", "channels": 12, "latent_dim": 4, "n_layers": 5, "chunk_frames": 128, "chunk_overlap": 32, "batch_size": 8,
            "learning_rate": 3e-3, "epochs": 3, "patience": 5, "seed": 1}
    return MelodyConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine: one thread is faster than two contending
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sung_waves() -> dict[tuple[int, int], torch.Tensor]:
    """3 synthetic singers x 3 melodies, 8 s each (singers sing in their own keys)."""
    singers = corpus.make_singers(3, seed=7)
    melodies = corpus.make_melodies(3, seed=7)
    return {
        (i, j): torch.from_numpy(corpus.sing(v, m, 8.0, SR, seed=i + 3 * j))
        for i, v in enumerate(singers)
        for j, m in enumerate(melodies)
    }


@pytest.fixture(scope="module")
def songs(sung_waves) -> list[TrainingSong]:
    """Their log-mels and waveform pitch, singer s<i> singing melody m<j>."""
    return [
        TrainingSong(k, SongFeatures(log_mel(w, FEAT, SR), pitch.wave_pitch(w, SR, FEAT.hop_length)), f"s{i}",
                     f"h{k}", {"melody": f"m{j}"})
        for k, ((i, j), w) in enumerate(sorted(sung_waves.items()))
    ]


def test_melody_precision_at_1_against_plain_loop():
    gen = torch.Generator().manual_seed(0)
    xb = torch.nn.functional.normalize(torch.randn(12, 5, generator=gen), dim=1)
    melody = [f"m{i % 4}" for i in range(12)]
    singer = [f"s{i // 4}" for i in range(12)]
    hits = 0
    for q in range(12):
        best = max((j for j in range(12) if j != q), key=lambda j: float(xb[q] @ xb[j]))
        hits += melody[best] == melody[q] and singer[best] != singer[q]
    assert melody_precision_at_1(xb, melody, singer) == hits / 12


def test_melody_variant_study_scores_the_default_vector_from_the_waveform(songs, tmp_path):
    """`recsys experiment melody-variants`: baselines, the default profile from both pitch sources, TCAE rows."""
    queries = {"again": [TrainingSong(100 + s.song_id, s.features, s.singer, "", {**s.metadata, "source": i})
                         for i, s in enumerate(songs)]}
    rows = compare_melody_variants(songs, songs, queries,
                                   {"tiny": _melody_cfg(epochs=1, input="mel", key_invariant=False)}, SETTINGS, tmp_path)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"chroma-stats (baseline)", "interval-lag (baseline)", "voiced-interval-lag (mel pitch)",
                            "voiced-interval-lag (waveform pitch)", "tcae tiny (stats)", "tcae tiny (stats+lag)"}
    wave = by_name["voiced-interval-lag (waveform pitch)"]
    assert wave["p_at_1"] >= 0.8 > by_name["chroma-stats (baseline)"]["p_at_1"]
    assert wave["p_at_1_again"] == wave["p_at_1"]  # the same songs as queries, their own copy left out
    assert wave["embed_3min_ms"] > 0 and by_name["tcae tiny (stats)"]["epochs"] == 1
    without_pitch = [dataclasses.replace(s, features=SongFeatures(s.mel)) for s in songs]
    rows = compare_melody_variants(songs[:6], without_pitch, {}, {}, SETTINGS, tmp_path / "b")
    assert [r["name"] for r in rows] == ["chroma-stats (baseline)", "interval-lag (baseline)",
                                         "voiced-interval-lag (mel pitch)"]


def test_three_minutes_joins_and_cuts_the_songs(songs):
    features = [s.features for s in songs[:2]]
    long = _three_minutes(features, 3 * songs[0].n_frames + 5)
    assert long.n_frames == 3 * songs[0].n_frames + 5 and long.pitch is not None
    assert torch.equal(long.mel[:, : songs[0].n_frames], songs[0].mel)
    assert _three_minutes([SongFeatures(s.mel) for s in songs[:2]], 10).pitch is None


class RecordingTrainer:
    """Publishes an untrained TCAE of the variant's config and records what each variant was trained with."""

    kind = "melody"

    def __init__(self) -> None:
        self.runs: list[tuple[MelodyConfig, int, Path, bool]] = []

    def config(self, settings: Settings) -> dict:
        return TRAINERS["melody"].config(settings)

    def train(self, songs, settings, workspace, *, resume=True, log=None) -> Trained:
        from recsys.models.melody import build_melody_model, melody_model_config

        self.runs.append((settings.melody, len(songs), Path(workspace), resume))
        torch.manual_seed(0)
        model = build_melody_model(
            melody_model_config(settings.melody, settings.features, settings.audio.sample_rate)).eval()
        version = save_version(workspace, "melody", model.state_dict(), self.config(settings), "f")
        if log is not None:
            log({"epoch": 0, "loss": 1.0, "valid_loss": 0.5})
        return Trained(model, version, [{"epoch": 0, "loss": 1.0, "valid_loss": 0.5}], 0, 1.0)

    def load(self, workspace, version):
        raise AssertionError("the study never reloads")


def test_melody_variant_study_trains_each_variant_on_the_training_split(songs, sung_waves, tmp_path):
    waves = [w for _, w in sorted(sung_waves.items())]
    trainer = RecordingTrainer()
    logged: list[str] = []
    settings = SETTINGS.model_copy(update={"melody": _melody_cfg()})
    rows = melody_variant_study(songs, waves, settings, tmp_path, variants=("mel", "pitch-ki"), test_fraction=0.34,
                                trainer=trainer, log=lambda name, record: logged.append(name))
    assert [cfg.input for cfg, *_ in trainer.runs] == ["mel", "pitch"]
    assert [cfg.key_invariant for cfg, *_ in trainer.runs] == [False, True]
    assert all(cfg.channels == 12 for cfg, *_ in trainer.runs)  # the rest of settings.melody is kept
    assert all(n == 6 and not resume for _, n, _, resume in trainer.runs)  # 3 of 9 songs held out, fresh runs
    assert [w for _, _, w, _ in trainer.runs] == [tmp_path / "mel", tmp_path / "pitch-ki"]
    assert logged == ["mel", "pitch-ki"]
    tcae = [r for r in rows if r["name"].startswith("tcae ")]
    assert [r["name"] for r in tcae] == ["tcae mel (stats)", "tcae mel (stats+lag)", "tcae pitch-ki (stats)",
                                         "tcae pitch-ki (stats+lag)"]
    for row in rows:
        assert {"p_at_1", "p_at_1_+2", "p_at_1_-2", "p_at_1_transposed"} <= set(row)
    assert all(r["valid_loss"] == 0.5 and r["epochs"] == 1 for r in tcae)
    equivariant = melody_variant_study(songs, waves, settings, tmp_path / "eq", variants=("equivariant",),
                                       test_fraction=0.34, trainer=trainer)
    by_name = {r["name"]: r for r in equivariant}
    assert trainer.runs[-1][0].model == "equivariant"
    # Scored through its encoder; untrained (as RecordingTrainer publishes it), it is the waveform descriptor.
    assert by_name["tcae equivariant (refined-pitch profile)"]["p_at_1"] == \
        by_name["voiced-interval-lag (waveform pitch)"]["p_at_1"]
    with pytest.raises(ValueError, match="valid: equivariant, mel, pitch"):
        melody_variant_study(songs, waves, settings, tmp_path, variants=("nope",), trainer=trainer)
    with pytest.raises(ValueError, match="no melody_id"):
        melody_variant_study([dataclasses.replace(songs[0], metadata={})] + songs[1:], waves, settings, tmp_path,
                             trainer=trainer)
    with pytest.raises(ValueError, match="one wave per song"):
        melody_variant_study(songs, waves[:3], settings, tmp_path, trainer=trainer)
    assert set(MELODY_VARIANTS) == {"equivariant", "mel", "pitch", "mel+pitch", "pitch-ki", "mel+pitch-ki"}
