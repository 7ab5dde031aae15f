"""Retrieval and identification metrics on embedding arrays (faiss contrib style).

Plain functions on numpy arrays: `xq` (nq, d) query vectors, `xb` (nb, d) base
(gallery) vectors, L2-normalised so that the inner product is the cosine; `yq`,
`yb` their singer labels (any comparable dtype: ints or strings). No database, no
CLI: `recsys evaluate` and the bench scripts call these and print `format_table`.

Conventions used by every function here:

* Neighbours are ranked by decreasing cosine similarity; equal similarities are
  ranked by increasing base index, so results are deterministic.
* A query whose singer has no other item in the gallery (a singer with one song,
  when the query's own song is excluded) has no relevant item: it is left out of
  the means and counted in ``n_no_relevant``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

NORM_TOLERANCE = 1e-3  # |‖x‖ - 1| allowed for "L2-normalised" inputs (float32 rounding)
BLOCK_ELEMENTS = 1 << 24  # similarities held at once (128 MB of float64): queries are ranked in blocks


# --------------------------------------------------------------------------- checks


def _check_vectors(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise ValueError(
            f"{name} must be L2-normalised (cosine metrics); row {bad[0]} has norm {norms[bad[0]]:.4f} "
            f"({bad.size} rows off by more than {NORM_TOLERANCE})"
        )
    return x


def _check_labels(y: Any, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the vectors, got {y.shape}")
    return y


def _check_k(k: int, name: str = "k") -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


# --------------------------------------------------------------------------- ranking


def rank_neighbours(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN with deterministic ties: (nq, d), (nb, d) -> D (nq, k'), I (nq, k').

    `exclude` (nq,) gives, per query, one base index to leave out (the query itself
    when queries are the base), or -1 for none. k' = min(k, nb - 1 if exclude is given
    else nb). Similarities are computed in float64 so equal vectors tie exactly, and
    ties are ranked by increasing base index. O(nb) per query (partition, then a sort
    of the k best), in blocks of queries so memory stays bounded.
    """
    nq, d = xq.shape
    nb, db = xb.shape
    assert d == db, f"query dim {d} != base dim {db}"
    _check_k(k)
    k_eff = min(k, nb - 1 if exclude is not None else nb)
    if k_eff < 1:
        raise ValueError(f"the gallery has {nb} items: nothing to rank after excluding the query itself")
    xb64 = xb.astype(np.float64)
    D = np.empty((nq, k_eff), dtype=np.float64)
    I = np.empty((nq, k_eff), dtype=np.int64)
    block = max(1, BLOCK_ELEMENTS // nb)
    for start in range(0, nq, block):
        stop = min(start + block, nq)
        sims = xq[start:stop].astype(np.float64) @ xb64.T  # (block, nb)
        if exclude is not None:
            rows = np.arange(stop - start)
            cols = exclude[start:stop]
            keep = cols >= 0
            sims[rows[keep], cols[keep]] = -np.inf
        # k-th largest similarity per row; every item at least that similar is a candidate, so
        # ties at the boundary are all kept and then ordered by (-similarity, index).
        kth = -np.partition(-sims, k_eff - 1, axis=1)[:, k_eff - 1]  # (block,)
        for r in range(stop - start):
            cand = np.flatnonzero(sims[r] >= kth[r])
            top = cand[np.lexsort((cand, -sims[r, cand]))[:k_eff]]
            I[start + r] = top
            D[start + r] = sims[r, top]
    return D, I


def _majority_vote(labels: np.ndarray, sims: np.ndarray) -> Any:
    """Most frequent label among neighbours; ties by higher summed similarity, then by best rank."""
    best_key: tuple[int, float, int] | None = None
    best_label = None
    for rank, label in enumerate(labels):
        if any(label == seen for seen in labels[:rank]):
            continue
        same = labels == label
        key = (int(same.sum()), float(sims[same].sum()), -rank)
        if best_key is None or key > best_key:
            best_key, best_label = key, label
    return best_label


def _ranking_metrics(
    D: np.ndarray, I: np.ndarray, yq: np.ndarray, yb: np.ndarray, n_relevant: np.ndarray, k: int, vote_k: int
) -> dict[str, Any]:
    has_relevant = n_relevant > 0
    evaluated = np.flatnonzero(has_relevant)
    out: dict[str, Any] = {
        "k": int(k),
        "vote_k": int(vote_k),
        "n_queries": int(evaluated.size),
        "n_no_relevant": int((~has_relevant).sum()),
        "p_at_1": float("nan"),
        "map_at_k": float("nan"),
        "vote_acc": float("nan"),
    }
    if evaluated.size == 0:
        return out
    rel = yb[I[evaluated]] == yq[evaluated, None]  # (n, k')
    rel_k = rel[:, :k]
    ranks = np.arange(1, rel_k.shape[1] + 1)
    precision_at_i = np.cumsum(rel_k, axis=1) / ranks
    ap = (precision_at_i * rel_k).sum(axis=1) / np.minimum(k, n_relevant[evaluated])
    votes = np.array(
        [_majority_vote(yb[I[q, :vote_k]], D[q, :vote_k]) == yq[q] for q in evaluated], dtype=bool
    )
    out.update(p_at_1=float(rel[:, 0].mean()), map_at_k=float(ap.mean()), vote_acc=float(votes.mean()))
    return out


def cross_retrieval_metrics(
    xq: np.ndarray,
    yq: np.ndarray,
    xb: np.ndarray,
    yb: np.ndarray,
    k: int = 10,
    vote_k: int = 5,
    exclude: np.ndarray | None = None,
) -> dict[str, Any]:
    """Singer retrieval of queries against a separate gallery (e.g. augmented or held-out songs vs catalog).

    xq (nq, d), xb (nb, d) L2-normalised; yq (nq,), yb (nb,) singer labels. An item
    of the gallery is relevant to a query when it has the query's singer label.
    `exclude` (nq,): a gallery row each query must not retrieve nor count as relevant,
    e.g. the clean original of a perturbed query (-1: none). See
    :func:`retrieval_metrics` for the metric definitions and the returned keys.
    """
    xq = _check_vectors(xq, "xq")
    xb = _check_vectors(xb, "xb")
    assert xq.shape[1] == xb.shape[1], f"xq dim {xq.shape[1]} != xb dim {xb.shape[1]}"
    yq = _check_labels(yq, xq.shape[0], "yq")
    yb = _check_labels(yb, xb.shape[0], "yb")
    _check_k(k)
    _check_k(vote_k, "vote_k")
    if xb.shape[0] == 0:
        raise ValueError("the gallery xb is empty: nothing to retrieve")
    labels, counts = np.unique(yb, return_counts=True)
    pos = np.searchsorted(labels, yq).clip(0, len(labels) - 1)
    n_relevant = np.where(labels[pos] == yq, counts[pos], 0)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if exclude.shape[0] != xq.shape[0] or exclude.max(initial=-1) >= xb.shape[0]:
            raise ValueError(f"exclude needs one gallery row (or -1) per query: got {exclude.shape[0]} "
                             f"for {xq.shape[0]} queries and a gallery of {xb.shape[0]}")
        excluded_relevant = (exclude >= 0) & (yb[exclude.clip(0)] == yq)
        n_relevant = n_relevant - excluded_relevant
    D, I = rank_neighbours(xq, xb, max(k, vote_k), exclude=exclude)
    return _ranking_metrics(D, I, yq, yb, n_relevant, k, vote_k)


def retrieval_metrics(
    x: np.ndarray, labels: np.ndarray, k: int = 10, exclude_self: bool = True, vote_k: int = 5
) -> dict[str, Any]:
    """Leave-one-out singer retrieval within one set: each item queries all the others.

    x (n, d) float L2-normalised (one vector per song); labels (n,) singer labels.
    For a query q with R relevant items (other songs of its singer) and the ranked
    neighbours r_1..r_k (rel_i = 1 when r_i has q's singer):

    * ``p_at_1``: mean over queries of rel_1 (is the nearest neighbour by the same singer?).
    * ``map_at_k``: mean over queries of AP@k = (1 / min(k, R)) * sum_{i<=k} rel_i * P@i,
      with P@i = (rel_1 + ... + rel_i) / i. Normalising by min(k, R) makes a perfect
      ranking score 1 even when R < k or R > k.
    * ``vote_acc``: majority-vote top-`vote_k` accuracy: the label most frequent among
      the `vote_k` nearest neighbours (ties: higher summed similarity, then the label
      met first in the ranking) equals the query's label.

    Queries with R = 0 (singers with one song) are excluded from all three means and
    counted in ``n_no_relevant``; ``n_queries`` is the number evaluated. With
    ``exclude_self=False`` each query ranks itself too (and counts itself relevant):
    only useful to check an index, not to measure retrieval. Ties in similarity are
    ranked by item index. Returns also ``k`` and ``vote_k``; the means are NaN when
    no query has a relevant item.
    """
    x = _check_vectors(x, "x")
    n = x.shape[0]
    labels = _check_labels(labels, n, "labels")
    _check_k(k)
    _check_k(vote_k, "vote_k")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_relevant = counts[inverse.reshape(-1)] - (1 if exclude_self else 0)
    exclude = np.arange(n) if exclude_self else None
    if exclude_self and n < 2:
        return _ranking_metrics(
            np.empty((n, 0)), np.empty((n, 0), dtype=np.int64), labels, labels, n_relevant, k, vote_k
        )
    D, I = rank_neighbours(x, x, max(k, vote_k), exclude=exclude)
    return _ranking_metrics(D, I, labels, labels, n_relevant, k, vote_k)


# --------------------------------------------------------------------------- identification


def _centroid_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Cosine similarity of each test vector to each class's L2-normalised mean: (n_test, n_classes)."""
    centroids = np.stack([train_x[train_y == c].astype(np.float64).mean(axis=0) for c in classes])
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = centroids / np.maximum(norms, 1e-12)
    return test_x.astype(np.float64) @ centroids.T


def _logreg_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: np.ndarray, seed: int
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(train_x, train_y)
    assert np.array_equal(model.classes_, classes), "sklearn class order differs from np.unique"
    return model.predict_proba(test_x)


def identification_metrics(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classifier: Literal["centroid", "logreg"] = "centroid",
    topk: Sequence[int] = (1, 2, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """Singer identification of held-out songs: top-k accuracies and macro-F1.

    train_x (n_train, d), test_x (n_test, d) L2-normalised; train_y, test_y their
    singer labels. ``classifier="centroid"`` scores each singer by the cosine between
    the test vector and the L2-normalised mean of that singer's training vectors;
    ``"logreg"`` uses scikit-learn's LogisticRegression probabilities. Singers are
    ranked by score, ties by label order (np.unique). ``top{k}`` is the fraction of
    test songs whose singer is among the k best; ``macro_f1`` is
    sklearn.metrics.f1_score(test_y, top-1 predictions, average="macro") over the
    labels that occur in the truth or the predictions (zero_division=0).
    Every test singer must occur in train (see :func:`split_by_song`).
    """
    from sklearn.metrics import f1_score

    train_x = _check_vectors(train_x, "train_x")
    test_x = _check_vectors(test_x, "test_x")
    assert train_x.shape[1] == test_x.shape[1], f"train dim {train_x.shape[1]} != test dim {test_x.shape[1]}"
    train_y = _check_labels(train_y, train_x.shape[0], "train_y")
    test_y = _check_labels(test_y, test_x.shape[0], "test_y")
    for k in topk:
        _check_k(k, "topk entries")
    if test_x.shape[0] == 0:
        raise ValueError("test set is empty: nothing to identify")
    classes = np.unique(train_y)
    unknown = np.setdiff1d(np.unique(test_y), classes)
    if unknown.size:
        raise ValueError(
            f"{unknown.size} test singers have no training song (e.g. {unknown[:5].tolist()}); "
            f"split with recsys.evaluation.split_by_song so every test singer is in train"
        )
    if classifier == "centroid":
        scores = _centroid_scores(train_x, train_y, test_x, classes)
    elif classifier == "logreg":
        if classes.size < 2:
            raise ValueError("logreg needs at least 2 singers in train, got 1; use classifier='centroid'")
        scores = _logreg_scores(train_x, train_y, test_x, classes, seed)
    else:
        raise ValueError(f"unknown classifier {classifier!r}; valid: 'centroid', 'logreg'")
    order = np.argsort(-scores, axis=1, kind="stable")  # (n_test, n_classes), ties by label order
    truth = np.searchsorted(classes, test_y)
    hit_rank = np.argmax(order == truth[:, None], axis=1)  # 0-based rank of the true singer
    predicted = classes[order[:, 0]]
    out: dict[str, Any] = {f"top{k}": float((hit_rank < k).mean()) for k in topk}
    out["macro_f1"] = float(f1_score(test_y, predicted, average="macro", zero_division=0))
    out["n_test"] = int(test_x.shape[0])
    out["n_classes"] = int(classes.size)
    return out


# --------------------------------------------------------------------------- splits and tables


def split_by_song(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out songs per singer: labels (n,) singer of each song -> (train_idx, test_idx), sorted.

    Each singer with m >= 2 songs puts round(test_fraction * m) of them in test, at
    least 1 and at most m - 1, so every singer in test also has a training song.
    Singers with one song stay in train. Deterministic for given labels and seed.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array (one singer per song), got shape {labels.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for singer in np.unique(labels):
        songs = np.flatnonzero(labels == singer)
        m = songs.size
        if m < 2:
            continue
        n_test = min(m - 1, max(1, int(np.floor(test_fraction * m + 0.5))))
        test.append(rng.choice(songs, size=n_test, replace=False))
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_idx.astype(np.int64)


def _cell(value: Any, float_digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{float(value):.{float_digits}f}"
    return str(value)


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str | tuple[str, str]], float_digits: int = 3
) -> str:
    """Plain-text table: one line per row dict, one column per key.

    `columns` are keys, or (key, header) pairs for a nicer header ("p_at_1", "P@1").
    Floats print with `float_digits` decimals; numbers are right-aligned, text left.
    A key missing from a row (or None) prints as "-"; a key in no row is an error.
    """
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    for key in keys:
        if rows and not any(key in row for row in rows):
            raise KeyError(
                f"column {key!r} is in no row; keys present: {sorted({k for r in rows for k in r})}"
            )
    cells = [[_cell(row.get(key), float_digits) for key in keys] for row in rows]
    numeric = [
        all(isinstance(row.get(key), (int, float, np.number)) or row.get(key) is None for row in rows)
        for key in keys
    ]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
