"""Balanced chunk sampling: every singer equally likely, every song the same number of chunks.

The original study did not converge while singers had very unequal numbers of
songs and songs unequal lengths, and cut data to fix it. Here nothing is cut:
a batch draws singers uniformly (not songs, so prolific singers do not dominate),
then songs within each singer, then a fixed number of chunks per song at uniform
random positions (so a long song is covered across epochs, never truncated).
Songs without a singer label each count as a singer of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ChunkRef = tuple[int, int]  # (song index, start frame)


class BalancedChunkSampler:
    """Draws batches of (song, start) chunk references; deterministic given `generator`."""

    def __init__(
        self,
        n_frames: Sequence[int],
        singers: Sequence[str | None] | None,
        songs_per_batch: int,
        chunks_per_song: int,
        chunk_frames: int,
        songs_per_singer: int = 1,
        generator: torch.Generator | None = None,
    ):
        if len(n_frames) == 0:
            raise ValueError("BalancedChunkSampler needs at least one song")
        if singers is not None and len(singers) != len(n_frames):
            raise ValueError(f"{len(singers)} singer labels for {len(n_frames)} songs")
        for name, value in (
            ("songs_per_batch", songs_per_batch),
            ("chunks_per_song", chunks_per_song),
            ("chunk_frames", chunk_frames),
            ("songs_per_singer", songs_per_singer),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.n_frames = [int(t) for t in n_frames]
        self.songs_per_batch = songs_per_batch
        self.chunks_per_song = chunks_per_song
        self.chunk_frames = chunk_frames
        self.songs_per_singer = songs_per_singer
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        groups: dict[str, list[int]] = {}
        for i in range(len(self.n_frames)):
            singer = singers[i] if singers is not None else None
            key = f"singer:{singer}" if singer is not None else f"song:{i}"
            groups.setdefault(key, []).append(i)
        self.groups = [groups[k] for k in sorted(groups)]

    def _randperm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator).tolist()

    def sample_songs(self) -> list[int]:
        """Song indices of one batch: singers uniformly without replacement, songs within each."""
        songs: list[int] = []
        while len(songs) < self.songs_per_batch:
            before = len(songs)
            for g in self._randperm(len(self.groups)):
                group = [s for s in self.groups[g] if s not in songs]
                for j in self._randperm(len(group))[: self.songs_per_singer]:
                    songs.append(group[j])
                if len(songs) >= self.songs_per_batch:
                    break
            if len(songs) == before:  # every song is already in the batch
                break
        return songs[: self.songs_per_batch]

    def sample(self) -> list[ChunkRef]:
        """One batch: chunks_per_song (song, start) pairs per song, grouped by song."""
        refs: list[ChunkRef] = []
        for song in self.sample_songs():
            room = max(0, self.n_frames[song] - self.chunk_frames)
            starts = torch.randint(0, room + 1, (self.chunks_per_song,), generator=self.generator)
            refs.extend((song, int(s)) for s in starts)
        return refs
