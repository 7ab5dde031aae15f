"""Metrics on hand-worked cases, against a brute-force loop, and against pytorch-metric-learning."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from recsys.evaluation import (
    format_table,
    identification_metrics,
    rank_neighbours,
    retrieval_metrics,
    split_by_song,
)


def _loo(x, y, **kw):
    """Leave-one-out within one set: each item queries all the others."""
    return retrieval_metrics(x, x, y, y, np.arange(len(y)), **kw)


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def _at_cos(cosines: list[float]) -> np.ndarray:
    """2-D unit vectors whose cosine with (1, 0) is each given value."""
    c = np.asarray(cosines, dtype=np.float64)
    return np.stack([c, np.sqrt(1 - c**2)], axis=1)


# Six songs on the unit circle (angle in degrees, singer):
#   0: 0 A    1: 20 B    2: 20 A (same vector as 1: a tie)    3: 50 B    4: 90 A    5: 180 C (one song)
# 90 and 180 degrees are written exactly so that song 4 is at exactly the same cosine (0) to 0 and 5.
HAND_X = _angles([0, 20, 20, 50, 0, 0])
HAND_X[4] = (0.0, 1.0)
HAND_X[5] = (-1.0, 0.0)
HAND_Y = np.array(["A", "B", "A", "B", "A", "C"])


def test_retrieval_hand_case_with_tie_and_one_song_singer():
    # Rankings (other songs by angle difference; equal similarity -> lower index first), rel = same singer:
    #   q0 (A, R=2): 1(20) 2(20) 3(50) 4(90) 5(180)   rel 0 1 0 1 0  P@1 0  AP = (1/2 + 2/4) / 2 = 1/2
    #   q1 (B, R=1): 2(0) 0(20) 3(30) 4(70) 5(160)    rel 0 0 1 0 0  P@1 0  AP = (1/3) / 1     = 1/3
    #   q2 (A, R=2): 1(0) 0(20) 3(30) 4(70) 5(160)    rel 0 1 0 1 0  P@1 0  AP = (1/2 + 2/4) / 2 = 1/2
    #   q3 (B, R=1): 1(30) 2(30) 4(40) 0(50) 5(130)   rel 1 0 0 0 0  P@1 1  AP = 1
    #   q4 (A, R=2): 3(40) 1(70) 2(70) 0(90) 5(90)    rel 0 0 1 1 0  P@1 0  AP = (1/3 + 2/4) / 2 = 5/12
    #   q5 (C, R=0): no relevant item -> excluded, counted.
    # P@1 = 1/5; mAP@10 = (6 + 4 + 6 + 12 + 5) / 12 / 5 = 33/60.
    m = _loo(HAND_X.astype(np.float32), HAND_Y, k=10)
    assert m["n_queries"] == 5 and m["n_no_relevant"] == 1
    assert m["p_at_1"] == pytest.approx(1 / 5)
    assert m["map_at_k"] == pytest.approx(33 / 60)
    # Ties broken by index: q0 ranks 1 before 2, q4 ranks 0 before 5.
    _, I = rank_neighbours(HAND_X, HAND_X, 5, exclude=np.arange(6))
    assert I[0].tolist() == [1, 2, 3, 4, 5]
    assert I[4].tolist() == [3, 1, 2, 0, 5]


def test_map_is_normalised_by_min_k_and_relevant_count():
    # mAP@2 from the same rankings, each AP divided by min(2, R):
    #   q0: rel 0 1 -> (1/2)/2 = 1/4   q1: rel 0 0 -> 0   q2: 0 1 -> 1/4   q3: 1 0 -> 1/1 = 1   q4: 0 0 -> 0
    # mean = 1.5 / 5 = 0.3
    m = _loo(HAND_X, HAND_Y, k=2)
    assert m["map_at_k"] == pytest.approx(0.3)
    assert m["p_at_1"] == pytest.approx(0.2)


def test_majority_vote_count_then_summed_similarity():
    # Gallery around the query (1, 0), cosines and singers:
    #   g0 B .95   g1 A .90   g2 A .85   g3 B .10   g4 C .05
    # Query of singer A: top-1 is B (wrong); top-3 has A twice (right, by count);
    # top-5 has A 2 and B 2: A's summed similarity 1.75 beats B's 1.05 -> A (right), although the
    # tied label met first in the ranking is B.
    xb = _at_cos([0.95, 0.90, 0.85, 0.10, 0.05])
    yb = np.array(["B", "A", "A", "B", "C"])
    xq, yq = np.array([[1.0, 0.0]]), np.array(["A"])
    assert retrieval_metrics(xq, xb, yq, yb, k=5, vote_k=1)["vote_acc"] == 0.0
    assert retrieval_metrics(xq, xb, yq, yb, k=5, vote_k=3)["vote_acc"] == 1.0
    assert retrieval_metrics(xq, xb, yq, yb, k=5, vote_k=5)["vote_acc"] == 1.0
    # Count beats summed similarity: B .95 .90 (sum 1.85) vs A .5 .4 .3 (count 3) -> A.
    xb2 = _at_cos([0.95, 0.90, 0.5, 0.4, 0.3])
    yb2 = np.array(["B", "B", "A", "A", "A"])
    assert retrieval_metrics(xq, xb2, yq, yb2, k=5, vote_k=5)["vote_acc"] == 1.0
    assert retrieval_metrics(xq, xb2, np.array(["B"]), yb2, k=5, vote_k=5)["vote_acc"] == 0.0


def test_exact_tie_in_vote_goes_to_the_label_ranked_first():
    # Two identical gallery vectors of different singers: count 1-1 and equal summed similarity.
    xb = _at_cos([0.5, 0.5])
    xq = np.array([[1.0, 0.0]])
    m = retrieval_metrics(xq, xb, np.array(["X"]), np.array(["X", "Y"]), k=2, vote_k=2)
    assert m["vote_acc"] == 1.0 and m["p_at_1"] == 1.0
    m = retrieval_metrics(xq, xb, np.array(["Y"]), np.array(["X", "Y"]), k=2, vote_k=2)
    assert m["vote_acc"] == 0.0 and m["p_at_1"] == 0.0 and m["map_at_k"] == pytest.approx(0.5)


def _brute_force(xq, yq, xb, yb, k, vote_k, exclude_self):
    """Plain loop: sort every gallery item by (-similarity, index), then count.

    Returns the means of P@1, AP@k, AP@R, AP over the whole ranking and the vote, and the
    number of queries without a relevant item.
    """
    p1, aps, ap_rs, full, votes, skipped = [], [], [], [], [], 0
    for q in range(len(xq)):
        items = [j for j in range(len(xb)) if not (exclude_self and j == q)]
        sims = {j: float(np.dot(xq[q].astype(np.float64), xb[j].astype(np.float64))) for j in items}
        ranked = sorted(items, key=lambda j: (-sims[j], j))
        n_rel = sum(yb[j] == yq[q] for j in items)
        if n_rel == 0:
            skipped += 1
            continue
        p1.append(float(yb[ranked[0]] == yq[q]))
        hits, ap, ap_r, ap_all = 0, 0.0, 0.0, 0.0
        for i, j in enumerate(ranked, start=1):
            if yb[j] == yq[q]:
                hits += 1
                ap_all += hits / i
                ap += hits / i if i <= k else 0.0
                ap_r += hits / i if i <= n_rel else 0.0
        aps.append(ap / min(k, n_rel))
        ap_rs.append(ap_r / n_rel)
        full.append(ap_all / n_rel)
        top = ranked[:vote_k]
        count = Counter(yb[j] for j in top)
        summed = Counter()
        for j in top:
            summed[yb[j]] += sims[j]
        first = {}
        for r, j in enumerate(top):
            first.setdefault(yb[j], r)
        winner = max(count, key=lambda lab: (count[lab], summed[lab], -first[lab]))
        votes.append(float(winner == yq[q]))
    return {"p_at_1": np.mean(p1), "map_at_k": np.mean(aps), "map_at_r": np.mean(ap_rs), "map": np.mean(full),
            "vote_acc": np.mean(votes)}, skipped


def _clustered(n_singers: int, songs: list[int], d: int, seed: int, spread: float = 0.8):
    """Singers as random centres, songs scattered around them: not trivial, not random."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_singers, d))
    labels = np.repeat(np.arange(n_singers), songs)
    x = centres[labels] + spread * rng.normal(size=(labels.size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


METRICS = ("p_at_1", "map_at_k", "map_at_r", "map", "vote_acc")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force(seed):
    songs = [1, 2, 3, 5, 8, 1, 4, 6]
    x, y = _clustered(len(songs), songs, d=8, seed=seed)
    x[5] = x[4]  # an exact duplicate of a different singer's song: a tie
    k, vote_k = 10, 5
    m = _loo(x, y, k=k, vote_k=vote_k)
    expected, skipped = _brute_force(x, y, x, y, k, vote_k, exclude_self=True)
    assert m["n_no_relevant"] == skipped == 2
    for key in METRICS:
        assert m[key] == pytest.approx(expected[key]), key
    assert 0.0 < m["map_at_k"] < 1.0 and 0.0 < m["map"] < 1.0


def test_rank_neighbours_blocked_with_ties_matches_a_full_stable_sort(monkeypatch):
    from recsys import evaluation

    x, _ = _clustered(6, [5] * 6, d=4, seed=9)
    x[10:20] = x[3]  # ten exact duplicates: ties across the k-th position
    monkeypatch.setattr(evaluation, "BLOCK_ELEMENTS", 7 * len(x))  # blocks of 7 queries
    D, I = rank_neighbours(x, x, 8, exclude=np.arange(len(x)))
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :8]
    assert np.array_equal(I, expected)
    np.testing.assert_allclose(D, np.take_along_axis(sims, expected, axis=1))


def test_retrieval_in_blocks_equals_one_block(monkeypatch):
    from recsys import evaluation

    x, y = _clustered(6, [5] * 6, d=4, seed=10)
    whole = _loo(x, y)
    monkeypatch.setattr(evaluation, "BLOCK_ELEMENTS", 7 * len(x))
    assert _loo(x, y) == pytest.approx(whole)


def test_cross_retrieval_matches_brute_force_and_unknown_singers_are_counted():
    x, y = _clustered(6, [4] * 6, d=6, seed=3)
    xq, yq = x[::2], y[::2].copy()
    yq[0] = 99  # a query singer absent from the gallery
    m = retrieval_metrics(xq, x[1::2], yq, y[1::2], k=3, vote_k=3)
    expected, skipped = _brute_force(xq, yq, x[1::2], y[1::2], 3, 3, exclude_self=False)
    assert m["n_no_relevant"] == skipped == 1 and m["n_queries"] == len(xq) - 1
    for key in METRICS:
        assert m[key] == pytest.approx(expected[key]), key


def test_without_exclusion_every_query_finds_itself_first():
    x, y = _clustered(5, [3] * 5, d=4, seed=4)
    m = retrieval_metrics(x, x, y, y)
    assert m["p_at_1"] == 1.0 and m["n_queries"] == len(y)
    assert _loo(x, y)["p_at_1"] < 1.0


def test_agrees_with_pytorch_metric_learning():
    """P@1, MAP@R and the whole-ranking mAP against AccuracyCalculator, within one set and against a gallery."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = _clustered(10, [1, 2, 3, 4, 5, 6, 2, 3, 4, 5], d=16, seed=5, spread=1.2)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "mean_average_precision"),
                              k=None, device=torch.device("cpu"))  # k=None: rank the whole gallery
    pairs = {"p_at_1": "precision_at_1", "map_at_r": "mean_average_precision_at_r", "map": "mean_average_precision"}
    ours = _loo(x, y)
    theirs = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))  # leave-one-out: reference = query
    for key, name in pairs.items():
        assert ours[key] == pytest.approx(theirs[name]), key
    xq, yq = np.ascontiguousarray(x[::3]), np.ascontiguousarray(y[::3])
    xb, yb = np.delete(x, np.s_[::3], axis=0), np.delete(y, np.s_[::3])
    ours = retrieval_metrics(xq, xb, yq, yb)
    theirs = calc.get_accuracy(torch.from_numpy(xq), torch.from_numpy(yq), torch.from_numpy(xb), torch.from_numpy(yb))
    for key, name in pairs.items():
        assert ours[key] == pytest.approx(theirs[name]), key


def test_torch_inputs_and_python_labels_give_the_numpy_answer():
    """What the trainers' validation passes: CPU tensors (even with autograd history) and lists of labels."""
    x, y = _clustered(4, [3] * 4, d=8, seed=11)
    t = torch.from_numpy(x).requires_grad_(True) * 1.0
    got = retrieval_metrics(t, t, y.tolist(), y.tolist(), list(range(len(y))))
    assert got == _loo(x, y)


def test_all_singletons_give_nan_means_not_a_crash():
    x, _ = _clustered(3, [1, 1, 1], d=4, seed=6)
    m = _loo(x, np.array([0, 1, 2]))
    assert m["n_queries"] == 0 and m["n_no_relevant"] == 3
    assert all(np.isnan(m[key]) for key in METRICS)
    one = _loo(x[:1], np.array([0]))  # a gallery of one song: nothing left to retrieve
    assert one["n_queries"] == 0 and np.isnan(one["map"])


def test_bad_inputs_are_clear_errors():
    x, y = _clustered(2, [2, 2], d=4, seed=7)
    with pytest.raises(ValueError, match="L2-normalised.*row 0"):
        _loo(x * 2, y)
    with pytest.raises(ValueError, match=r"yq must have shape \(4,\)"):
        retrieval_metrics(x, x, y[:3], y)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        _loo(x, y, k=0)
    with pytest.raises(ValueError, match="2-D array"):
        retrieval_metrics(x[0], x, y, y)
    with pytest.raises(ValueError, match="gallery xb is empty"):
        retrieval_metrics(x, x[:0], y, y[:0])


# Identification hand case. Train centroids are the axes: A = e1 (two songs), B = e2, C = e3.
# Test songs (truth; cosines to A, B, C; ranking; rank of truth):
#   t0 (A) .8 .6 0  -> A B C  0          t3 (C) .8 .6 0  -> A B C  2
#   t1 (A) .6 .8 0  -> B A C  1          t4 (B) 0 1 0    -> B ...  0
#   t2 (B) 0 .6 .8  -> C B A  1          t5 (B) s s 0    -> A B C  1  (exact tie A=B -> label order)
# top1 = 2/6, top2 = 5/6, top3 = 1. Predictions A B C A B A vs truth A A B C B B:
#   A: precision 1/3, recall 1/2 -> F1 2/5;  B: precision 1/2, recall 1/3 -> F1 2/5;  C: F1 0
#   macro-F1 = (2/5 + 2/5 + 0) / 3 = 4/15
S = np.sqrt(0.5)
ID_TRAIN_X = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
ID_TRAIN_Y = np.array(["A", "A", "B", "C"])
ID_TEST_X = np.array(
    [[0.8, 0.6, 0], [0.6, 0.8, 0], [0, 0.6, 0.8], [0.8, 0.6, 0], [0, 1, 0], [S, S, 0]], dtype=np.float32
)
ID_TEST_Y = np.array(["A", "A", "B", "C", "B", "B"])


def test_identification_hand_case():
    m = identification_metrics(ID_TRAIN_X, ID_TRAIN_Y, ID_TEST_X, ID_TEST_Y)
    assert m["top1"] == pytest.approx(2 / 6)
    assert m["top2"] == pytest.approx(5 / 6)
    assert m["top3"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(4 / 15)
    assert m["n_test"] == 6 and m["n_classes"] == 3


def test_identification_centroid_is_the_normalised_mean():
    # A's songs at 0 and 90 degrees: centroid at 45. B's one song at 80 degrees.
    # A test song at 50 degrees is nearest to B's song (30 degrees away, A's are 40 and 50) but
    # nearest to A's centroid (5 vs 30 degrees) -> A; a song at 85 degrees goes to B (5 vs 40).
    train_x = _angles([0, 90, 80])
    train_y = np.array(["A", "A", "B"])
    test_x = _angles([50, 85])
    m = identification_metrics(train_x, train_y, test_x, np.array(["A", "B"]))
    assert m["top1"] == 1.0


def test_identification_logreg_on_separable_singers():
    x, y = _clustered(4, [6] * 4, d=8, seed=8, spread=0.3)
    train, test = split_by_song(range(len(y)), 0.34, seed=0, mode="per_singer", labels=y)
    m = identification_metrics(x[train], y[train], x[test], y[test], classifier="logreg")
    assert m["top1"] == 1.0 and m["macro_f1"] == 1.0
    centroid = identification_metrics(x[train], y[train], x[test], y[test])
    assert centroid["top1"] == 1.0


def test_identification_errors():
    with pytest.raises(ValueError, match="no training song"):
        identification_metrics(ID_TRAIN_X, ID_TRAIN_Y, ID_TEST_X[:1], np.array(["Z"]))
    with pytest.raises(ValueError, match="valid: 'centroid', 'logreg'"):
        identification_metrics(ID_TRAIN_X, ID_TRAIN_Y, ID_TEST_X, ID_TEST_Y, classifier="knn")


def _per_singer(labels, fraction, seed):
    train, test = split_by_song(range(len(labels)), fraction, seed, mode="per_singer", labels=labels)
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def test_split_by_song_keeps_every_test_singer_in_train():
    labels = np.array([0] * 5 + [1] * 2 + [2] + [3] * 10)
    train, test = _per_singer(labels, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(labels.size))
    # round(0.2 * m), at least 1 and at most m - 1: 5 -> 1, 2 -> 1, 1 -> 0, 10 -> 2
    assert Counter(labels[test].tolist()) == {0: 1, 1: 1, 3: 2}
    assert set(labels[train].tolist()) == {0, 1, 2, 3}
    again = _per_singer(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    others = [_per_singer(labels, 0.2, seed=s)[1] for s in range(1, 6)]
    assert any(not np.array_equal(o, test) for o in others)


# Both rules on one catalog: singers a (5 songs), b (3), c (2), d (4) and 4 unlabelled songs, shuffled.
SPLIT_LABELS = [None, "a", None, "d", None, "b", "d", "d", "a", "a", "b", "c", "a", "c", "a", "d", None, "b"]


def test_split_by_song_validation_rule():
    # Target round(0.3 * 18) = 5: a quarter of the unlabelled songs (1), one each from a, b, d (>= 3 songs;
    # c has 2 and keeps them), then a second from a (>= 4) -- d's second would come next.
    songs = [{"id": i, "singer": y} for i, y in enumerate(SPLIT_LABELS)]
    kept, held = split_by_song(songs, 0.3, seed=0, labels=[s["singer"] for s in songs])
    assert Counter(s["singer"] for s in held) == {None: 1, "a": 2, "b": 1, "d": 1}
    assert sorted(s["id"] for s in kept + held) == list(range(18))
    # The split the trainers made before it moved here (recsys.training.data), song for song.
    assert [s["id"] for s in held] == [4, 5, 7, 8, 9]
    again = split_by_song(songs, 0.3, seed=0, labels=SPLIT_LABELS)
    assert again == (kept, held)
    assert any(split_by_song(songs, 0.3, seed=s, labels=SPLIT_LABELS)[1] != held for s in range(1, 6))


def test_split_by_song_reads_each_songs_singer_by_default():
    from types import SimpleNamespace

    songs = [SimpleNamespace(id=i, singer=y) for i, y in enumerate(SPLIT_LABELS)]
    kept, held = split_by_song(songs, 0.3, 0)  # as the trainers call it
    assert [s.id for s in held] == [4, 5, 7, 8, 9] and len(kept) == 13


def test_split_by_song_per_singer_rule_is_the_evaluations_split():
    # The evaluation's split before it gained the validation rule, song for song; unlabelled songs stay in.
    _, test = _per_singer(SPLIT_LABELS, 0.3, seed=0)
    labelled = [i for i, y in enumerate(SPLIT_LABELS) if y is not None]
    assert test.tolist() == [labelled[i] for i in (1, 2, 8, 9, 11)]
    assert not {i for i, y in enumerate(SPLIT_LABELS) if y is None} & set(test.tolist())


def test_split_by_song_validates_its_arguments():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        split_by_song(range(2), 1.0, labels=[0, 0], mode="per_singer")
    with pytest.raises(ValueError, match="valid: 'validation', 'per_singer'"):
        split_by_song(range(2), 0.5, labels=[0, 0], mode="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one label per song"):
        split_by_song(range(3), 0.5, labels=[0, 0])


def test_format_table():
    rows = [
        {"method": "mfcc_stats", "p_at_1": 0.5, "n_queries": 12},
        {"method": "resemblyzer", "p_at_1": 0.91234},
    ]
    table = format_table(rows, ["method", ("p_at_1", "P@1"), "n_queries"])
    assert table.splitlines() == [
        "method         P@1  n_queries",
        "-----------  -----  ---------",
        "mfcc_stats   0.500         12",
        "resemblyzer  0.912          -",
    ]
    with pytest.raises(KeyError, match="'map' is in no row"):
        format_table(rows, ["method", "map"])


def test_cross_retrieval_exclude_leaves_out_each_querys_own_original():
    """A perturbed copy of gallery song i must not find song i itself, nor count it as relevant."""
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((6, 8))
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    yb = np.array(["a", "a", "b", "b", "c", "c"])
    xq = xb + 0.01 * rng.standard_normal(xb.shape)  # each query is almost its own original
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    plain = retrieval_metrics(xq, xb, yb, yb, k=5, vote_k=1)
    assert plain["p_at_1"] == 1.0  # trivially: the nearest is the original
    held = retrieval_metrics(xq, xb, yb, yb, np.arange(6), k=5, vote_k=1)
    loo = _loo(xb, yb, k=5, vote_k=1)  # the same as leave-one-out on the originals
    assert held["p_at_1"] == loo["p_at_1"] and held["map_at_k"] == pytest.approx(loo["map_at_k"])
    with pytest.raises(ValueError, match="one gallery row"):
        retrieval_metrics(xq, xb, yb, yb, np.arange(5))
