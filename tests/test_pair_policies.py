"""The pair-policy study: one timbre encoder per policy, rows and folders, the trainer it is handed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recsys.config import FeatureConfig, Settings, TimbreConfig
from recsys.corpus import make_melodies, make_singers, sing
from recsys.features import SongFeatures, log_mel
from recsys.studies.pair_policies import compare_pair_policies, pair_policy_study
from recsys.studies.trainers import TRAINERS, Trained, untrained_encoders
from recsys.training.checkpoint import save_version
from recsys.training.data import TrainingSong

SR = 16000
FEAT = FeatureConfig()
TINY = TimbreConfig(
    chunk_frames=64,
    songs_per_batch=6,
    chunks_per_song=2,
    channels=8,
    embedding_dim=32,
    projection_dim=16,
    epochs=1,
    steps_per_epoch=2,
    patience=10,
    extra_positives=("gain", "noise"),
)
SETTINGS = Settings(device="cpu", timbre=TINY, features=FEAT)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine: one thread is faster than two contending
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def songs() -> list[TrainingSong]:
    """6 singers x 3 songs x 6 s of synthetic singing (recsys.corpus)."""
    out = []
    for i, voice in enumerate(make_singers(6, seed=0)):
        for j, melody in enumerate(make_melodies(3, seed=0)):
            wave = torch.from_numpy(sing(voice, melody, 6.0, SR, seed=j))
            out.append(TrainingSong(i * 3 + j, SongFeatures(log_mel(wave, FEAT, SR)), voice.name, f"{i}-{j}"))
    return out


def test_compare_pair_policies_rows(songs, tmp_path: Path):
    rows = compare_pair_policies(songs[:12], songs, SETTINGS, tmp_path, policies=["ps_pos_ts_pos", "ps_neg_ts_neg"])
    assert [r["policy"] for r in rows] == ["ps_pos_ts_pos", "ps_neg_ts_neg"]
    for row in rows:
        for key in ("p_at_1", "map", "p_at_1_ps+2", "p_at_1_ps-2", "p_at_1_ts1.1", "p_at_1_ts0.9"):
            assert 0.0 <= row[key] <= 1.0, key
        assert math.isfinite(row["final_loss"])
        assert (
            tmp_path / "experiments" / "pair-policies" / row["policy"] / "models" / "timbre" / row["version"]
        ).is_dir()
    assert not (tmp_path / "models").exists()  # the product's own timbre model is untouched
    with pytest.raises(ValueError, match="valid: ps_pos_ts_pos"):
        compare_pair_policies(songs[:12], songs, SETTINGS, tmp_path, policies=["x"])


class RecordingTrainer:
    """Publishes an untrained encoder and records the settings and songs each policy was trained with."""

    kind = "timbre"

    def __init__(self) -> None:
        self.runs: list[tuple[Settings, list[TrainingSong], Path]] = []

    def config(self, settings: Settings) -> dict:
        return TRAINERS["timbre"].config(settings)

    def train(self, songs, settings, workspace, *, resume=True, log=None) -> Trained:
        self.runs.append((settings, list(songs), Path(workspace)))
        model, _ = untrained_encoders(settings, seed=len(self.runs))
        version = save_version(workspace, "timbre", model.state_dict(), self.config(settings), "f")
        return Trained(model, version, [{"epoch": 0, "loss": 2.0}], 0, 2.0)

    def load(self, workspace, version):
        raise AssertionError("the study never reloads")


def test_pair_policy_study_trains_each_policy_on_the_training_split_only(songs, tmp_path: Path):
    trainer = RecordingTrainer()
    rows = pair_policy_study(songs, SETTINGS, tmp_path, policies=["ps_pos_ts_pos", "ps_neg_ts_pos"],
                             test_fraction=0.67, seed=0, trainer=trainer)
    assert [r["policy"] for r in rows] == ["ps_pos_ts_pos", "ps_neg_ts_pos"]
    held_out = rows[0]["n_eval"]
    assert rows[0]["n_train"] + held_out == len(songs) and held_out == 12  # two of 3 songs per singer
    for (settings, trained_on, workspace), row in zip(trainer.runs, rows):
        assert settings.timbre.policy == row["policy"]
        assert settings.timbre.pitch_shift is None and settings.timbre.time_stretch is None  # the policy's ranges
        assert len(trained_on) == row["n_train"]
        assert workspace == tmp_path / "experiments" / "pair-policies" / row["policy"]
        perturbed = [v for k, v in row.items() if k.startswith("p_at_1_") and k != "p_at_1_robust"]
        assert all(0.0 <= v <= 1.0 for v in [row["p_at_1"], row["map"], *perturbed])
        assert row["p_at_1_robust"] == pytest.approx(sum(perturbed) / len(perturbed))
        assert row["final_loss"] == 2.0 and row["epochs"] == 1
    with pytest.raises(ValueError, match="have no singer"):
        pair_policy_study([TrainingSong(0, songs[0].features)] + songs, SETTINGS, tmp_path, trainer=trainer)
