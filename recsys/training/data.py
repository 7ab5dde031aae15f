"""What the trainers consume: one log-mel matrix per song, with its labels.

Trainers never touch files or the database: the CLI builds a list of
SongFeatures (from the catalog, via recsys.audio and recsys.features) and passes
it in, so tests can hand-build tiny ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SongFeatures:
    song_id: int
    mel: torch.Tensor  # (n_mels, T) float32 log-mel of the song's voiced audio
    singer: str | None = None  # None: unlabelled
    content_hash: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    pitch: torch.Tensor | None = None  # (N_PITCH, T) waveform pitch (recsys.pitch.wave_pitch), when computed

    @property
    def n_frames(self) -> int:
        return int(self.mel.shape[-1])


def split_by_song(songs: list[SongFeatures], valid_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/validation split by song; singers with >=2 songs keep one in train."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(songs), generator=gen).tolist()
    by_singer: dict[str | None, list[int]] = {}
    for i in order:
        by_singer.setdefault(songs[i].singer, []).append(i)
    valid: set[int] = set()
    target = round(valid_fraction * len(songs))
    for singer, idx in sorted(by_singer.items(), key=lambda kv: str(kv[0])):
        if len(valid) >= target:
            break
        if singer is None:
            valid.update(idx[: max(1, len(idx) // 4)])
        elif len(idx) >= 3:
            valid.add(idx[0])
    # Round-robin a second pass if the target is not yet met.
    for singer, idx in sorted(by_singer.items(), key=lambda kv: str(kv[0])):
        if len(valid) >= target:
            break
        if singer is not None and len(idx) >= 4:
            valid.add(idx[1])
    train = [s for i, s in enumerate(songs) if i not in valid]
    held = [s for i, s in enumerate(songs) if i in valid]
    return train, held
