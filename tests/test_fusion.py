"""Calibrated fusion: z-scored similarities, weights as shares, exact answers through one index."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import FusionConfig, IndexConfig
from recsys.embedding import INDEX_WEIGHTS, Vectors, Weights, fuse
from recsys.fusion import Calibration, Fusion, question_weights, ranking_rows
from recsys.index import VectorIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors(n: int = 40, seed: int = 0) -> Vectors:
    rng = np.random.default_rng(seed)
    return Vectors(_unit(rng.standard_normal((n, 8))), _unit(rng.standard_normal((n, 5))))


def test_calibration_is_the_mean_and_spread_over_distinct_pairs():
    v = _vectors(12)
    cal = Calibration.fit(v)
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)]  # the plain loop
    ct = np.array([v.timbre[i] @ v.timbre[j] for i, j in pairs])
    cm = np.array([v.melody[i] @ v.melody[j] for i, j in pairs])
    assert cal.timbre_mean == pytest.approx(ct.mean(), abs=1e-6)
    assert cal.timbre_std == pytest.approx(ct.std(), abs=1e-6)
    assert cal.melody_mean == pytest.approx(cm.mean(), abs=1e-6)
    assert cal.melody_std == pytest.approx(cm.std(), abs=1e-6)
    sampled = Calibration.fit(_vectors(400), max_pairs=5000)  # sampled pairs on a larger catalog
    full = Calibration.fit(_vectors(400), max_pairs=10**6)
    assert sampled.timbre_std == pytest.approx(full.timbre_std, rel=0.05)
    assert Calibration.fit(_vectors(2)) == Calibration()  # too few rows: raw cosines


def test_scores_are_shares_of_standardised_evidence():
    cal = Calibration(timbre_mean=0.5, timbre_std=0.1, melody_mean=0.2, melody_std=0.3)
    fusion = Fusion(Weights(3, 1), cal)
    ct, cm = np.array([0.7, 0.5]), np.array([0.2, 0.8])
    expected = (3 * (ct - 0.5) / 0.1 + 1 * (cm - 0.2) / 0.3) / 4
    np.testing.assert_allclose(fusion.scores(ct, cm), expected, rtol=1e-6)
    # only the ratio of the weights matters
    np.testing.assert_allclose(Fusion(Weights(0.75, 0.25), cal).scores(ct, cm), expected, rtol=1e-6)


def test_index_queries_rank_exactly_as_the_scores():
    v = _vectors(60, seed=1)
    cal = Calibration.fit(v)
    index = VectorIndex.build(np.arange(60), fuse(v.timbre, v.melody, INDEX_WEIGHTS), IndexConfig(kind="flat"))
    for w in (Weights(0.7, 0.3), Weights(1, 0), Weights(0, 1), Weights(0.2, 0.9)):
        fusion = Fusion(w, cal)
        q = v.timbre[:3], v.melody[:3]
        D, I = index.search(fusion.query(*q), 10)
        exact = fusion.scores(q[0] @ v.timbre.T, q[1] @ v.melody.T)  # (3, 60)
        for r in range(3):
            np.testing.assert_array_equal(I[r], np.argsort(-exact[r], kind="stable")[:10])
            # the index's inner product is the score up to one constant per question
            offset = exact[r, I[r]] - D[r]
            np.testing.assert_allclose(offset, offset[0], atol=1e-5)
        rows = ranking_rows(v, fusion)  # the symmetric form ranks alike
        sym = rows[:3] @ rows.T
        np.testing.assert_array_equal(np.argsort(-sym, axis=1)[:, :10], I)


def _covers_catalog(n_each: int = 1) -> tuple[Vectors, list[tuple[int, int]]]:
    """Songs of 2 singers x 2 melodies with exact cosines: timbre 0.9 within a singer and 0.7
    across; melody 0.95 within a melody and 0.1 across (a covers catalog in miniature)."""
    songs = [(s, k) for s in range(2) for k in range(2) for _ in range(n_each)]
    n = len(songs)
    eye = np.eye(1 + 2 + n, dtype=np.float64)  # a common direction, one per group, one per song
    t = np.stack([np.sqrt(0.7) * eye[0] + np.sqrt(0.2) * eye[1 + s] + np.sqrt(0.1) * eye[3 + i]
                  for i, (s, _) in enumerate(songs)])
    m = np.stack([np.sqrt(0.1) * eye[0] + np.sqrt(0.85) * eye[1 + k] + np.sqrt(0.05) * eye[3 + i]
                  for i, (_, k) in enumerate(songs)])
    return Vectors(t.astype(np.float32), m.astype(np.float32)), songs


def test_calibration_stops_the_melody_share_from_ranking_covers_above_voices():
    v, songs = _covers_catalog()
    weights = Weights(0.7, 0.3)  # a small melody share

    def nearest(fusion: Fusion, q: int) -> tuple[int, int]:
        scores = fusion.scores(v.timbre[q] @ v.timbre.T, v.melody[q] @ v.melody.T)
        scores[q] = -np.inf
        return songs[int(np.argmax(scores))]

    for q, (singer, melody) in enumerate(songs):
        # raw cosines: the other singer's version of the melody comes first
        assert nearest(Fusion(weights), q) == (1 - singer, melody)
        # calibrated: the same singer's other song comes first
        assert nearest(Fusion(weights, Calibration.fit(v)), q)[0] == singer
        # with the melody's weight alone, the cover is found
        assert nearest(Fusion(Weights(0, 1), Calibration.fit(v)), q)[1] == melody


def test_question_weights_come_from_the_config():
    cfg = FusionConfig()
    assert question_weights(cfg, "singer") == Weights(1.0, 0.0)
    assert question_weights(cfg, "melody") == Weights(0.0, 1.0)
    assert question_weights(cfg, "song") == Weights(0.5, 0.5)
    with pytest.raises(ValueError, match="valid: singer, song, melody"):
        question_weights(cfg, "both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot both be 0"):
        FusionConfig(song={"timbre": 0, "melody": 0})
