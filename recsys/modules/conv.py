"""Dilated causal 1-D convolution, written once and reused by the TCAE.

Like audiocraft's ``StreamableConv1d(causal=True)``: a kernel of size k with
dilation d spans ``(k - 1) * d + 1`` frames, and all of the padding goes on the
left, so output frame t only sees input frames <= t::

    kernel_size=3, dilation=2, padding on the left = (3 - 1) * 2 = 4

    input   0 0 0 0 | x0 x1 x2 x3 x4 ...
                      ^  output y2 = f(x0, x2... ) -- never x3
    output            y0 y1 y2 y3 y4 ...   (same length as the input)

Because nothing looks ahead, a batch of songs padded on the right gives exactly
the same outputs on each song's real frames as the songs one by one, and a song
can be encoded chunk by chunk by carrying the last ``(k - 1) * d`` input frames
of every layer (the "cache") from one chunk to the next.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
    """Frames one dilated kernel spans: (kernel_size - 1) * dilation + 1."""
    if kernel_size < 1 or dilation < 1:
        raise ValueError(f"kernel_size and dilation must be >= 1, got {kernel_size} and {dilation}")
    return (kernel_size - 1) * dilation + 1


def causal_padding(kernel_size: int, dilation: int = 1) -> int:
    """Frames of left padding that keep the output length equal to the input length."""
    return effective_kernel_size(kernel_size, dilation) - 1


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Input frames one output frame depends on, for stacked causal convs: 1 + sum((k - 1) * d)."""
    return 1 + sum(causal_padding(kernel_size, d) for d in dilations)


def pad_left(x: torch.Tensor, amount: int, value: float = 0.0) -> torch.Tensor:
    """(..., T) -> (..., amount + T), `value` frames prepended on the time axis."""
    if amount < 0:
        raise ValueError(f"padding must be >= 0, got {amount}")
    return F.pad(x, (amount, 0), value=value) if amount else x


class CausalConv1d(nn.Module):
    """Conv1d with left padding only: (B, C_in, T) -> (B, C_out, T), output t sees inputs <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.padding = causal_padding(kernel_size, dilation)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_left(x, self.padding))

    def stream(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of a longer sequence: (B, C_in, t), cache (B, C_in, padding) -> (B, C_out, t), new cache.

        `cache` holds the last `padding` input frames of the previous chunk; None
        means the start of the sequence (zeros, like `forward`'s padding).
        """
        if cache is None:
            cache = x.new_zeros(x.shape[0], x.shape[1], self.padding)
        full = torch.cat([cache, x], dim=-1)  # (B, C_in, padding + t)
        new_cache = full[..., full.shape[-1] - self.padding :]
        return self.conv(full), new_cache


class GatedResidualBlock(nn.Module):
    """WaveNet layer: dilated causal conv -> tanh * sigmoid gate -> 1x1 residual and 1x1 skip.

    (B, C, T) -> (B, C, T) residual output and (B, C_skip, T) skip output.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, skip_channels: int | None = None):
        super().__init__()
        self.conv = CausalConv1d(channels, 2 * channels, kernel_size, dilation)
        self.residual = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, skip_channels or channels, 1)

    def _gate(self, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        filt, gate = h.chunk(2, dim=1)  # (B, 2C, T) -> 2 x (B, C, T)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        return x + self.residual(z), self.skip(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gate(self.conv(x), x)

    def stream(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Chunked `forward`: returns ((residual, skip), new cache); see CausalConv1d.stream."""
        h, cache = self.conv.stream(x, cache)
        return self._gate(h, x), cache
