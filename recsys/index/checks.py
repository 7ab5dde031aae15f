"""Input checks shared by every index kind: ids, vector batches, queries.

They run once, in :class:`recsys.index.VectorIndex`, so each kind receives unique
int64 ids >= 0 and contiguous (n, d) float32 L2-normalised rows.
"""

from __future__ import annotations

import numpy as np

NORM_TOL = 1e-3  # |norm - 1| above this means the caller forgot to normalise


def check_ids(ids: np.ndarray, name: str = "ids") -> np.ndarray:
    """(n,) integer song ids >= 0 -> contiguous int64 (-1 is reserved for 'no result')."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer song ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks 'no result'), got {int(ids.min())}")
    return np.ascontiguousarray(ids)


def check_vectors(x: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    """(n, d) finite float32 rows -> contiguous; `d` None accepts any width."""
    x = np.asarray(x)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype} (convert with .astype(np.float32))")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(x)


def check_normalised(ids: np.ndarray, xb: np.ndarray) -> None:
    """Inner product is cosine only on unit rows: name the first row that is not one."""
    norms = np.linalg.norm(xb, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > NORM_TOL)
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"xb must be L2-normalised (inner product = cosine); {bad.size} rows are not, "
            f"first: id {int(ids[i])} with norm {norms[i]:.4f}"
        )


def check_batch(ids: np.ndarray, xb: np.ndarray, d: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(n,) unique ids and their (n, d) unit vectors, checked and made contiguous."""
    ids = check_ids(ids)
    xb = check_vectors(xb, "xb", d)
    if len(ids) != len(xb):
        raise ValueError(f"ids has shape {ids.shape} but xb has shape {xb.shape}: one id per row")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ValueError(f"ids repeat within one batch: {dup[:10].tolist()} ({dup.size} repeated)")
    check_normalised(ids, xb)
    return ids, xb
