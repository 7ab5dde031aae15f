"""Resampling to the working rate, for a whole signal or a stream of blocks.

The streamed result is sample-exact with resampling the whole signal at once, so a
file decoded block by block gives the same audio as one loaded whole.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import torchaudio


def resampled_length(n: int, orig_freq: int, new_freq: int) -> int:
    """Samples that n samples at orig_freq become at new_freq: ceil(n * new / orig), as torchaudio rounds."""
    if orig_freq == new_freq:
        return n
    gcd = math.gcd(orig_freq, new_freq)
    return math.ceil(new_freq // gcd * n / (orig_freq // gcd))


@functools.lru_cache(maxsize=16)
def resample_transform(orig_freq: int, new_freq: int, device: str = "cpu") -> torchaudio.transforms.Resample:
    """One torchaudio sinc resampler per (orig, new, device); its kernel is costly to build."""
    return torchaudio.transforms.Resample(orig_freq, new_freq).to(device)


class StreamResampler:
    """Resample a stream of (n,) blocks; the concatenated output equals resampling it whole.

    torchaudio's resampler is a strided convolution (stride `orig`, one filter per output
    phase) over the signal padded with `width` zeros on the left and `width + orig` on
    the right, with orig/new the rates divided by their gcd. Here the same padding is
    applied to the stream's two ends and each convolution position is computed once,
    as soon as its whole window has arrived, so block edges leave no trace::

        [0]*width | block 1 | block 2 | ... | block k | [0]*(width + orig)
        positions  0, orig, 2*orig, ...    each reads kernel_size samples
    """

    def __init__(self, orig_freq: int, new_freq: int):
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
        self.identity = orig_freq == new_freq
        self.orig_freq, self.new_freq = orig_freq, new_freq
        if self.identity:
            return
        transform = resample_transform(orig_freq, new_freq)
        self.kernel = transform.kernel  # (new, 1, kernel_size)
        self.width = transform.width
        self.stride = orig_freq // transform.gcd
        self.phases = new_freq // transform.gcd
        self._buffer = torch.zeros(self.width)
        self._n_in = 0
        self._n_out = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """(n,) input samples -> (m,) output samples that are now final (m may be 0)."""
        if self.identity:
            return block
        self._n_in += block.numel()
        self._buffer = torch.cat([self._buffer, block.to(torch.float32)])
        return self._drain()

    def flush(self) -> torch.Tensor:
        """The output samples still owed at the end of the stream; the resampler is then spent."""
        if self.identity:
            return torch.zeros(0)
        owed = resampled_length(self._n_in, self.orig_freq, self.new_freq) - self._n_out
        self._buffer = torch.cat([self._buffer, torch.zeros(self.width + self.stride)])
        return self._drain()[: max(0, owed)]

    def _drain(self) -> torch.Tensor:
        size = self.kernel.shape[-1]
        if self._buffer.numel() < size:
            return torch.zeros(0)
        positions = (self._buffer.numel() - size) // self.stride + 1
        window = self._buffer[: (positions - 1) * self.stride + size]
        out = F.conv1d(window[None, None], self.kernel, stride=self.stride)  # (1, phases, positions)
        out = out[0].transpose(0, 1).reshape(-1)  # (positions * phases,) in time order
        self._buffer = self._buffer[positions * self.stride :]
        self._n_out += out.numel()
        return out

