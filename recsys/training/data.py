"""What the trainers consume: one song's features (recsys.features.SongFeatures), with its labels.

Trainers never touch files or the database: the caller builds a list of
TrainingSong (from the catalog, via recsys.audio and recsys.features) and passes
it in, so tests can hand-build tiny ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from recsys.features import SongFeatures


@dataclass
class TrainingSong:
    """A song as the trainers see it: its features on shared frames, its labels and content hash."""

    song_id: int
    features: SongFeatures
    singer: str | None = None  # None: unlabelled
    content_hash: str = ""  # identifies the audio the features came from (with its audio-settings tag)
    metadata: dict[str, Any] = field(default_factory=dict)
    # timbre.front_end speaker: {view: (role, (K, 256) partials)} of waveform views (recsys.training.speaker)
    speaker_views: dict[str, tuple[str, torch.Tensor]] | None = None

    @property
    def mel(self) -> torch.Tensor:
        """(n_mels, T) float32 log-mel of the song's voiced audio."""
        return self.features.mel

    @property
    def pitch(self) -> torch.Tensor | None:
        """(N_PITCH, T) waveform pitch (recsys.pitch.wave_pitch), when computed."""
        return self.features.pitch

    @property
    def n_frames(self) -> int:
        return self.features.n_frames


def canonical_order(songs: list[TrainingSong]) -> list[TrainingSong]:
    """The songs sorted by content (then id): the order a catalog was ingested in must not change a model.

    Database ids follow ingest order, which parallel ingestion does not fix; the timbre
    trainer starts from this order so that the same audio and seed give the same weights.
    (The melody trainers do not yet: their tests' small-catalog margins were tuned on id order.)
    """
    return sorted(songs, key=lambda s: (s.content_hash, str(s.song_id)))
