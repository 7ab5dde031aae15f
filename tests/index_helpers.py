"""References for the index tests and bench/bench_index.py: exact search, recall, seeded data.

Approximate indexes are judged against :func:`exact_search`, a plain brute force
independent of faiss, on :func:`synthetic_dataset`, clustered like a song catalog.
"""

from __future__ import annotations

import math

import numpy as np


def exact_search(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product reference: (n, d) xb with (n,) ids, (nq, d) xq -> D, I of shape (nq, k).

    Padded with D=-inf, I=-1 where k > n. Ties are broken by position in xb.
    """
    assert xb.ndim == 2 and xq.ndim == 2 and xb.shape[1] == xq.shape[1], (xb.shape, xq.shape)
    assert ids.shape == (xb.shape[0],), (ids.shape, xb.shape)
    nq, n = xq.shape[0], xb.shape[0]
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return D, I
    S = xq.astype(np.float32) @ xb.astype(np.float32).T  # (nq, n)
    top = np.argsort(-S, axis=1, kind="stable")[:, :kk]
    D[:, :kk] = np.take_along_axis(S, top, axis=1)
    I[:, :kk] = np.asarray(ids, dtype=np.int64)[top]
    return D, I


def recall_at_k(I_approx: np.ndarray, I_exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k ids that the approximate top-k also returns (-1 ignored)."""
    assert I_approx.shape[0] == I_exact.shape[0], (I_approx.shape, I_exact.shape)
    assert I_approx.shape[1] >= k and I_exact.shape[1] >= k, (I_approx.shape, I_exact.shape, k)
    hits = total = 0
    for a, e in zip(I_approx[:, :k], I_exact[:, :k]):
        e = e[e >= 0]
        hits += np.isin(e, a[a >= 0]).sum()
        total += e.size
    return float(hits / total) if total else 1.0


def synthetic_dataset(n: int, nq: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded clustered vectors like a song catalog: (n, d) xb and (nq, d) xq, float32, L2-normalised.

    Not completely random but still challenging: genres -> singers -> songs in a
    32-dimensional latent space projected to d, plus isotropic noise. Queries are
    new songs of the same singers. Songs of one singer overlap with neighbours,
    so IVF needs several probes to reach recall@10 of 0.95.
    """
    catalog = SyntheticCatalog(n, d, seed)
    return catalog.draw(n), catalog.draw(nq)


class SyntheticCatalog:
    """The model behind :func:`synthetic_dataset`, drawn from in chunks (a 10M-song catalog does not fit
    in memory as float32 at once). ``draw`` calls in the order xb, xq give synthetic_dataset's arrays."""

    def __init__(self, n: int, d: int, seed: int = 0) -> None:
        self.rng = rng = np.random.default_rng(seed)
        self.latent = latent = min(32, d)
        self.d = d
        n_singers = max(1, n // 16)
        n_genres = max(1, int(math.sqrt(n_singers)))
        self.proj = rng.standard_normal((latent, d), dtype=np.float32) / math.sqrt(latent)
        genres = rng.standard_normal((n_genres, latent), dtype=np.float32)
        self.singers = genres[rng.integers(0, n_genres, n_singers)]
        self.singers += 0.7 * rng.standard_normal((n_singers, latent), dtype=np.float32)

    def draw(self, m: int) -> np.ndarray:
        """(m, d) new songs of random singers."""
        rng = self.rng
        z = self.singers[rng.integers(0, len(self.singers), m)] + rng.standard_normal((m, self.latent), dtype=np.float32)
        x = z @ self.proj + 0.1 * rng.standard_normal((m, self.d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32, copy=False)


def song_ids(n: int, seed: int = 1) -> np.ndarray:
    """Sparse, shuffled song ids: never equal to row positions, so a position/id mix-up shows."""
    return np.random.default_rng(seed).choice(10 * n, n, replace=False).astype(np.int64) + 1000
