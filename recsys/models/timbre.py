"""The contrastive timbre/style encoder: log-mel -> L2-normalised fixed-size embedding.

Light by design (a 3-minute song must embed in tens of ms on CPU): three strided
2-D convolutions over the log-mel (frequency /8, time /4), a dilated 1-D temporal
convolution for vibrato-scale context, attentive statistics pooling, a linear
embedding. The projection head is used only by the contrastive loss. A song's
vector, the normalised mean over its chunks (:meth:`TimbreEncoder.chunk_song`), is
recsys.encoders.TimbreSongEncoder's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TimbreModelConfig:
    """Model shape; saved in the checkpoint and rebuilt from it."""

    n_mels: int = 48
    channels: int = 32  # conv channels: c/2, c, 2c
    hidden: int = 128  # per-frame feature size before pooling
    attention_dim: int = 64
    embedding_dim: int = 128
    projection_dim: int = 64
    chunk_frames: int = 188  # a song is embedded as chunks of this many frames, as in training
    mean_norm: bool = True  # subtract each input's mean log-mel: loudness offsets do not matter

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimbreModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TimbreModelConfig fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**data)


def _conv_block(c_in: int, c_out: int, stride: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class AttentiveStatsPool(nn.Module):
    """(B, H, T) -> (B, 2H): attention-weighted mean and standard deviation over time."""

    def __init__(self, hidden: int, attention_dim: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.Conv1d(hidden, attention_dim, 1), nn.Tanh(), nn.Conv1d(attention_dim, hidden, 1)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.attention(h), dim=-1)  # (B, H, T), per channel
        mean = (w * h).sum(-1)
        var = (w * h * h).sum(-1) - mean * mean
        std = torch.sqrt(var.clamp(min=1e-6))
        return torch.cat([mean, std], dim=-1)


class TimbreEncoder(nn.Module):
    def __init__(self, cfg: TimbreModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.frontend = nn.Sequential(
            _conv_block(1, c // 2, (2, 2)),  # (B, 1, F, T) -> (B, c/2, F/2, T/2)
            _conv_block(c // 2, c, (2, 2)),  # -> (B, c, F/4, T/4)
            _conv_block(c, 2 * c, (2, 1)),  # -> (B, 2c, F/8, T/4)
        )
        f_out = math.ceil(math.ceil(math.ceil(cfg.n_mels / 2) / 2) / 2)
        self.to_hidden = nn.Sequential(
            nn.Conv1d(2 * c * f_out, cfg.hidden, 1), nn.BatchNorm1d(cfg.hidden), nn.ReLU()
        )
        self.temporal = nn.Sequential(
            nn.Conv1d(cfg.hidden, cfg.hidden, 3, padding=2, dilation=2), nn.BatchNorm1d(cfg.hidden), nn.ReLU()
        )
        self.pool = AttentiveStatsPool(cfg.hidden, cfg.attention_dim)
        self.embedding = nn.Sequential(
            nn.BatchNorm1d(2 * cfg.hidden), nn.Linear(2 * cfg.hidden, cfg.embedding_dim)
        )
        self.projection = nn.Sequential(
            nn.Linear(cfg.embedding_dim, cfg.embedding_dim),
            nn.ReLU(),
            nn.Linear(cfg.embedding_dim, cfg.projection_dim),
        )

    @property
    def dim(self) -> int:
        return self.cfg.embedding_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, embedding_dim), not normalised."""
        if mel.dim() != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"expected mel of shape (B, {self.cfg.n_mels}, T), got {tuple(mel.shape)}")
        if mel.shape[-1] < 4:
            mel = F.pad(mel, (0, 4 - mel.shape[-1]), mode="replicate")
        if self.cfg.mean_norm:
            mel = mel - mel.mean(dim=(1, 2), keepdim=True)
        x = (
            self.frontend(mel[:, None]) if self.training else self._frontend_folded(mel[:, None])
        )  # (B, 2c, F', T')
        x = x.flatten(1, 2)  # (B, 2c * F', T')
        h = self.to_hidden(x)  # (B, H, T')
        h = h + self.temporal(h)
        return self.embedding(self.pool(h))

    def _frontend_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The front end in eval mode with each BatchNorm folded into its convolution.

        Same result as self.frontend(x) in eval mode (to float rounding), one pass over
        the activations fewer per block: the convolutions are most of a song's cost.
        """
        for conv, bn, _ in self.frontend:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            bias = bn.bias - bn.running_mean * scale
            x = F.relu(F.conv2d(x, weight, bias, conv.stride, conv.padding))
        return x

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) -> (L2-normalised embedding (B, D), projection (B, P) for the loss)."""
        z = self.encode(mel)
        return F.normalize(z, dim=-1), self.projection(z)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, D) L2-normalised, in eval mode, on mel's device.

        Runs under inference_mode (about 10 % faster than no_grad on CPU); the result is
        cloned out of it so that callers may use it anywhere, autograd included.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                z = F.normalize(self.encode(mel.to(self.device, torch.float32)), dim=-1)
        finally:
            self.train(was_training)
        return z.clone().to(mel.device)

    def chunk_song(self, mel_song: torch.Tensor) -> torch.Tensor:
        """(n_mels, T) -> (n_chunks, n_mels, chunk_frames) consecutive chunks, as in training.

        A tail shorter than half a chunk is dropped (when there is another chunk);
        a longer tail is completed by wrapping round to the song's start. A song
        shorter than one chunk comes back whole, as (1, n_mels, T).
        """
        n = self.cfg.chunk_frames
        t = mel_song.shape[-1]
        if t <= n:
            return mel_song[None]
        n_chunks = t // n + (1 if t % n >= n // 2 else 0)
        need = n_chunks * n
        if need > t:
            mel_song = torch.cat([mel_song, mel_song[:, : need - t]], dim=-1)
        return mel_song[:, :need].reshape(mel_song.shape[0], n_chunks, n).transpose(0, 1)
