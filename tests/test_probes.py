"""Voice attribute probes: fitted on timbre vectors, evaluated against the majority class, stored as JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recsys import catalog
from recsys.api import Recommender
from recsys.cli import app
from recsys.config import load_settings
from recsys.probes import (
    Probe,
    attribute_values,
    fit_probe,
    list_probes,
    load_probe,
    predict_attribute,
    save_probe,
    split_held_out,
    train_attribute_probe,
)


def synthetic_voices(n_singers: int = 12, songs: int = 4, d: int = 32, seed: int = 0):
    """Unit vectors whose class (3 'registers') shifts the mean along a few directions; each singer
    has its own offset, so songs of one singer are closer to each other than to their class."""
    rng = np.random.default_rng(seed)
    classes = ["high", "low", "mid"]
    class_dirs = rng.normal(size=(3, d)) * 0.8
    x, labels, groups = [], [], []
    for s in range(n_singers):
        c = s % 3
        singer = rng.normal(size=d) * 0.6
        for _ in range(songs):
            x.append(class_dirs[c] + singer + rng.normal(size=d) * 0.4)
            labels.append(classes[c])
            groups.append(f"singer_{s:02d}")
    x = np.asarray(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels, groups


def test_probe_on_synthetic_voices_beats_the_majority_class():
    x, labels, groups = synthetic_voices()
    probe = fit_probe(x, labels, groups, "register", "tv1", test_fraction=0.25, seed=0)
    m = probe.metrics
    assert m["split"] == "singer" and m["n_test"] == 12 and m["n_train"] == 36
    assert m["accuracy"] > m["baseline_accuracy"] + 0.3
    assert m["macro_f1"] > m["baseline_macro_f1"] + 0.4
    assert probe.classes == ["high", "low", "mid"]


def test_held_out_split_keeps_each_singer_on_one_side():
    _, labels, groups = synthetic_voices()
    train, test, kind = split_held_out(labels, groups, 0.25, seed=3)
    assert kind == "singer"
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert {labels[i] for i in test} == {labels[i] for i in train} == {"high", "low", "mid"}
    assert len(train) + len(test) == len(labels)
    # one singer per class: no singer split possible, a stratified song split instead
    two = ["a"] * 3 + ["b"] * 3
    train, test, kind = split_held_out(two, ["s1"] * 3 + ["s2"] * 3, 0.25, seed=0)
    assert kind == "song" and sorted(np.concatenate([train, test]).tolist()) == list(range(6))
    assert {two[i] for i in test} == {"a", "b"} and len(test) == 2


def test_probe_probabilities_match_sklearn_and_survive_a_reload(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, labels, groups = synthetic_voices(seed=1)
    probe = fit_probe(x, labels, groups, "register", "tv1")
    mean, std = x.mean(0), x.std(0)
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=0)
    reference.fit((x - mean) / std, labels)
    np.testing.assert_allclose(probe.predict_proba(x), reference.predict_proba((x - mean) / std), atol=1e-6)

    path = save_probe(probe, tmp_path)
    assert path == tmp_path / "probes" / "tv1" / "register.json"
    data = json.loads(path.read_text())
    assert isinstance(data["coef"], list) and isinstance(data["intercept"], list)
    loaded = load_probe(tmp_path, "tv1", "register")
    np.testing.assert_allclose(loaded.predict_proba(x), probe.predict_proba(x), atol=1e-12)
    assert loaded.version == probe.version and loaded.metrics == probe.metrics
    assert [p.attribute for p in list_probes(tmp_path)] == ["register"]


def test_binary_probe_uses_a_sigmoid_with_one_row():
    x, labels, groups = synthetic_voices()
    binary = [("low" if v == "low" else "other") for v in labels]
    probe = fit_probe(x, binary, groups, "is_low", "tv1")
    assert probe.coef.shape == (1, x.shape[1])
    p = probe.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0)
    values, confidence = probe.predict(x)
    assert np.mean(np.array(values) == np.array(binary)) > 0.9 and (confidence >= 0.5).all()


def test_too_few_labels_is_a_clear_error():
    x, _, groups = synthetic_voices()
    with pytest.raises(ValueError, match=r"needs >= 2 classes with >= 2 labelled.*found 1 .*'en': 48"):
        fit_probe(x, ["en"] * len(x), groups, "language", "tv1")
    labels = ["en"] * (len(x) - 1) + ["fr"]  # 'fr' has one song
    with pytest.raises(ValueError, match=r"'en': 47, 'fr': 1"):
        fit_probe(x, labels, groups, "language", "tv1")
    labels = ["en"] * (len(x) - 3) + ["fr", "fr", "de"]  # 'de' is left out, the probe learns en / fr
    probe = fit_probe(x, labels, groups, "language", "tv1")
    assert probe.classes == ["en", "fr"] and probe.metrics["dropped_classes"] == ["de"]
    with pytest.raises(ValueError, match="bad attribute name"):
        fit_probe(x, labels, groups, "../evil", "tv1")
    with pytest.raises(ValueError, match="does not fit 3 classes"):
        Probe("a", "tv", ["x", "y", "z"], np.zeros((1, 4)), np.zeros(1))


@pytest.fixture
def workspace_copy(demo_workspace: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace, ws)
    return ws


def _rec(ws: Path) -> Recommender:
    return Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu"))


def test_gender_probe_on_the_demo_voices_beats_the_majority_class(workspace_copy):
    rec = _rec(workspace_copy)
    accuracy, baseline = [], []
    for seed in range(5):  # 6 singers: each split holds out one singer per gender
        probe, path = train_attribute_probe(rec, "gender", seed=seed)
        assert probe.metrics["split"] == "singer" and probe.metrics["n_test"] == 6
        accuracy.append(probe.metrics["accuracy"])
        baseline.append(probe.metrics["baseline_accuracy"])
    assert np.mean(accuracy) > np.mean(baseline) + 0.2, (accuracy, baseline)
    t_meta = rec.models.timbre_meta
    assert path == workspace_copy / "probes" / t_meta.version / "gender.json"


def test_an_attribute_without_enough_labels_names_the_counts(workspace_copy):
    rec = _rec(workspace_copy)
    with pytest.raises(ValueError, match=r"'tempo_bpm' has too few labels.*found 0 such classes among 18"):
        train_attribute_probe(rec, "tempo_bpm")
    with pytest.raises(ValueError, match=r"no embedded song has metadata 'language'.*gender \(18\)"):
        train_attribute_probe(rec, "language")


def test_predictions_fill_unlabelled_songs_and_never_touch_given_labels(workspace_copy):
    rec = _rec(workspace_copy)
    before = {row["id"]: dict(row["metadata"]) for row in rec.songs()}
    singers = sorted({row["singer"] for row in rec.songs()})
    gender_of = {row["singer"]: row["metadata"]["gender"] for row in rec.songs()}
    hidden = [next(s for s in singers if gender_of[s] == g) for g in ("female", "male")]
    with catalog.session_scope(rec.sessions) as s:
        for song in catalog.list_songs(s):
            if song.singer.name in hidden:
                del song.meta["gender"]
    probe, _ = train_attribute_probe(rec, "gender")
    assert probe.metrics["n_labelled"] == 12

    summary = predict_attribute(rec, "gender")
    assert (summary.n_predicted, summary.n_given, summary.n_not_embedded) == (6, 12, 0)
    assert set(summary.singers) == set(singers)
    with rec.sessions() as s:
        for song in catalog.list_songs(s):
            if song.singer.name in hidden:
                assert "gender" not in song.meta
                entry = song.predicted["gender"]
                assert entry["value"] in ("female", "male") and 0.5 <= entry["confidence"] <= 1.0
                assert entry["probe"] == probe.version
                assert entry["singer_value"] == summary.singers[song.singer.name]["value"]
            else:
                assert song.meta == before[song.id]  # given labels unchanged
                assert "gender" not in (song.predicted or {})  # and not predicted

    values = attribute_values(rec, "gender")
    assert len(values) == 18
    for song_id, (value, source, confidence) in values.items():
        if source == "given":
            assert value == before[song_id]["gender"] and confidence == 1.0
        else:
            assert source == "predicted" and 0.5 <= confidence <= 1.0

    # The explorer filters and colours by given or predicted values, predicted ones marked.
    from app import views

    songs = views.song_table(rec.songs())
    for song_id, (value, source, _) in values.items():
        expected = value if source == "given" else f"{value}{views.PREDICTED_SUFFIX}"
        assert songs.loc[song_id, "gender"] == expected
    options = {c.name: c.values for c in views.catalog_columns(songs)}["gender"]
    assert {"female", "male"} <= set(options) and any(o.endswith(views.PREDICTED_SUFFIX) for o in options)


def test_predict_without_a_probe_says_how_to_make_one(workspace_copy):
    with pytest.raises(FileNotFoundError, match="recsys probe train register"):
        predict_attribute(_rec(workspace_copy), "register")


def test_probe_cli_train_predict_list(workspace_copy):
    runner = CliRunner()
    base = ["--workspace", str(workspace_copy), "--device", "cpu"]
    result = runner.invoke(app, base + ["probe", "train", "register", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["attribute"] == "register" and "accuracy" in data["metrics"]
    result = runner.invoke(app, base + ["probe", "predict", "register"])
    assert result.exit_code == 0, result.output
    assert "predicted 0 songs, kept 18 given labels" in result.output  # every song is labelled
    result = runner.invoke(app, base + ["probe", "list", "--json"])
    rows = json.loads(result.output)
    assert [(r["attribute"], r["current"]) for r in rows] == [("register", True)]
    result = runner.invoke(app, base + ["probe", "train", "tempo_bpm"])
    assert result.exit_code == 1 and "too few labels" in result.output
