"""2-D maps of the catalog: UMAP projections of singer and song vectors, persisted per model version.

    proj = Projection(n_neighbors=15, min_dist=0.1, seed=0).fit(x)   # x (n, d) -> proj.embedding_ (n, 2)
    xy = proj.transform(xq)                                          # (nq, d) -> (nq, 2)

Fitting uses umap-learn. Placing new points (`transform`) does not: a query goes to the
fuzzy-membership-weighted mean of the map positions of its nearest fitted points, which is how
UMAP's own `transform` initialises them, without its extra optimisation epochs. That keeps it
deterministic, exact for points already on the map, and free of umap's numba compilation
(tens of seconds in a fresh process), so a saved map answers queries without importing umap.

Tiny catalogs still get a map: n_neighbors is clamped below n, and up to 3 points are laid
out by PCA instead (UMAP needs a neighbourhood graph); `note_` says which happened.

Saved maps live under <workspace>/projections/<model_version>/<what>-<weighting>.npz, with
the rows they were fitted on, so :func:`load_or_fit` refits exactly when those rows change.
The jobs that change a pair's vectors (re-embedding, ingest with embedding) end with
:func:`fit_default_maps`, so the explorer's first visitor loads maps instead of fitting them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from recsys.embedding import Vectors, Weights, fuse

if TYPE_CHECKING:
    from recsys.api import Recommender

MapKind = Literal["singers", "songs"]
Weighting = Literal["fused", "timbre", "melody"]
MAP_KINDS: tuple[str, ...] = ("singers", "songs")
WEIGHTINGS: tuple[str, ...] = ("fused", "timbre", "melody")
FIRST_PAGE_MAPS: tuple[tuple[str, str], ...] = (
    ("singers", "fused"),
)  # (what, weighting) the explorer opens on
PCA_MAX_POINTS = 3  # up to this many points, the map is PCA's (UMAP needs a neighbourhood graph)
_FORMAT = 1  # version of the saved file layout


class Projection:
    """UMAP to 2-D with an estimator API: fit on catalog vectors, transform queries, save and load.

    After `fit`: embedding_ (n, 2) float32 map positions, method_ ("umap" or "pca"),
    n_neighbors_ (the value used after clamping), note_ (why it differs from what was asked, or None).
    """

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.seed = seed

    def _validate_parameters(self) -> None:
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, (int, np.integer)):
            # ValueError for every bad hyperparameter, as umap and scikit-learn estimators raise
            raise ValueError(f"n_neighbors must be an integer >= 2, got {self.n_neighbors!r}")  # noqa: TRY004
        if self.n_neighbors < 2:
            raise ValueError(
                f"n_neighbors must be >= 2 (a point and at least one neighbour), got {self.n_neighbors}"
            )
        if not isinstance(self.min_dist, (int, float, np.floating)) or not 0.0 <= float(self.min_dist) <= 1.0:
            raise ValueError(
                f"min_dist must be a number in [0, 1] (UMAP's spread is 1), got {self.min_dist!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def params(self) -> dict:
        return {
            "n_neighbors": int(self.n_neighbors),
            "min_dist": float(self.min_dist),
            "seed": int(self.seed),
        }

    def fit(self, x: np.ndarray) -> Projection:
        """x (n, d) finite rows, n >= 1 -> self, with embedding_ (n, 2)."""
        self._validate_parameters()
        x = _check_rows(x, "x")
        n = len(x)
        self.x_ = x
        self.note_: str | None = None
        self.n_neighbors_ = int(self.n_neighbors)
        if n <= PCA_MAX_POINTS:
            self.method_ = "pca"
            self.n_neighbors_ = max(1, n - 1)
            self.note_ = f"only {n} point{'s' if n > 1 else ''}: laid out by PCA instead of UMAP"
            self.mean_, self.components_ = _pca_2d(x)
            self.embedding_ = ((x - self.mean_) @ self.components_.T).astype(np.float32)
            return self
        if n < self.n_neighbors + 2:
            self.n_neighbors_ = n - 2
            self.note_ = (
                f"only {n} points: n_neighbors clamped from {self.n_neighbors} to {self.n_neighbors_}"
            )
        self.method_ = "umap"
        self.embedding_ = _umap_fit(x, self.n_neighbors_, float(self.min_dist), int(self.seed))
        return self

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).embedding_

    def transform(self, xq: np.ndarray) -> np.ndarray:
        """xq (nq, d) -> (nq, 2): where new points sit on the fitted map.

        A row equal to a fitted row lands exactly on it; others go to the weighted mean of
        their n_neighbors_ nearest fitted points' positions (UMAP's fuzzy membership weights).
        """
        if not hasattr(self, "embedding_"):
            raise RuntimeError(
                "this Projection is not fitted yet: call fit(x) or Projection.load(path) first"
            )
        xq = _check_rows(xq, "xq", allow_empty=True)
        if xq.shape[1] != self.x_.shape[1]:
            raise ValueError(f"xq has {xq.shape[1]} columns but the map was fitted on {self.x_.shape[1]}")
        if self.method_ == "pca":
            return ((xq - self.mean_) @ self.components_.T).astype(np.float32)
        return _knn_place(self.x_, self.embedding_, xq, self.n_neighbors_)

    # Persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the fitted map (positions, fitted rows, parameters, `meta`) to an .npz, atomically."""
        if not hasattr(self, "embedding_"):
            raise RuntimeError("cannot save a Projection that is not fitted")
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"a projection is saved as .npz, got {path}")
        header = {
            "format": _FORMAT,
            "params": self.params,
            "method": self.method_,
            "n_neighbors_": self.n_neighbors_,
            "note": self.note_,
            "meta": meta or {},
        }
        arrays = {"embedding": self.embedding_, "x": self.x_}
        if self.method_ == "pca":
            arrays.update(mean=self.mean_, components=self.components_)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.array(json.dumps(header)), **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        """A fitted Projection from `save`; ValueError names the file when it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {k: data[k] for k in data.files if k != "header"}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a saved projection ({e})") from e
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path}: projection format {header.get('format')!r}, expected {_FORMAT}")
        proj = cls(**header["params"])
        proj.method_ = header["method"]
        proj.n_neighbors_ = int(header["n_neighbors_"])
        proj.note_ = header["note"]
        proj.meta_ = header["meta"]
        proj.embedding_ = arrays["embedding"]
        proj.x_ = arrays["x"]
        if proj.method_ == "pca":
            proj.mean_, proj.components_ = arrays["mean"], arrays["components"]
        return proj


def _check_rows(x: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {x.shape}")
    if (len(x) == 0 and not allow_empty) or x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(
            f"{name} holds NaN or infinite values (row {int(np.argmax(~np.isfinite(x).all(1)))})"
        )
    return x


def _pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) -> (mean (d,), components (2, d)); missing components are zero rows.

    Signs are fixed (largest loading positive) so the same rows always give the same map.
    """
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = np.zeros((2, x.shape[1]), np.float32)
    for i in range(min(2, len(s))):
        if s[i] > 1e-6 * max(float(s[0]), 1e-12):
            v = vt[i]
            components[i] = v * np.sign(v[np.argmax(np.abs(v))])
    return mean.astype(np.float32), components


def _umap_fit(x: np.ndarray, n_neighbors: int, min_dist: float, seed: int) -> np.ndarray:
    import umap  # slow to import (numba); only fitting needs it

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="euclidean",
        random_state=seed,
        n_jobs=1,
        transform_seed=seed,
    )
    with warnings.catch_warnings():
        # A clustered catalog's graph is often disconnected; UMAP warns but lays it out fine.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return reducer.fit_transform(x).astype(np.float32)


def _knn_place(xb: np.ndarray, yb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """Fitted rows xb (n, d) at positions yb (n, 2); queries xq (nq, d) -> (nq, 2)."""
    if len(xq) == 0:
        return np.zeros((0, 2), np.float32)
    k = max(1, min(k, len(xb)))
    xb64, xq64 = xb.astype(np.float64), xq.astype(np.float64)  # float64: an exact match gives ~0, not ~1e-4
    d2 = (xq64**2).sum(1)[:, None] - 2.0 * xq64 @ xb64.T + (xb64**2).sum(1)[None, :]  # (nq, n)
    dist = np.sqrt(np.maximum(d2, 0.0))
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]  # (nq, k)
    dk = np.take_along_axis(dist, idx, axis=1)
    w = _membership(dk)  # (nq, k)
    exact = dk[:, 0] <= 1e-6
    w[exact] = 0.0
    w[exact, 0] = 1.0
    w /= w.sum(1, keepdims=True)
    return np.einsum("qk,qkc->qc", w, yb[idx]).astype(np.float32)


def _membership(dk: np.ndarray, n_iter: int = 64) -> np.ndarray:
    """UMAP's smooth_knn_dist for sorted neighbour distances dk (nq, k) -> weights (nq, k) in (0, 1].

    rho is the nearest distance; sigma is found by bisection so that the weights of the
    other neighbours, exp(-(d - rho) / sigma), sum to log2(k).
    """
    nq, k = dk.shape
    if k == 1:
        return np.ones_like(dk)
    rho = dk[:, :1]
    excess = np.maximum(dk - rho, 0.0)
    target = math.log2(k)
    lo, hi = np.zeros(nq), np.full(nq, np.inf)
    sigma = np.ones(nq)
    for _ in range(n_iter):
        total = np.exp(-excess[:, 1:] / sigma[:, None]).sum(1)
        too_big = total > target
        hi = np.where(too_big, sigma, hi)
        lo = np.where(too_big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    sigma = np.maximum(sigma, 1e-3 * max(float(dk.mean()), 1e-12))  # UMAP's MIN_K_DIST_SCALE floor
    return np.exp(-excess / sigma[:, None])


# Catalog maps ------------------------------------------------------------------------------------


def map_rows(vectors: Vectors, weighting: str, fused_weights: Weights) -> np.ndarray:
    """The rows a map of `weighting` is fitted on: timbre (n, Dt), melody (n, Dm) or fused (n, Dt + Dm)."""
    if weighting == "timbre":
        return vectors.timbre
    if weighting == "melody":
        return vectors.melody
    if weighting == "fused":
        return fuse(vectors.timbre, vectors.melody, fused_weights)
    raise ValueError(f"unknown map weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def projection_path(workspace: str | Path, model_version: str, what: str, weighting: str) -> Path:
    """<workspace>/projections/<model_version>/<what>-<weighting>.npz"""
    if what not in MAP_KINDS:
        raise ValueError(f"unknown map {what!r}; valid: {', '.join(MAP_KINDS)}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown map weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    return Path(workspace) / "projections" / model_version / f"{what}-{weighting}.npz"


@dataclass(frozen=True)
class CatalogMap:
    """A fitted map and the keys (song ids or singer names) of its rows, in order."""

    projection: Projection
    keys: list
    status: str  # "loaded", or "fitted" with the reason


def load_or_fit(
    path: str | Path, keys: list, x: np.ndarray, model_version: str, params: Projection | None = None
) -> CatalogMap:
    """The map saved at `path` when it was fitted on exactly these rows and parameters; else fit and save it.

    keys: one str/int per row of x (n, d). `params` is an unfitted Projection holding the
    hyperparameters (default: Projection()).
    """
    path = Path(path)
    params = params or Projection()
    params._validate_parameters()
    x = _check_rows(x, "x")
    if len(keys) != len(x):
        raise ValueError(f"{len(keys)} keys for {len(x)} rows: they must be aligned")
    keys = [k.item() if isinstance(k, np.generic) else k for k in keys]
    reason = "no saved map"
    if path.exists():
        try:
            saved = Projection.load(path)
            reason = _stale(saved, keys, x, model_version, params)
        except ValueError as e:
            reason = f"unreadable saved map ({e})"
        if reason is None:
            return CatalogMap(saved, keys, "loaded")
    proj = Projection(**params.params).fit(x)
    proj.save(path, meta={"model_version": model_version, "keys": keys})
    return CatalogMap(proj, keys, f"fitted ({reason})")


def _stale(
    saved: Projection, keys: list, x: np.ndarray, model_version: str, params: Projection
) -> str | None:
    meta = getattr(saved, "meta_", {})
    if meta.get("model_version") != model_version:
        return f"saved for model {meta.get('model_version')}"
    if saved.params != params.params:
        return "parameters changed"
    if meta.get("keys") != keys or saved.x_.shape != x.shape or not np.array_equal(saved.x_, x):
        return "catalog vectors changed"
    return None


def fit_default_maps(
    rec: Recommender, maps: tuple[tuple[str, str], ...] = FIRST_PAGE_MAPS
) -> list[CatalogMap]:
    """Fit and save (or find up to date) the maps the explorer's first page shows, for `rec`'s pair.

    Called by the jobs that change the vectors, after them: fitting UMAP takes the
    numba compilation plus the fit, which a first page load must not wait for.
    """
    return [rec.catalog_map(what, weighting)[0] for what, weighting in maps]


def cluster_labels(x: np.ndarray, n_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """x (n, d) -> (n,) int cluster ids by k-means; default about sqrt(n / 2) clusters, 2..10."""
    from sklearn.cluster import KMeans

    x = _check_rows(x, "x")
    n = len(x)
    if n_clusters is None:
        n_clusters = int(np.clip(round(math.sqrt(n / 2)), 2, 10))
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    n_clusters = min(n_clusters, n)
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)


__all__ = [
    "FIRST_PAGE_MAPS",
    "MAP_KINDS",
    "WEIGHTINGS",
    "CatalogMap",
    "Projection",
    "cluster_labels",
    "fit_default_maps",
    "load_or_fit",
    "map_rows",
    "projection_path",
]
