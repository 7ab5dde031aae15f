"""Audio -> timbre and melody vectors, with the encoders of one model pair.

A song's two vectors are kept apart (`Vectors`); the index stores them equally
weighted and concatenated (INDEX_WEIGHTS), and a search weighs the two
similarities at query time (recsys.fusion). `fuse` gives the concatenated vector
normalise(w_timbre * timbre ++ w_melody * melody) that maps and exports use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from recsys.config import AudioConfig, FeatureConfig
from recsys.features import SongFeatures, song_features

if TYPE_CHECKING:
    from recsys.registry import Models
    from recsys.separation import Separator


@dataclass(frozen=True)
class Weights:
    timbre: float = 0.7
    melody: float = 0.3

    def __post_init__(self) -> None:
        if self.timbre < 0 or self.melody < 0 or self.timbre + self.melody == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got timbre={self.timbre}, melody={self.melody}")

    @classmethod
    def parse(cls, text: str) -> Weights:
        """'timbre=0.7,melody=0.3' (either may be left out: it is then 0)."""
        values = {"timbre": 0.0, "melody": 0.0}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in values:
                raise ValueError(f"bad weights {text!r}: expected e.g. 'timbre=0.7,melody=0.3'")
            try:
                values[key.strip()] = float(value)
            except ValueError as e:
                raise ValueError(f"bad weights {text!r}: {value!r} is not a number") from e
        return cls(**values)


@dataclass
class Vectors:
    """Rows aligned: timbre (n, Dt) and melody (n, Dm), each row L2-normalised."""

    timbre: np.ndarray
    melody: np.ndarray

    def __post_init__(self) -> None:
        assert self.timbre.ndim == 2 and self.melody.ndim == 2 and len(self.timbre) == len(self.melody)

    def __len__(self) -> int:
        return len(self.timbre)

    def fused(self, weights: Weights) -> np.ndarray:
        return fuse(self.timbre, self.melody, weights)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def fuse(timbre: np.ndarray, melody: np.ndarray, weights: Weights) -> np.ndarray:
    """(n, Dt), (n, Dm) -> (n, Dt + Dm) normalise(w_t * timbre ++ w_m * melody)."""
    return _normalise(np.concatenate([weights.timbre * timbre, weights.melody * melody], axis=1))


INDEX_WEIGHTS = Weights(1.0, 1.0)  # the index stores equally weighted vectors


class Embedder:
    """Turns audio into vectors with the encoders of one model pair.

    `separator` (accompaniment suppression, recsys.separation) is applied to every input
    before silence removal: give the one the encoders' training audio went through.
    """

    def __init__(
        self,
        models: Models,
        audio_cfg: AudioConfig,
        feature_cfg: FeatureConfig,
        separator: Separator | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.models = models.to(self.device)
        self.audio_cfg = audio_cfg
        self.feature_cfg = feature_cfg
        self.separator = separator

    def to(self, device: str | torch.device) -> Embedder:
        """The same encoders on another device."""
        return Embedder(self.models, self.audio_cfg, self.feature_cfg, self.separator, device)

    @property
    def version(self) -> str:
        return self.models.version

    @property
    def dims(self) -> tuple[int, int]:
        return self.models.dims

    @property
    def needs(self) -> frozenset[str]:
        """The features the encoders read: computed once per file, nothing more."""
        return self.models.needs

    def features(self, source: str | Path | torch.Tensor) -> SongFeatures:
        """One file (or (N,) wave at the working rate) -> the features the encoders need.

        Raises recsys.audio.AudioError for unreadable, silent or non-audio input.
        """
        return song_features(source, self.audio_cfg, self.feature_cfg, self.separator, needs=self.needs)

    def embed_features(self, songs: Sequence[SongFeatures]) -> Vectors:
        """B songs' features -> Vectors with B rows (the timbre encoder batches their chunks)."""
        dt, dm = self.dims
        if not songs:
            return Vectors(np.zeros((0, dt), np.float32), np.zeros((0, dm), np.float32))
        t = self.models.timbre.embed_songs(songs)
        m = self.models.melody.embed_songs(songs)
        return Vectors(_numpy(t), _numpy(m))

    def embed(self, source: str | Path | torch.Tensor) -> Vectors:
        """One file (or (N,) wave at the working rate) -> Vectors with one row."""
        return self.embed_features([self.features(source)])

    def embed_many(self, sources: Iterable[str | Path]) -> Vectors:
        return self.embed_features([self.features(s) for s in sources])


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)
