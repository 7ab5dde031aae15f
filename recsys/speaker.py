"""The pretrained speaker front end: a GE2E d-vector for every 1.6 s partial of the voiced audio.

`timbre.front_end: speaker` (issue 15, item 5; the approach of the SSL front-end study,
../shared/seeds/000): Resemblyzer's speaker encoder, whose weights ship inside its wheel (the
`speaker` extra; nothing is downloaded), reads the voiced audio, and the project's contrastive back
end (recsys.models.speaker_timbre) is trained on the catalog over its partials. The encoder is
Resemblyzer's own preprocessing and partial slicing (1.3 partials a second), run block by block so
that a long file never needs its whole waveform: a block's partials are the block's own.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio

SPEAKER_DIM = 256  # GE2E's d-vector
SPEAKER_RATE = 16000  # the rate the encoder was trained at
TARGET_DBFS = -30.0  # Resemblyzer's preprocessing level
PARTIAL_SECONDS = 1.6
MIN_SECONDS = 0.1  # below this there is no voice to read


@functools.lru_cache(maxsize=2)
def _encoder(device: str):
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as e:
        from recsys.errors import MissingDependencyError

        raise MissingDependencyError(f"timbre.front_end 'speaker' needs the resemblyzer package ({e})",
                                     "pip install 'singer-recsys[speaker]', or set timbre.front_end: log-mel") from e
    return VoiceEncoder(device=device, verbose=False)


def _device_name(device: torch.device | str) -> str:
    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def check_available() -> None:
    """Raise recsys.errors.MissingDependencyError (one clear line) when the encoder cannot be built here."""
    _encoder("cpu")


@torch.no_grad()
def speaker_partials(wave: torch.Tensor, sample_rate: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) voiced waveform at `sample_rate` -> (K, 256) float32 unit d-vectors of its partials, K >= 1, on the CPU."""
    encoder = _encoder(_device_name(device))  # first: a missing package is a MissingDependencyError
    from resemblyzer.audio import normalize_volume

    wave = torch.as_tensor(wave, dtype=torch.float32).detach().cpu()
    if wave.dim() != 1:
        raise ValueError(f"expected one (N,) waveform, got shape {tuple(wave.shape)}")
    if wave.numel() < MIN_SECONDS * sample_rate:
        raise ValueError(f"{wave.numel() / sample_rate:.3f} s of audio is too short for the speaker front end "
                         f"(at least {MIN_SECONDS} s)")
    if sample_rate != SPEAKER_RATE:
        wave = torchaudio.functional.resample(wave, sample_rate, SPEAKER_RATE)
    samples = normalize_volume(wave.numpy(), TARGET_DBFS)
    _, partials, _ = encoder.embed_utterance(samples.astype(np.float32), return_partials=True)
    return torch.from_numpy(np.ascontiguousarray(partials, dtype=np.float32))


class StreamPartials:
    """Partials of a waveform fed in pieces: each `block_samples` block (the last one with what is left) read
    on its own, so memory holds one block, and a stream of one block gives speaker_partials of its whole."""

    def __init__(self, sample_rate: int, block_samples: int, device: torch.device | str = "cpu") -> None:
        self.sample_rate, self.device = sample_rate, device
        self.block = max(block_samples, round(2 * PARTIAL_SECONDS * sample_rate))
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.out: list[torch.Tensor] = []

    def push(self, piece: torch.Tensor) -> None:
        self.pending.append(piece.detach().cpu())
        self.n_pending += piece.numel()
        if self.n_pending >= self.block:
            self._read(torch.cat(self.pending))

    def _read(self, wave: torch.Tensor) -> None:
        self.pending, self.n_pending = [], 0
        if wave.numel() >= MIN_SECONDS * self.sample_rate or not self.out:
            self.out.append(speaker_partials(wave, self.sample_rate, self.device))

    def finish(self) -> torch.Tensor:
        if self.pending:
            self._read(torch.cat(self.pending))
        return torch.cat(self.out)
