"""The evaluation run: end to end on a tiny generated catalog, model reuse, metric semantics, splits, CLI JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from recsys.config import AudioConfig, SeparationConfig, Settings, load_settings
from recsys.corpus import generate_corpus
from recsys.fingerprint import audio_fingerprint
from recsys.studies.catalog import load_labelled_catalog, split_songs
from recsys.studies.evaluate import (
    DEFAULT_BASELINES,
    METRIC_KEYS,
    PERTURBATIONS,
    ROW_KEYS,
    EvaluationReport,
    evaluate,
    format_report,
    perturb,
    system_metrics,
)
from recsys.studies.trainers import TRAINERS, Trained, reusable, train_or_load, untrained_encoders
from recsys.training.checkpoint import catalog_fingerprint, latest_version, save_version

SR = 16000
# Small but real: 5 singers x 4 songs x 6 s, 2 songs per singer held out (10 queries).
# Supervised contrastive training (SupCon on singer labels): with so few songs and steps, the
# default self-supervised objective does not reliably beat random weights (docs/evaluation.md).
TINY = {
    "timbre": {"supervised": True, "epochs": 4, "steps_per_epoch": 10, "songs_per_batch": 8,
               "chunk_frames": 96, "channels": 16, "embedding_dim": 64, "patience": 10},
    "melody": {"epochs": 1},
}
TEST_FRACTION = 0.5
SYSTEMS = ["timbre", "melody", "fused", "timbre (untrained)", "melody (untrained)", "fused (untrained)",
           *DEFAULT_BASELINES]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is faster than two contending
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    manifest = generate_corpus(root / "corpus", n_singers=5, songs_per_singer=4, song_seconds=6.0, seed=0, workers=1)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    settings = load_settings(config_file=config, manifest_file=None, device="cpu")
    report = evaluate(manifest, settings, root / "ws", test_fraction=TEST_FRACTION, seed=0)
    return {"manifest": manifest, "config": config, "workspace": root / "ws", "report": report}


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluate_reports_every_metric_for_every_system(tiny):
    report: EvaluationReport = tiny["report"]
    assert [r["system"] for r in report.rows] == SYSTEMS
    per_perturbation = [f"robust_{w}_p_at_1_{p}" for w in ("singer", "melody") for p in PERTURBATIONS]
    for row in report.rows:
        missing = {*ROW_KEYS, *METRIC_KEYS, *per_perturbation} - set(row)
        assert not missing, f"{row['system']} lacks {missing}"
        for key in (*METRIC_KEYS, *per_perturbation):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (row["system"], key, row[key])
        assert row["id_top1"] <= row["id_top2"] <= row["id_top3"]
    assert {r["kind"] for r in report.rows} == {"trained", "untrained", "baseline"}
    assert report.split["n_test"] == 10 and report.split["n_train"] == 10
    assert all(m.trained for m in report.models.values())
    # Fused vectors have both parts.
    row = report.row
    assert row("fused")["dim"] == row("timbre")["dim"] + row("melody")["dim"]
    json.dumps(report.as_dict(), allow_nan=False)
    table = format_report(report)
    assert all(name in table for name in SYSTEMS)


@pytest.mark.slow
def test_trained_timbre_encoder_beats_the_untrained_one(tiny):
    report: EvaluationReport = tiny["report"]
    trained, untrained = report.row("timbre"), report.row("timbre (untrained)")
    assert trained["singer_map_at_10"] > untrained["singer_map_at_10"], (trained, untrained)
    # And retrieval is far above chance (4 of 5 singers are wrong: P@1 by chance is 0.2).
    assert trained["singer_p_at_1"] >= 0.5


@pytest.mark.slow
def test_models_train_on_the_training_split_only(tiny):
    report: EvaluationReport = tiny["report"]
    settings = load_settings(config_file=tiny["config"], manifest_file=None, device="cpu")
    songs = load_labelled_catalog(tiny["manifest"], settings.audio, settings.features)
    held_out = set(report.split["test_song_ids"])
    train = [(str(s.song_id), s.content_hash) for s in songs if s.song_id not in held_out]
    for kind in ("timbre", "melody"):
        assert latest_version(tiny["workspace"], kind).fingerprint == catalog_fingerprint(train)


@pytest.mark.slow
def test_cli_json_parses_and_reuses_the_trained_models(tiny):
    from recsys.cli import app

    args = ["--device", "cpu", "--config", str(tiny["config"]), "evaluate", str(tiny["manifest"]),
            "--out-workspace", str(tiny["workspace"]), "--test-fraction", str(TEST_FRACTION),
            "--baselines", "mfcc_stats", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["system"] for r in data["rows"]] == SYSTEMS[:6] + ["mfcc_stats"]
    first: EvaluationReport = tiny["report"]
    for kind in ("timbre", "melody"):
        assert data["models"][kind]["trained"] is False  # same songs, same settings: loaded
        assert data["models"][kind]["version"] == first.models[kind].version
    # Same models, same split, same audio: the same numbers.
    for system in ("timbre", "fused", "mfcc_stats"):
        again = next(r for r in data["rows"] if r["system"] == system)
        for key in METRIC_KEYS:
            assert again[key] == pytest.approx(first.row(system)[key], abs=1e-9), (system, key)


# --------------------------------------------------------------------------- pieces


def test_split_is_deterministic_and_keeps_every_singer_in_train():
    singers = [f"s{i % 7}" for i in range(60)]
    a_train, a_test = split_songs(singers, 0.25, seed=3)
    b_train, b_test = split_songs(singers, 0.25, seed=3)
    assert np.array_equal(a_train, b_train) and np.array_equal(a_test, b_test)
    assert not np.array_equal(a_test, split_songs(singers, 0.25, seed=4)[1])
    assert sorted([*a_train, *a_test]) == list(range(60))
    assert {singers[i] for i in a_test} <= {singers[i] for i in a_train}
    with pytest.raises(ValueError, match="nothing can be held out"):
        split_songs(["a", "b", "c"], 0.25)


def test_system_metrics_on_hand_built_vectors():
    # Singer i's songs all lie on axis i, so every retrieval and identification is right;
    # songs 0/3 and 1/4 share melodies (ids m0, m1), the rest are unique.
    singers = np.array(["a", "b", "c", "a", "b", "c"], dtype=object)
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    train_idx, test_idx = np.array([0, 1, 2]), np.array([3, 4, 5])
    melodies = np.array(["m0", "m1", "u2", "m0", "m1", "u5"], dtype=object)
    swapped = x[test_idx][[1, 0, 2]]  # a perturbation that swaps the singers a and b
    m = system_metrics(x, {"ps+2": x[test_idx], "ps-2": swapped}, singers, melodies, train_idx, test_idx)
    for key in ("singer_p_at_1", "singer_map_at_10", "singer_vote_at_5", "id_top1", "id_macro_f1",
                "melody_p_at_1", "robust_singer_p_at_1_ps+2"):
        assert m[key] == pytest.approx(1.0), key
    assert m["robust_singer_p_at_1_ps-2"] == pytest.approx(1 / 3)
    assert m["robust_singer_p_at_1"] == pytest.approx((1 + 1 / 3) / 2)
    # Without melody ids, the melody metrics are undefined, not zero.
    unknown = np.array([None] * 6, dtype=object)
    m = system_metrics(x, {}, singers, unknown, train_idx, test_idx)
    assert math.isnan(m["melody_p_at_1"]) and math.isnan(m["melody_map_at_10"])
    assert math.isnan(m["robust_melody_p_at_1"])


def test_perturbations_change_length_or_pitch_as_named():
    t = torch.arange(SR * 2) / SR
    wave = (0.3 * torch.sin(2 * math.pi * 220.0 * t)).float()
    assert perturb(wave, "ts1.1", SR).shape[-1] == round(wave.numel() / 1.1)
    shifted = perturb(wave, "ps+2", SR)
    spectrum = torch.fft.rfft(shifted * torch.hann_window(shifted.numel()))
    peak_hz = float(spectrum.abs().argmax()) * SR / shifted.numel()
    assert peak_hz == pytest.approx(220.0 * 2 ** (2 / 12), rel=0.01)
    with pytest.raises(ValueError, match="valid: ps\\+2"):
        perturb(wave, "reverse", SR)


def test_unlabelled_song_is_a_clear_error(tmp_path: Path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,singer\nnobody.wav,\n")
    settings = load_settings(manifest_file=None)
    with pytest.raises(ValueError, match="nobody.wav has no singer"):
        load_labelled_catalog(manifest, settings.audio, settings.features)


# --------------------------------------------------------------------------- model reuse and the audio clean-up


class TinyTrainer:
    """Publishes the product's architecture with fresh random weights: a trainer without the training time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0

    def config(self, settings: Settings) -> dict:
        return TRAINERS[self.kind].config(settings)

    def train(self, songs, settings: Settings, workspace: Path, *, resume: bool = True, log=None) -> Trained:
        self.calls += 1
        timbre, melody = untrained_encoders(settings, seed=self.calls)
        model = timbre if self.kind == "timbre" else melody
        fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
        version = save_version(workspace, self.kind, model.state_dict(), self.config(settings), fingerprint,
                               metrics={"epochs_run": 1, "best_epoch": 0, "final_loss": 1.0},
                               audio=audio_fingerprint(settings.audio, settings.separation))
        record = {"epoch": 0, "loss": 1.0, "seconds": 0.0}
        if log is not None:
            log(record)
        return Trained(model, version, [record], 0, 1.0)

    def load(self, workspace: Path, version: str) -> Trained:
        return TRAINERS[self.kind].load(workspace, version)


SMALL = {"timbre": {"chunk_frames": 64, "channels": 8, "embedding_dim": 16, "projection_dim": 8}}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    return generate_corpus(root / "corpus", n_singers=3, songs_per_singer=2, song_seconds=3.0, seed=1, workers=1)


def _small_settings(**audio) -> Settings:
    settings = load_settings(manifest_file=None, device="cpu", **SMALL)
    return settings.model_copy(update={"audio": settings.audio.model_copy(update=audio)})


def test_evaluate_reuses_a_model_only_for_audio_cleaned_the_same_way(small_corpus: Path, tmp_path: Path):
    """Changing audio.vocal_activity changes the training audio: the saved models must not be reused."""
    trainers = {kind: TinyTrainer(kind) for kind in ("timbre", "melody")}

    def run(settings: Settings) -> EvaluationReport:
        return evaluate(small_corpus, settings, tmp_path / "ws", test_fraction=0.5, baselines=(), trainers=trainers)

    first = run(_small_settings())
    assert all(m.trained for m in first.models.values())
    assert [r["system"] for r in first.rows] == SYSTEMS[:6]
    again = run(_small_settings())  # same songs, settings and clean-up: loaded, and the same numbers
    assert not any(m.trained for m in again.models.values())
    assert {k: m.version for k, m in again.models.items()} == {k: m.version for k, m in first.models.items()}
    assert again.row("timbre")["singer_p_at_1"] == first.row("timbre")["singer_p_at_1"]
    assert [t.calls for t in trainers.values()] == [1, 1]

    cleaned = run(_small_settings(vocal_activity=True))
    assert all(m.trained for m in cleaned.models.values()), "a model trained on other audio was reused"
    assert [t.calls for t in trainers.values()] == [2, 2]
    for kind in ("timbre", "melody"):
        assert cleaned.models[kind].version != first.models[kind].version
        assert latest_version(tmp_path / "ws", kind).audio == audio_fingerprint(
            AudioConfig(vocal_activity=True), SeparationConfig())


def test_the_stored_audio_fingerprint_alone_prevents_reuse(tmp_path: Path):
    """Even when the songs' content hashes match, a version whose stored clean-up differs is retrained."""
    from recsys.features import SongFeatures
    from recsys.training.data import TrainingSong

    gen = torch.Generator().manual_seed(0)
    songs = [TrainingSong(i, SongFeatures(torch.randn(48, 80, generator=gen)), f"s{i % 2}", f"h{i}")
             for i in range(4)]
    trainers = {"timbre": TinyTrainer("timbre")}
    plain = _small_settings()
    _, info = train_or_load(songs, plain, tmp_path, trainers, kinds=("timbre",))
    assert info["timbre"].trained
    _, info = train_or_load(songs, plain, tmp_path, trainers, kinds=("timbre",))
    assert not info["timbre"].trained
    _, info = train_or_load(songs, _small_settings(vocal_activity=True), tmp_path, trainers, kinds=("timbre",))
    assert info["timbre"].trained and trainers["timbre"].calls == 2


def test_reusable_compares_songs_config_and_audio(tmp_path: Path):
    settings = _small_settings()
    config = TRAINERS["timbre"].config(settings)
    timbre, _ = untrained_encoders(settings)
    meta = save_version(tmp_path, "timbre", timbre.state_dict(), config, "f1",
                        audio=audio_fingerprint(settings.audio, settings.separation))
    assert reusable(meta, "f1", config, settings)
    assert not reusable(meta, "f2", config, settings)  # other songs
    assert not reusable(meta, "f1", {**config, "channels": 99}, settings)  # other model settings
    assert not reusable(meta, "f1", config, _small_settings(vocal_activity=True))
    assert not reusable(meta, "f1", config, _small_settings(silence_threshold_db=-30.0))
    separated = settings.model_copy(update={"separation": SeparationConfig(method="classical")})
    assert not reusable(meta, "f1", config, separated)
    # A version saved before fingerprints were stored was trained with the default clean-up.
    old = save_version(tmp_path / "old", "timbre", timbre.state_dict(), config, "f1")
    assert old.audio is None
    assert reusable(old, "f1", config, settings)
    assert not reusable(old, "f1", config, _small_settings(vocal_activity=True))


def test_labelled_catalog_hashes_carry_the_audio_tag(small_corpus: Path):
    from recsys.audio import content_hash
    from recsys.fingerprint import audio_tag

    plain = load_labelled_catalog(small_corpus, AudioConfig(), _small_settings().features)
    voiced = load_labelled_catalog(small_corpus, AudioConfig(vocal_activity=True), _small_settings().features)
    assert plain[0].content_hash == content_hash(plain[0].path) + audio_tag(AudioConfig(), SeparationConfig())
    assert all(a.content_hash != b.content_hash for a, b in zip(plain, voiced))
    assert plain[0].training_song().features is plain[0].features
