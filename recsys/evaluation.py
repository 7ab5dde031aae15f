"""Retrieval and identification metrics on embedding arrays, and the song split (faiss contrib style).

Plain functions on arrays: `xq` (nq, d) query vectors, `xb` (nb, d) base (gallery)
vectors, L2-normalised so that the inner product is the cosine; `yq`, `yb` their
labels (singers or melody ids, any comparable dtype). No database, no training, no
printing: the studies (recsys.studies), the trainers' validation and the bench
scripts call these and print `format_table`.

Conventions used by every function here:

* Neighbours are ranked by decreasing cosine similarity, computed in float64;
  equal similarities are ranked by increasing base index, so results are deterministic.
* A query with no relevant item in the gallery (a singer with one song, when the
  query's own song is excluded) is left out of the means and counted in ``n_no_relevant``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np

NORM_TOLERANCE = 1e-3  # |‖x‖ - 1| allowed for "L2-normalised" inputs (float32 rounding)
BLOCK_ELEMENTS = 1 << 22  # similarities ranked at once (32 MB of float64): queries are ranked in blocks

T = TypeVar("T")
SplitMode = Literal["validation", "per_singer"]


# --------------------------------------------------------------------------- checks


def _as_array(x: Any) -> np.ndarray:
    """numpy arrays as they are; torch tensors (any device, with or without grad) as CPU numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_vectors(x: Any, name: str) -> np.ndarray:
    x = _as_array(x)
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
    y = np.asarray(list(y) if not isinstance(y, np.ndarray) else y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the vectors, got {y.shape}")
    return y


def _check_k(k: int, name: str = "k") -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


def _check_exclude(exclude: Any, nq: int, nb: int) -> np.ndarray:
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if exclude.shape[0] != nq or exclude.max(initial=-1) >= nb or exclude.min(initial=-1) < -1:
        raise ValueError(f"exclude needs one gallery row (or -1) per query: got {exclude.shape[0]} "
                         f"for {nq} queries and a gallery of {nb}")
    return exclude


# --------------------------------------------------------------------------- ranking


def _rank_blocks(xq: np.ndarray, xb: np.ndarray, exclude: np.ndarray | None):
    """Yield (start, sims (block, nb) float64, order (block, nb)) with every base row ranked.

    order[r] lists base rows by (-similarity, index); a query's excluded row gets
    similarity -inf and so comes last.
    """
    nb = xb.shape[0]
    xb64 = xb.astype(np.float64)
    block = max(1, BLOCK_ELEMENTS // max(nb, 1))
    for start in range(0, xq.shape[0], block):
        stop = min(start + block, xq.shape[0])
        sims = xq[start:stop].astype(np.float64) @ xb64.T  # (block, nb)
        if exclude is not None:
            rows = np.arange(stop - start)
            cols = exclude[start:stop]
            keep = cols >= 0
            sims[rows[keep], cols[keep]] = -np.inf
        yield start, sims, np.argsort(-sims, axis=1, kind="stable")


def rank_neighbours(
    xq: np.ndarray, xb: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN with deterministic ties: (nq, d), (nb, d) -> D (nq, k'), I (nq, k').

    `exclude` (nq,) gives, per query, one base index to leave out (the query itself
    when queries are the base), or -1 for none. k' = min(k, nb - 1 if exclude is given
    else nb). Ties in similarity are ranked by increasing base index.
    """
    nq, d = xq.shape
    nb, db = xb.shape
    assert d == db, f"query dim {d} != base dim {db}"
    _check_k(k)
    k_eff = min(k, nb - 1 if exclude is not None else nb)
    if k_eff < 1:
        raise ValueError(f"the gallery has {nb} items: nothing to rank after excluding the query itself")
    D = np.empty((nq, k_eff), dtype=np.float64)
    I = np.empty((nq, k_eff), dtype=np.int64)
    for start, sims, order in _rank_blocks(xq, xb, exclude):
        top = order[:, :k_eff]
        I[start : start + len(top)] = top
        D[start : start + len(top)] = np.take_along_axis(sims, top, axis=1)
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


# --------------------------------------------------------------------------- retrieval


def retrieval_metrics(
    xq: Any,
    xb: Any,
    yq: Sequence[Any] | np.ndarray,
    yb: Sequence[Any] | np.ndarray,
    exclude: Sequence[int] | np.ndarray | None = None,
    *,
    k: int = 10,
    vote_k: int = 5,
) -> dict[str, Any]:
    """Retrieval of each query among the base vectors: P@1, mAP@k, MAP@R, mAP and the top-k vote.

    xq (nq, d), xb (nb, d) L2-normalised (numpy or torch); yq (nq,), yb (nb,) labels.
    A base item is relevant to a query when it has the query's label. `exclude` (nq,):
    per query, one base row it must neither retrieve nor count as relevant, or -1 for
    none: ``exclude=range(n)`` with xq = xb is leave-one-out within one set; the index
    of a perturbed query's clean original keeps it from finding itself.

    For a query with R relevant items and ranked base items r_1, r_2, ... (rel_i = 1
    when r_i is relevant, P@i = (rel_1 + ... + rel_i) / i):

    * ``p_at_1``: rel_1 (is the nearest neighbour relevant?).
    * ``map_at_k``: AP@k = (1 / min(k, R)) * sum_{i<=k} rel_i * P@i: a perfect ranking
      scores 1 whether R < k or R > k.
    * ``map_at_r``: AP@R = (1 / R) * sum_{i<=R} rel_i * P@i (pytorch-metric-learning's
      mean_average_precision_at_r).
    * ``map``: the average precision over the whole ranking, (1 / R) * sum_i rel_i * P@i.
    * ``vote_acc``: the label most frequent among the `vote_k` nearest (ties: higher
      summed similarity, then the label met first in the ranking) is the query's.

    Each is a mean over the queries with R > 0 (``n_queries``); the others are counted
    in ``n_no_relevant``, and every mean is NaN when no query has a relevant item.
    Returns also ``k`` and ``vote_k``.
    """
    xq = _check_vectors(xq, "xq")
    xb = _check_vectors(xb, "xb")
    assert xq.shape[1] == xb.shape[1], f"xq dim {xq.shape[1]} != xb dim {xb.shape[1]}"
    nq, nb = xq.shape[0], xb.shape[0]
    yq = _check_labels(yq, nq, "yq")
    yb = _check_labels(yb, nb, "yb")
    _check_k(k)
    _check_k(vote_k, "vote_k")
    if nb == 0:
        raise ValueError("the gallery xb is empty: nothing to retrieve")
    labels, counts = np.unique(yb, return_counts=True)
    pos = np.searchsorted(labels, yq).clip(0, len(labels) - 1)
    n_relevant = np.where(labels[pos] == yq, counts[pos], 0)
    if exclude is not None:
        exclude = _check_exclude(exclude, nq, nb)
        n_relevant = n_relevant - ((exclude >= 0) & (yb[exclude.clip(0)] == yq))
    width = nb - 1 if exclude is not None else nb  # ranked items a query can retrieve

    out: dict[str, Any] = {"k": int(k), "vote_k": int(vote_k), "n_queries": int((n_relevant > 0).sum()),
                           "n_no_relevant": int((n_relevant <= 0).sum())}
    names = ("p_at_1", "map_at_k", "map_at_r", "map", "vote_acc")
    if out["n_queries"] == 0:
        return {**out, **dict.fromkeys(names, float("nan"))}
    if width < 1:
        raise ValueError(f"the gallery has {nb} items: nothing to rank after excluding each query's own row")
    sums = dict.fromkeys(names, 0.0)
    ranks = np.arange(1, width + 1)
    for start, sims, order in _rank_blocks(xq, xb, exclude):
        stop = start + len(order)
        evaluated = np.flatnonzero(n_relevant[start:stop] > 0)
        order, sims = order[evaluated, :width], sims[evaluated]
        r = n_relevant[start:stop][evaluated]  # (n,)
        rel = yb[order] == yq[start:stop][evaluated, None]  # (n, width) in rank order
        precise = np.cumsum(rel, axis=1) / ranks * rel  # rel_i * P@i
        sums["p_at_1"] += float(rel[:, 0].sum())
        sums["map_at_k"] += float((precise[:, :k].sum(axis=1) / np.minimum(k, r)).sum())
        sums["map_at_r"] += float((np.where(ranks <= r[:, None], precise, 0.0).sum(axis=1) / r).sum())
        sums["map"] += float((precise.sum(axis=1) / r).sum())
        top = order[:, :vote_k]
        sums["vote_acc"] += float(sum(
            _majority_vote(yb[top[q]], np.take(sims[q], top[q])) == yq[start + evaluated[q]]
            for q in range(len(evaluated))
        ))
    return {**out, **{name: value / out["n_queries"] for name, value in sums.items()}}


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
    Every test singer must occur in train (see :func:`split_by_song`, mode "per_singer").
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
            f"split with recsys.evaluation.split_by_song(..., mode='per_singer') so every test singer is in train"
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


# --------------------------------------------------------------------------- splits


def split_by_song(
    songs: Sequence[T],
    fraction: float,
    seed: int = 0,
    *,
    mode: SplitMode = "validation",
    labels: Sequence[Any] | np.ndarray | None = None,
) -> tuple[list[T], list[T]]:
    """Hold songs out by singer, deterministically: (kept, held out), each in input order.

    `labels` (n,): each song's singer, None for unlabelled; by default each song's
    ``.singer``. Pass ``range(n)`` as `songs` to get index lists. Two rules, for two jobs:

    * ``"per_singer"``, an evaluation split: each singer with m >= 2 songs holds out
      round(fraction * m) of them, at least 1 and at most m - 1, so every held-out singer
      keeps a training song. Singers with one song, and unlabelled songs, stay in.
    * ``"validation"``, a trainer's early-stopping set: round(fraction * n) songs in all,
      taken one per singer with >= 3 songs (in singer order), then a second one from
      singers with >= 4, so a singer is never left with fewer than two songs to learn
      from; unlabelled songs are held out a quarter at a time.
    """
    songs = list(songs)
    labels = [s.singer for s in songs] if labels is None else list(labels)  # type: ignore[attr-defined]
    if len(labels) != len(songs):
        raise ValueError(f"need one label per song, got {len(labels)} labels for {len(songs)} songs")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    if mode == "per_singer":
        held = _held_per_singer(labels, fraction, seed)
    elif mode == "validation":
        held = _held_for_validation(labels, fraction, seed)
    else:
        raise ValueError(f"unknown split mode {mode!r}; valid: 'validation', 'per_singer'")
    return [s for i, s in enumerate(songs) if i not in held], [s for i, s in enumerate(songs) if i in held]


def _held_per_singer(labels: list[Any], fraction: float, seed: int) -> set[int]:
    known = np.array([i for i, y in enumerate(labels) if y is not None], dtype=np.int64)
    y = np.asarray([labels[i] for i in known])
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for singer in np.unique(y):
        songs = known[y == singer]
        m = songs.size
        if m < 2:
            continue
        n_test = min(m - 1, max(1, int(np.floor(fraction * m + 0.5))))
        held.update(int(i) for i in rng.choice(songs, size=n_test, replace=False))
    return held


def _held_for_validation(labels: list[Any], fraction: float, seed: int) -> set[int]:
    import torch

    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    by_singer: dict[Any, list[int]] = {}
    for i in order:
        by_singer.setdefault(labels[i], []).append(i)
    groups = sorted(by_singer.items(), key=lambda kv: str(kv[0]))
    held: set[int] = set()
    target = round(fraction * len(labels))
    for singer, idx in groups:
        if len(held) >= target:
            break
        if singer is None:
            held.update(idx[: max(1, len(idx) // 4)])
        elif len(idx) >= 3:
            held.add(idx[0])
    for singer, idx in groups:  # a second round while the target is not met
        if len(held) >= target:
            break
        if singer is not None and len(idx) >= 4:
            held.add(idx[1])
    return held


# --------------------------------------------------------------------------- tables


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
