"""How the timbre and melody similarities of two songs combine into one score.

Raw cosines of the two modalities live on different scales: two renditions of one
melody are far more alike in melody than two songs of one singer are in timbre, so a
small melody weight on raw cosines lets covers outrank voices. Each modality's cosine
is therefore standardised against the catalog's own distribution of that modality's
scores between distinct songs (a z-score), and the weights are shares of that
evidence:

    score = (w_t * (ct - mean_t) / std_t + w_m * (cm - mean_m) / std_m) / (w_t + w_m)

The score is affine in (ct, cm), so one FAISS index of equally weighted vectors
[t, m] / sqrt(2) answers any weighting exactly: the query [a t, b m] * sqrt(2) with
a = w_t / std_t / (w_t + w_m) and b likewise ranks by the same score (`Fusion.query`).

Questions pick the weights: "singer" (who sounds like this voice) is led by timbre,
"melody" (who sings this melody) by melody, "song" (similar songs) fuses both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from recsys.embedding import Weights

if TYPE_CHECKING:
    from recsys.config import FusionConfig
    from recsys.embedding import Vectors

Question = Literal["singer", "song", "melody"]
QUESTIONS: tuple[Question, ...] = ("singer", "song", "melody")
CALIBRATION_PAIRS = 20_000  # random pairs of distinct rows; enough for a mean and spread to 1 %


@dataclass(frozen=True)
class Calibration:
    """Mean and spread of each modality's cosine between distinct catalog items."""

    timbre_mean: float = 0.0
    timbre_std: float = 1.0
    melody_mean: float = 0.0
    melody_std: float = 1.0

    @classmethod
    def fit(cls, vectors: Vectors, max_pairs: int = CALIBRATION_PAIRS, seed: int = 0) -> Calibration:
        """The statistics of (n, D) unit rows over distinct pairs (all of them for small catalogs).

        With fewer than 3 rows there is no distribution to speak of: the identity (raw cosines).
        """
        n = len(vectors)
        if n < 3:
            return cls()
        if n * (n - 1) // 2 <= max_pairs:
            i, j = np.triu_indices(n, k=1)
        else:
            rng = np.random.default_rng(seed)
            i = rng.integers(0, n, max_pairs)
            j = (i + rng.integers(1, n, max_pairs)) % n  # never i itself
        ct = np.einsum("pd,pd->p", vectors.timbre[i], vectors.timbre[j])
        cm = np.einsum("pd,pd->p", vectors.melody[i], vectors.melody[j])
        return cls(float(ct.mean()), _spread(ct), float(cm.mean()), _spread(cm))


def _spread(x: np.ndarray) -> float:
    return max(float(x.std()), 1e-3)  # a catalog of near-identical vectors must not blow the score up


@dataclass(frozen=True)
class Fusion:
    """One question's weights over calibrated similarities: exact scores and index queries."""

    weights: Weights
    calibration: Calibration = Calibration()

    @property
    def _coefficients(self) -> tuple[float, float, float]:
        """(a, b, c) with score = a * ct + b * cm - c."""
        w, cal = self.weights, self.calibration
        total = w.timbre + w.melody
        a, b = w.timbre / cal.timbre_std / total, w.melody / cal.melody_std / total
        return a, b, a * cal.timbre_mean + b * cal.melody_mean

    def scores(self, ct: np.ndarray, cm: np.ndarray) -> np.ndarray:
        """Fused scores from the timbre and melody cosines (any matching shapes)."""
        a, b, c = self._coefficients
        return (a * np.asarray(ct) + b * np.asarray(cm) - c).astype(np.float32)

    def query(self, timbre: np.ndarray, melody: np.ndarray) -> np.ndarray:
        """(nq, Dt), (nq, Dm) -> (nq, Dt + Dm) queries whose inner product with INDEX_WEIGHTS-fused
        vectors ([t, m] / sqrt(2)) is a * ct + b * cm: the score up to a constant, so the same ranking."""
        a, b, _ = self._coefficients
        return (np.concatenate([a * timbre, b * melody], axis=1) * np.sqrt(2.0)).astype(np.float32)


def ranking_rows(vectors: Vectors, fusion: Fusion) -> np.ndarray:
    """(n, Dt + Dm) unit rows [sqrt(a) t, sqrt(b) m] / sqrt(a + b) whose inner products
    (a * ct + b * cm) / (a + b) rank pairs as `fusion` scores them: a symmetric form for studies that
    compare rows with rows (cosine metrics)."""
    a, b, _ = fusion._coefficients
    rows = np.concatenate([np.sqrt(a) * vectors.timbre, np.sqrt(b) * vectors.melody], axis=1)
    return (rows / np.sqrt(a + b)).astype(np.float32)


def question_weights(cfg: FusionConfig, question: Question) -> Weights:
    """The configured weights of one question."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; valid: {', '.join(QUESTIONS)}")
    w = getattr(cfg, question)
    return Weights(w.timbre, w.melody)
