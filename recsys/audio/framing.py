"""A centred STFT's frames cut from a stream, block by block, equal to those of the whole signal.

A centred STFT (torch.stft(center=True), reflect padding) of N samples has
N // hop + 1 frames; frame t reads the padded signal y[t * hop : t * hop + n_fft],
where y is the signal with n_fft // 2 samples reflected at each end. :class:`CentredFrames`
builds y as blocks are pushed, reflecting only at the true start and end of the signal
(hence N must be known up front, as recsys.audio.voiced_stream gives it), and hands
out segments of y holding whole runs of frames; an STFT with center=False of a
segment gives exactly those frames. Only about one block and one window of context
are held at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameSegment:
    """Frames [first, first + n_frames) of the centred STFT, as the padded samples they read."""

    first: int
    n_frames: int
    samples: torch.Tensor  # ((n_frames - 1) * hop + n_fft,) float32


class CentredFrames:
    """Cuts a stream of N samples, pushed in blocks, into segments of at most `block_frames` frames.

    Needs N > n_fft // 2 (reflect padding reads n_fft // 2 samples past each edge).
        """

    def __init__(self, n_samples: int, n_fft: int, hop: int, block_frames: int) -> None:
        if hop < 1 or n_fft < 1 or block_frames < 1:
            raise ValueError(f"need hop, n_fft and block_frames >= 1, got {hop}, {n_fft}, {block_frames}")
        self.pad = n_fft // 2
        if n_samples <= self.pad:
            raise ValueError(f"{n_samples} samples are too few for a centred STFT of n_fft={n_fft}")
        self.n_samples, self.n_fft, self.hop, self.block_frames = n_samples, n_fft, hop, block_frames
        self.n_frames = n_samples // hop + 1
        self._head: list[torch.Tensor] | None = []  # the first samples, until the left reflection is built
        self._buf = torch.zeros(0)  # y from frame `_first` on
        self._first = 0  # next frame to give
        self._tail = torch.zeros(0)  # the last pad + 1 samples seen, for the right reflection
        self._seen = 0

    def push(self, block: torch.Tensor) -> list[FrameSegment]:
        """Add the next (n,) samples -> the segments they complete (their samples are views)."""
        block = block.reshape(-1).to(torch.float32)
        self._seen += block.numel()
        if self._seen > self.n_samples:
            raise ValueError(f"the stream holds more than the {self.n_samples} samples announced")
        if block.numel() == 0:
            return []
        self._tail = torch.cat([self._tail.to(block.device), block[-(self.pad + 1) :]])[-(self.pad + 1) :]
        if self._head is not None:
            self._head.append(block)
            if sum(b.numel() for b in self._head) <= self.pad:
                return []
            x = torch.cat(self._head)
            self._head = None
            block = torch.cat([x[1 : self.pad + 1].flip(0), x])  # y begins with the left reflection
        self._buf = torch.cat([self._buf.to(block.device), block])
        out = []
        while self._first < self.n_frames:
            k = min(self.block_frames, self.n_frames - self._first)
            if (self._buf.numel() - self.n_fft) // self.hop + 1 < k:  # not all k frames held yet
                break
            out.append(self._take(k))
        return out

    def finish(self) -> list[FrameSegment]:
        """The remaining segments, once all N samples were pushed (ValueError if they were not)."""
        if self._seen != self.n_samples or self._head is not None:
            raise ValueError(f"the stream held {self._seen} samples, {self.n_samples} were announced")
        self._buf = torch.cat([self._buf, self._tail[:-1].flip(0)])  # the right reflection ends y
        out = []
        while self._first < self.n_frames:
            out.append(self._take(min(self.block_frames, self.n_frames - self._first)))
        return out

    def _take(self, k: int) -> FrameSegment:
        segment = FrameSegment(self._first, k, self._buf[: (k - 1) * self.hop + self.n_fft])
        self._first += k
        self._buf = self._buf[k * self.hop :]
        return segment
