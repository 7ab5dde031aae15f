"""Voice attribute probes: a linear classifier on timbre vectors for a categorical metadata column.

A probe answers "does the timbre space encode gender (register, language, genre...)?"
and fills the attribute in for songs that lack it::

    probe = train_attribute_probe(rec, "gender")     # held-out accuracy / macro-F1 vs majority class
    predict_attribute(rec, "gender")                 # Song.predicted["gender"] for unlabelled songs
    attribute_values(rec, "gender")                  # song id -> (value, 'given'|'predicted', confidence)

The classifier is scikit-learn's LogisticRegression on standardised timbre vectors
(class-balanced); the scaling is folded into the coefficients, so a probe is just
``softmax(x @ coef.T + intercept)`` (a sigmoid for two classes) and is stored as JSON
lists, never pickled, under ``<workspace>/probes/<timbre_version>/<attribute>.json``.
It belongs to the timbre model version whose vectors it was fitted on.

Evaluation holds out whole singers when every class has at least two singers (so no
singer's voice is on both sides), else songs (stratified); the stored probe is then
refitted on every labelled song.

Given labels are the user's and are never changed: songs whose metadata holds the
attribute are not predicted. Singer-level predictions (the mean of the probabilities
of the singer's embedded songs) are stored in each predicted song's entry as
``singer_value`` / ``singer_confidence``; singers themselves get nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recsys.api import Recommender

PROBES_DIR = "probes"
FORMAT = 1
MIN_CLASSES = 2
MIN_PER_CLASS = 2  # labelled songs a class needs to be learnt (one to fit, one to test)
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------- the probe


@dataclass
class Probe:
    """A fitted linear probe: classes (C,), coef (C, d) or (1, d) for two classes, intercept (C,) or (1,)."""

    attribute: str
    timbre_version: str
    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64)
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        if len(self.classes) < MIN_CLASSES or self.coef.ndim != 2 or self.coef.shape[0] != rows:
            raise ValueError(
                f"probe {self.attribute!r}: coef of shape {self.coef.shape} does not fit "
                f"{len(self.classes)} classes"
            )
        if self.intercept.shape != (rows,):
            raise ValueError(
                f"probe {self.attribute!r}: intercept of shape {self.intercept.shape}, expected ({rows},)"
            )

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    @property
    def version(self) -> str:
        """Content id: the same coefficients give the same version."""
        blob = json.dumps(
            [
                self.timbre_version,
                self.attribute,
                self.classes,
                self.coef.round(8).tolist(),
                self.intercept.round(8).tolist(),
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, d) timbre vectors -> (n, C) class probabilities, columns in `classes` order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"probe {self.attribute!r} expects (n, {self.dim}) vectors, got shape {x.shape}")
        logits = x @ self.coef.T + self.intercept  # (n, 1) or (n, C)
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(n, d) -> (n labels, (n,) confidence = the winning class's probability)."""
        p = self.predict_proba(x)
        best = p.argmax(axis=1)
        return [self.classes[i] for i in best], p[np.arange(len(p)), best]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "attribute": self.attribute,
            "timbre_version": self.timbre_version,
            "version": self.version,
            "classes": list(self.classes),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "metrics": self.metrics,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"unknown probe format {data.get('format')!r}; this version reads format {FORMAT}"
            )
        return cls(
            data["attribute"],
            data["timbre_version"],
            list(data["classes"]),
            np.asarray(data["coef"]),
            np.asarray(data["intercept"]),
            dict(data.get("metrics", {})),
            float(data.get("created", 0.0)),
        )


def check_attribute_name(attribute: str) -> str:
    """Attribute names become file names: letters, digits, '_', '.', '-' (not leading '.' or '-')."""
    if not _ATTRIBUTE.fullmatch(attribute or ""):
        raise ValueError(f"bad attribute name {attribute!r}: use letters, digits, '_', '.' and '-'")
    return attribute


def probe_path(workspace: Path, timbre_version: str, attribute: str) -> Path:
    return Path(workspace) / PROBES_DIR / timbre_version / f"{check_attribute_name(attribute)}.json"


def save_probe(probe: Probe, workspace: Path) -> Path:
    """Write the probe's JSON atomically (temporary file, then rename) and return its path."""
    path = probe_path(workspace, probe.timbre_version, probe.attribute)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{probe.attribute}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(probe.to_dict(), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_probe(workspace: Path, timbre_version: str, attribute: str) -> Probe:
    """The probe stored for (timbre_version, attribute); FileNotFoundError says how to make one."""
    path = probe_path(workspace, timbre_version, attribute)
    if not path.is_file():
        raise FileNotFoundError(
            f"no {attribute!r} probe for timbre model {timbre_version} (expected {path}); "
            f"run `recsys probe train {attribute}` first"
        )
    try:
        return Probe.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a readable probe file: {e}") from e


def list_probes(workspace: Path) -> list[Probe]:
    """Every stored probe, of any timbre version, sorted by (timbre version, attribute)."""
    root = Path(workspace) / PROBES_DIR
    paths = sorted(root.glob("*/*.json")) if root.is_dir() else []
    out = []
    for path in paths:
        try:
            out.append(Probe.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable probe file: {e}") from e
    return out


# ---------------------------------------------------------------------------- fitting


def usable_classes(labels: list[str], attribute: str) -> list[str]:
    """The classes with >= MIN_PER_CLASS labelled songs; ValueError naming the counts when < MIN_CLASSES."""
    counts = Counter(labels)
    usable = sorted(c for c, n in counts.items() if n >= MIN_PER_CLASS)
    if len(usable) < MIN_CLASSES:
        shown = ", ".join(f"{c!r}: {n}" for c, n in counts.most_common(10)) or "no labelled songs"
        more = f" (and {len(counts) - 10} more classes)" if len(counts) > 10 else ""
        raise ValueError(
            f"attribute {attribute!r} has too few labels for a probe: it needs >= {MIN_CLASSES} classes with "
            f">= {MIN_PER_CLASS} labelled, embedded songs each; found {len(usable)} such classes among "
            f"{len(labels)} labelled songs ({shown}{more})"
        )
    return usable


def _fit(
    x: np.ndarray, y: list[str], classes: list[str], c: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced logistic regression on standardised x; returns (coef, intercept) on raw x."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit((x - mean) / std, y)
    if list(model.classes_) != classes:
        raise AssertionError(f"sklearn classes {list(model.classes_)} != {classes}")
    coef = model.coef_ / std  # w . (x - m) / s = (w / s) . x - (w / s) . m
    intercept = model.intercept_ - coef @ mean
    return coef, intercept


def split_held_out(
    labels: list[str], groups: list[str | None], test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train indices, test indices, 'singer' | 'song').

    By singer when every class has >= 2 singers (a singer counts for the class most of
    its songs have): about `test_fraction` of each class's singers, at least one and
    not all, are held out with all their songs. Else by song, stratified.
    """
    rng = np.random.default_rng(seed)
    labels_a = np.asarray(labels, dtype=object)
    classes = sorted(set(labels))
    singer_class: dict[str, str] = {}
    if all(g is not None for g in groups):
        for g in sorted(set(groups)):  # type: ignore[type-var]
            singer_class[g] = Counter(labels_a[[i for i, x in enumerate(groups) if x == g]]).most_common(1)[
                0
            ][0]
    by_class = {c: sorted(g for g, k in singer_class.items() if k == c) for c in classes}
    if singer_class and all(len(by_class[c]) >= 2 for c in classes):
        held: set[str] = set()
        for c in classes:
            singers = by_class[c]
            n = min(max(1, round(test_fraction * len(singers))), len(singers) - 1)
            held.update(rng.permutation(singers)[:n].tolist())
        test = np.array([g in held for g in groups])
        return np.flatnonzero(~test), np.flatnonzero(test), "singer"
    test_idx = []
    for c in classes:
        idx = np.flatnonzero(labels_a == c)
        n = min(max(1, round(test_fraction * len(idx))), len(idx) - 1)
        test_idx.extend(rng.permutation(idx)[:n].tolist())
    test = np.zeros(len(labels), dtype=bool)
    test[test_idx] = True
    return np.flatnonzero(~test), np.flatnonzero(test), "song"


def _scores(y_true: list[str], y_pred: list[str], classes: list[str]) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return float(accuracy_score(y_true, y_pred)), float(
        f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
    )


def fit_probe(
    x: np.ndarray,
    labels: list[str],
    groups: list[str | None],
    attribute: str,
    timbre_version: str,
    test_fraction: float = 0.25,
    seed: int = 0,
    c: float = 1.0,
) -> Probe:
    """Evaluate on a held-out split, then fit on everything.

    x (n, d) timbre vectors, labels (n,) attribute values, groups (n,) singers (None: unknown).

    Classes with fewer than MIN_PER_CLASS songs are left out (listed in metrics
    ``dropped_classes``). metrics: accuracy and macro-F1 on the held-out songs for the
    probe and for the majority class of the training songs, the split kind and sizes.
    """
    check_attribute_name(attribute)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(labels) or len(labels) != len(groups):
        raise ValueError(
            f"x {x.shape}, labels ({len(labels)}) and groups ({len(groups)}) must have one row per song"
        )
    labels = [str(v) for v in labels]
    classes = usable_classes(labels, attribute)
    keep = np.array([v in classes for v in labels])
    dropped = sorted(set(labels) - set(classes))
    x, labels = x[keep], [v for v, k in zip(labels, keep) if k]
    groups = [g for g, k in zip(groups, keep) if k]

    train, test, split = split_held_out(labels, groups, test_fraction, seed)
    y_train, y_test = [labels[i] for i in train], [labels[i] for i in test]
    metrics: dict[str, Any] = {
        "split": split,
        "n_train": len(train),
        "n_test": len(test),
        "n_labelled": len(labels),
        "class_counts": dict(sorted(Counter(labels).items())),
        "dropped_classes": dropped,
        "test_fraction": test_fraction,
        "seed": seed,
        "C": c,
    }
    if len(set(y_train)) >= MIN_CLASSES:
        coef, intercept = _fit(x[train], y_train, sorted(set(y_train)), c, seed)
        held = Probe(attribute, timbre_version, sorted(set(y_train)), coef, intercept)
        y_pred, _ = held.predict(x[test])
        majority = Counter(y_train).most_common(1)[0][0]
        metrics["accuracy"], metrics["macro_f1"] = _scores(y_test, y_pred, classes)
        metrics["baseline_accuracy"], metrics["baseline_macro_f1"] = _scores(
            y_test, [majority] * len(test), classes
        )
        metrics["baseline_class"] = majority
    coef, intercept = _fit(x, labels, classes, c, seed)
    return Probe(attribute, timbre_version, classes, coef, intercept, metrics, created=time.time())


def probe_transfer(
    x_train: np.ndarray, y_train: list[str], x_test: np.ndarray, y_test: list[str], c: float = 1.0, seed: int = 0
) -> dict[str, float]:
    """Fit on one set of singers, score on another: accuracy and macro-F1, beside the majority class's.

    For studies that compare vector spaces with a fixed split (fit_probe picks its own).
    """
    classes = sorted(set(y_train) | set(y_test))
    coef, intercept = _fit(np.asarray(x_train, np.float64), list(y_train), sorted(set(y_train)), c, seed)
    y_pred, _ = Probe("probe", "study", sorted(set(y_train)), coef, intercept).predict(np.asarray(x_test, np.float64))
    majority = Counter(y_train).most_common(1)[0][0]
    accuracy, macro_f1 = _scores(list(y_test), y_pred, classes)
    base_accuracy, base_f1 = _scores(list(y_test), [majority] * len(y_test), classes)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "majority_accuracy": base_accuracy, "majority_macro_f1": base_f1}


# ---------------------------------------------------------------------------- on a workspace


def _given(meta: dict[str, Any] | None, attribute: str) -> Any:
    value = (meta or {}).get(attribute)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _timbre_vectors(rec: Recommender) -> tuple[np.ndarray, np.ndarray, str]:
    """(song ids (n,), timbre vectors (n, d), timbre version) of every embedded song."""
    ids, vectors = rec.catalog_vectors()
    if len(ids) == 0:
        raise ValueError("no embedded songs: run `recsys train` and `recsys embed` before training a probe")
    t_meta = rec.models.timbre_meta
    return ids, vectors.timbre, t_meta.version


def labelled_columns(rec: Recommender) -> dict[str, int]:
    """Metadata column -> number of songs that have a value for it (a user's choice of attributes)."""
    counts: Counter = Counter()
    for song in rec.songs():
        counts.update(k for k, v in song["metadata"].items() if _given({k: v}, k) is not None)
    return dict(sorted(counts.items()))


def train_attribute_probe(
    rec: Recommender, attribute: str, test_fraction: float = 0.25, seed: int = 0, c: float = 1.0
) -> tuple[Probe, Path]:
    """Fit a probe for metadata column `attribute` on the current timbre vectors and store it.

    `rec` is a recsys.api.Recommender. Returns (probe, path of its JSON file).
    """
    check_attribute_name(attribute)
    ids, xt, timbre_version = _timbre_vectors(rec)
    rows = {row["id"]: row for row in rec.songs()}
    picked = [(i, _given(rows[int(sid)]["metadata"], attribute)) for i, sid in enumerate(ids)]
    picked = [(i, v) for i, v in picked if v is not None]
    if not picked:
        columns = ", ".join(f"{k} ({n})" for k, n in labelled_columns(rec).items()) or "none"
        raise ValueError(f"no embedded song has metadata {attribute!r}; labelled columns (songs): {columns}")
    index = np.array([i for i, _ in picked])
    labels = [str(v) for _, v in picked]
    groups = [rows[int(ids[i])]["singer"] for i in index]
    probe = fit_probe(xt[index], labels, groups, attribute, timbre_version, test_fraction, seed, c)
    return probe, save_probe(probe, rec.settings.workspace)


@dataclass
class PredictionSummary:
    attribute: str
    probe_version: str
    timbre_version: str
    n_predicted: int  # songs whose Song.predicted[attribute] was written
    n_given: int  # songs that have the attribute in their metadata: left alone
    n_not_embedded: int  # songs without a timbre vector: nothing to predict from
    singers: dict[str, dict[str, Any]]  # singer -> {"value", "confidence", "n_songs"}

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def as_text(self) -> str:
        lines = [(f"{self.attribute}: predicted {self.n_predicted} songs, kept {self.n_given} given labels, "
                  f"{self.n_not_embedded} songs not embedded (probe {self.probe_version})")]
        lines += [f"  {name:<24} {p['value']:<12} confidence {p['confidence']:.2f} ({p['n_songs']} songs)"
                  for name, p in self.singers.items()]
        return "\n".join(lines)


def predict_attribute(rec: Recommender, attribute: str) -> PredictionSummary:
    """Predict `attribute` for every embedded song that has no given value and store it in Song.predicted.

    Each entry: {"value", "confidence", "probe", "timbre_version", "singer_value",
    "singer_confidence"}; a song without a singer gets singer_value None. Songs with a
    given value are not touched.
    """
    from recsys import catalog

    ids, xt, timbre_version = _timbre_vectors(rec)
    probe = load_probe(rec.settings.workspace, timbre_version, attribute)
    proba = probe.predict_proba(xt)  # (n, C)
    row_of = {int(sid): i for i, sid in enumerate(ids)}
    with catalog.session_scope(rec.sessions) as s:
        songs = catalog.list_songs(s)
        by_singer: dict[str, list[int]] = {}
        for song in songs:
            if song.singer is not None and song.id in row_of:
                by_singer.setdefault(song.singer.name, []).append(row_of[song.id])
        singers = {}
        for name, rows in sorted(by_singer.items()):
            mean = proba[rows].mean(axis=0)
            best = int(mean.argmax())
            singers[name] = {
                "value": probe.classes[best],
                "confidence": float(mean[best]),
                "n_songs": len(rows),
            }
        n_predicted = n_given = n_missing = 0
        for song in songs:
            if _given(song.meta, attribute) is not None:
                n_given += 1
                continue
            if song.id not in row_of:
                n_missing += 1
                continue
            p = proba[row_of[song.id]]
            best = int(p.argmax())
            singer = singers.get(song.singer.name) if song.singer is not None else None
            song.predicted[attribute] = {
                "value": probe.classes[best],
                "confidence": float(p[best]),
                "probe": probe.version,
                "timbre_version": timbre_version,
                "singer_value": singer["value"] if singer else None,
                "singer_confidence": singer["confidence"] if singer else None,
            }
            n_predicted += 1
    return PredictionSummary(
        attribute, probe.version, timbre_version, n_predicted, n_given, n_missing, singers
    )


def attribute_values(rec: Recommender, attribute: str) -> dict[int, tuple[Any, str, float]]:
    """Song id -> (value, 'given' | 'predicted', confidence) for every song that has one.

    Given metadata wins (confidence 1.0); otherwise the stored prediction. Songs with
    neither are left out. For the explorer's filters and colours.
    """
    out: dict[int, tuple[Any, str, float]] = {}
    from recsys import catalog

    with rec.sessions() as s:
        for song in catalog.list_songs(s):
            given = _given(song.meta, attribute)
            if given is not None:
                out[song.id] = (given, "given", 1.0)
            elif isinstance((song.predicted or {}).get(attribute), dict):
                entry = song.predicted[attribute]
                out[song.id] = (entry["value"], "predicted", float(entry["confidence"]))
    return out
