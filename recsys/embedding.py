"""Audio -> timbre, melody and fused vectors.

The fused vector is normalise(w_timbre * timbre ++ w_melody * melody), so the
inner product of two fused vectors is

    (w_t^2 cos_timbre + w_m^2 cos_melody) / (w_t^2 + w_m^2),

a weighted mix of the two similarities; `query_for_weights` uses that to let
one index of equally weighted vectors answer any weighting exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from recsys.config import AudioConfig, FeatureConfig
from recsys.features import song_features

if TYPE_CHECKING:
    from recsys.separation import Separator


class SongEncoder(Protocol):
    """What the embedder needs of an encoder: one song's log-mel -> one unit vector."""

    @property
    def dim(self) -> int: ...

    def embed_song(self, mel: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Weights:
    timbre: float = 0.7
    melody: float = 0.3

    def __post_init__(self) -> None:
        if self.timbre < 0 or self.melody < 0 or self.timbre + self.melody == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got timbre={self.timbre}, melody={self.melody}")

    @classmethod
    def parse(cls, text: str) -> "Weights":
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


def query_for_weights(timbre: np.ndarray, melody: np.ndarray, weights: Weights) -> np.ndarray:
    """(nq, Dt), (nq, Dm) -> (nq, Dt + Dm) queries whose inner product with INDEX_WEIGHTS-fused
    vectors equals the fused score under `weights`: (a^2 ct + b^2 cm) / (a^2 + b^2)."""
    a2, b2 = weights.timbre**2, weights.melody**2
    scale = np.sqrt(2.0) / (a2 + b2)  # index vectors are [t, m] / sqrt(2)
    return (np.concatenate([a2 * timbre, b2 * melody], axis=1) * scale).astype(np.float32)


def fused_scores(ct: np.ndarray, cm: np.ndarray, weights: Weights) -> np.ndarray:
    """Fused similarity from the timbre and melody cosines."""
    a2, b2 = weights.timbre**2, weights.melody**2
    return ((a2 * ct + b2 * cm) / (a2 + b2)).astype(np.float32)


class Embedder:
    """Turns audio into vectors with the encoders it is given.

    `separator` (accompaniment suppression, recsys.separation) is applied to every input
    before silence removal: give the one the encoders' training audio went through.
    """

    def __init__(
        self,
        timbre: SongEncoder,
        melody: SongEncoder,
        audio_cfg: AudioConfig,
        feature_cfg: FeatureConfig,
        separator: Separator | None = None,
    ) -> None:
        self.timbre = timbre
        self.melody = melody
        self.audio_cfg = audio_cfg
        self.feature_cfg = feature_cfg
        self.separator = separator

    @property
    def dims(self) -> tuple[int, int]:
        return self.timbre.dim, self.melody.dim

    @property
    def needs_pitch(self) -> bool:
        """Whether the melody encoder reads the waveform pitch (recsys.pitch.wave_pitch) beside the mel."""
        return bool(getattr(self.melody, "needs_wave_pitch", False))

    @torch.no_grad()
    def embed_melody(self, mel: torch.Tensor, pitch: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """(n_mels, T) log-mel and, when needs_pitch, (N_PITCH, T) waveform pitch -> (Dm,) melody vector."""
        if not self.needs_pitch:
            return self.melody.embed_song(mel)
        pitch = None if pitch is None else torch.as_tensor(pitch)  # the encoder says how to compute a missing one
        return self.melody.embed_song(mel, pitch=pitch)  # type: ignore[call-arg]

    @torch.no_grad()
    def embed_mel(
        self, mel: torch.Tensor, pitch: torch.Tensor | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n_mels, T) [and (N_PITCH, T) waveform pitch] -> (timbre (Dt,), melody (Dm,))."""
        t = self.timbre.embed_song(mel).detach().cpu().numpy().astype(np.float32)
        m = self.embed_melody(mel, pitch).detach().cpu().numpy().astype(np.float32)
        return t, m

    def embed(self, source: str | Path | torch.Tensor) -> Vectors:
        """One file (or (N,) wave at the working rate) -> Vectors with one row.

        Raises recsys.audio.AudioError for unreadable, silent or non-audio input.
        """
        mel, pitch = song_features(source, self.audio_cfg, self.feature_cfg, self.separator, pitch=self.needs_pitch)
        t, m = self.embed_mel(mel, pitch)
        return Vectors(t[None], m[None])

    def embed_many(self, sources: Iterable[str | Path]) -> Vectors:
        rows = [self.embed(s) for s in sources]
        dt, dm = self.dims
        if not rows:
            return Vectors(np.zeros((0, dt), np.float32), np.zeros((0, dm), np.float32))
        return Vectors(np.concatenate([r.timbre for r in rows]), np.concatenate([r.melody for r in rows]))
