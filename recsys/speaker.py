"""The pretrained speaker front end: GE2E d-vectors of 1.6 s partials of the voiced audio.

`timbre.front_end: speaker` (issue 15, item 5; the approach of the SSL front-end study,
../shared/seeds/000): Resemblyzer's speaker encoder, whose weights ship inside its wheel (the
`speaker` extra; nothing is downloaded), reads the voiced audio, and the project's contrastive back
end (recsys.models.speaker_timbre) is trained on the catalog over its partials.

A partial costs about 5 ms of CPU, so the encoder reads a sample of the song, not all of it: at most
`features.speaker_partials` partials, spread evenly over the voiced audio, at least half a partial
apart (Resemblyzer's own slicing, 1.3 partials a second, costs 1.2 s for a 3-minute song; docs/benchmarks.md).
The positions are known before the audio arrives (the stream knows its length), so a streamed song keeps
only the samples of its partials, never its whole waveform.
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
PARTIAL_FRAMES = 160  # Resemblyzer's partial: 160 mel frames of 10 ms
MEL_N_FFT, MEL_HOP, MEL_BANDS = 400, 160, 40  # Resemblyzer's mel: 25 ms windows, 10 ms hop, 40 bands
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


def partial_starts(n_samples: int, window: int, max_partials: int) -> list[int]:
    """Starts of the `window`-sample partials read from `n_samples` of audio, spread evenly from its first
    sample to its last, at least half a window apart: all that fit so (max_partials 0, about Resemblyzer's
    1.3 a second) or at most `max_partials`; one, centred, when the audio holds no more."""
    if n_samples <= window:
        return [0]
    fit = 1 + (n_samples - window) // max(1, window // 2)
    k = fit if max_partials <= 0 else min(fit, max_partials)
    if k == 1:
        return [(n_samples - window) // 2]
    return [round(i * (n_samples - window) / (k - 1)) for i in range(k)]


@functools.lru_cache(maxsize=1)
def _mel_basis() -> torch.Tensor:
    from librosa.filters import mel  # a dependency of resemblyzer

    return torch.from_numpy(mel(sr=SPEAKER_RATE, n_fft=MEL_N_FFT, n_mels=MEL_BANDS)).float()


def _encoder_mels(windows: torch.Tensor) -> torch.Tensor:
    """(K, 25600) levelled partials -> (K, 160, 40) mel power frames: resemblyzer.audio.wav_to_mel_spectrogram
    (librosa's, to float rounding), for all partials in one STFT."""
    spec = torch.stft(windows, MEL_N_FFT, MEL_HOP, window=torch.hann_window(MEL_N_FFT), center=True,
                      pad_mode="constant", return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (K, 201, 161)
    return (_mel_basis() @ power)[..., :PARTIAL_FRAMES].transpose(1, 2).contiguous()


def _embed(windows: list[np.ndarray], sample_rate: int, device: torch.device | str) -> torch.Tensor:
    """Whole partials at `sample_rate` -> (K, 256) unit d-vectors: each resampled, levelled as Resemblyzer
    levels an utterance, and read in one batch."""
    encoder = _encoder(_device_name(device))
    length = round(PARTIAL_SECONDS * SPEAKER_RATE)
    rows = []
    for w in windows:
        x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        if sample_rate != SPEAKER_RATE:
            x = torchaudio.functional.resample(x, sample_rate, SPEAKER_RATE)
        rows.append(torch.nn.functional.pad(x[:length], (0, max(0, length - x.numel()))))
    batch = torch.stack(rows).double()
    rms = batch.square().mean(1, keepdim=True).sqrt()
    level = torch.where(rms > 1e-8, 10 ** (TARGET_DBFS / 20) / rms.clamp_min(1e-8), torch.ones_like(rms))
    with torch.no_grad():
        out = encoder(_encoder_mels((batch * level).float()).to(encoder.device))
    return out.float().cpu().contiguous()


class StreamPartials:
    """The partials of a waveform of known length fed in pieces: only the samples of the chosen partials
    (:func:`partial_starts`) are kept, and all are read at the end, in one batch."""

    def __init__(self, sample_rate: int, n_samples: int, max_partials: int, device: torch.device | str = "cpu") -> None:
        _encoder(_device_name(device))  # first: a missing package is a MissingDependencyError
        if n_samples < MIN_SECONDS * sample_rate:
            raise ValueError(f"{n_samples / sample_rate:.3f} s of audio is too short for the speaker front end "
                             f"(at least {MIN_SECONDS} s)")
        self.sample_rate, self.device = sample_rate, device
        self.window = round(PARTIAL_SECONDS * sample_rate)
        self.starts = partial_starts(n_samples, self.window, max_partials)
        self.pieces: list[list[np.ndarray]] = [[] for _ in self.starts]
        self.offset = 0

    def push(self, piece: torch.Tensor) -> None:
        x = piece.detach().cpu().numpy()
        lo, hi = self.offset, self.offset + x.size
        for start, kept in zip(self.starts, self.pieces, strict=True):
            a, b = max(lo, start), min(hi, start + self.window)
            if a < b:
                kept.append(x[a - lo : b - lo])
        self.offset = hi

    def finish(self) -> torch.Tensor:
        """(K, 256) float32 unit d-vectors, K = len(self.starts) >= 1, on the CPU."""
        return _embed([np.concatenate(k) if k else np.zeros(1, np.float32) for k in self.pieces],
                      self.sample_rate, self.device)


def speaker_partials(wave: torch.Tensor, sample_rate: int, max_partials: int = 0,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) voiced waveform at `sample_rate` -> (K, 256) float32 unit d-vectors of its partials, K >= 1, on
    the CPU: 1.6 s partials half a partial apart, or at most `max_partials` of them spread over the song."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.dim() != 1:
        raise ValueError(f"expected one (N,) waveform, got shape {tuple(wave.shape)}")
    stream = StreamPartials(sample_rate, wave.numel(), max_partials, device)
    stream.push(wave)
    return stream.finish()
