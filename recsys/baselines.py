"""Baseline song embedders: what the project's encoders must beat.

One small contract, shared with the project's own embedders in evaluation:
``name``, ``dim``, ``sample_rate``; ``embed(wave) -> (dim,)`` for one (N,) float32
waveform at ``sample_rate``, L2-normalised float32 numpy; ``embed_many(waves) ->
(B, dim)``. Baselines:

* :class:`MFCCStats`: mean and std of MFCCs and their deltas (timbre, no learning).
* :class:`ChromaStats`: mean and std of a 12-bin STFT chroma (melody / pitch content),
  with a key-invariant variant.
* :class:`SpeakerEncoder`: Resemblyzer's pretrained speaker encoder (optional extra).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio

from recsys.training.common import pick_device

EPS = 1e-12


def _as_wave(wave: np.ndarray | torch.Tensor, min_samples: int, name: str) -> torch.Tensor:
    """Any (N,) float waveform -> float32 CPU tensor, checked."""
    wave = torch.as_tensor(np.asarray(wave) if not torch.is_tensor(wave) else wave).to(torch.float32)
    if wave.ndim != 1:
        raise ValueError(f"{name}: expected a mono (N,) waveform, got shape {tuple(wave.shape)}")
    if wave.numel() < min_samples:
        raise ValueError(
            f"{name}: audio of {wave.numel()} samples is too short (need at least {min_samples})"
        )
    if not torch.isfinite(wave).all():
        raise ValueError(f"{name}: waveform contains NaN or infinite samples")
    return wave


def _unit(v: np.ndarray, name: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm < EPS:
        raise ValueError(f"{name}: embedding has norm {norm}; cannot L2-normalise (silent input?)")
    return (v / norm).astype(np.float32)


class WaveEmbedder(ABC):
    """A song embedder on raw waveforms: (N,) float32 at `sample_rate` -> (dim,) unit vector."""

    name: str
    dim: int
    sample_rate: int

    @abstractmethod
    def embed(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,) float32 waveform at self.sample_rate -> (dim,) float32, L2-normalised."""

    def embed_many(
        self,
        waves: Sequence[np.ndarray | torch.Tensor],
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """List of (N_i,) waveforms -> (B, dim) float32; `progress(done, total)` after each."""
        out = np.empty((len(waves), self.dim), dtype=np.float32)
        for i, wave in enumerate(waves):
            out[i] = self.embed(wave)
            if progress is not None:
                progress(i + 1, len(waves))
        return out


class MFCCStats(WaveEmbedder):
    """Mean and std over time of MFCCs and their deltas: (N,) -> (4 * n_mfcc,), e.g. 20 -> 80.

    Raw statistics mix scales (c0 is loudness-like and dominates), so `fit(waves)` on
    a catalog learns a per-dimension standardisation applied before L2 normalisation.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mfcc: int = 20,
        n_fft: int = 512,
        hop_length: int = 256,
        n_mels: int = 48,
        device: str = "auto",
    ):
        if n_mfcc > n_mels:
            raise ValueError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        self.name = "mfcc_stats"
        self.sample_rate = sample_rate
        self.n_mfcc = n_mfcc
        self.n_fft = n_fft
        self.dim = 4 * n_mfcc
        self.device = pick_device(device)
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=sample_rate,
            n_mfcc=n_mfcc,
            melkwargs={"n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels, "center": True},
        ).to(self.device)
        self.mean: np.ndarray | None = None  # (dim,) set by fit
        self.std: np.ndarray | None = None

    @torch.no_grad()
    def stats(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,) -> (dim,) raw statistics [mean mfcc, std mfcc, mean delta, std delta], unstandardised."""
        wave = _as_wave(wave, self.n_fft, self.name).to(self.device)
        mfcc = self.transform(wave)  # (N,) -> (n_mfcc, T)
        delta = torchaudio.functional.compute_deltas(mfcc)  # (n_mfcc, T)
        feats = torch.cat(
            [mfcc.mean(-1), mfcc.std(-1, correction=0), delta.mean(-1), delta.std(-1, correction=0)]
        )
        return feats.double().cpu().numpy()

    def fit(self, waves: Sequence[np.ndarray | torch.Tensor]) -> MFCCStats:
        """Learn the per-dimension mean and std of the statistics over a catalog of songs."""
        if len(waves) < 2:
            raise ValueError(f"fit needs at least 2 waveforms to estimate a spread, got {len(waves)}")
        raw = np.stack([self.stats(w) for w in waves])  # (B, dim)
        self.mean = raw.mean(axis=0)
        self.std = np.maximum(raw.std(axis=0), 1e-8 * max(float(np.abs(raw).max()), 1.0))
        return self

    def embed(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        v = self.stats(wave)
        if self.mean is not None and self.std is not None:
            v = (v - self.mean) / self.std
        return _unit(v, self.name)


def chroma_filterbank(
    sample_rate: int, n_fft: int, f_min: float = 55.0, f_max: float = 4000.0, sigma: float = 0.5
) -> torch.Tensor:
    """(n_fft // 2 + 1, 12) weights mapping STFT power to pitch classes C, C#, ... B.

    Each bin in [f_min, f_max] spreads over the pitch classes with a Gaussian in
    circular semitone distance (std `sigma` semitones), so a pure tone between two
    semitones is not snapped to one; bins outside the range weigh 0.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    fb = torch.zeros(freqs.numel(), 12, dtype=torch.float64)
    inside = (freqs >= f_min) & (freqs <= f_max)
    midi = 12 * torch.log2(freqs[inside] / 440.0) + 69  # (n_inside,) continuous MIDI pitch
    classes = torch.arange(12, dtype=torch.float64)
    dist = torch.remainder(midi[:, None] - classes[None, :] + 6, 12) - 6  # circular, in [-6, 6)
    weights = torch.exp(-0.5 * (dist / sigma) ** 2)
    fb[inside] = weights / weights.sum(dim=1, keepdim=True)
    return fb.to(torch.float32)


class ChromaStats(WaveEmbedder):
    """Mean and std over time of a 12-bin STFT chroma: (N,) -> (24,); a melody baseline.

    Frames are normalised to sum 1 (loudness-free); frames more than 60 dB below the
    loudest are left out. With ``key_invariant=True`` the vector is instead the
    magnitude of the DFT over the 12 chroma bins (k = 0..6) of the mean and of the std,
    (14,): a transposition circularly shifts the chroma, which the DFT magnitude ignores.
    """

    SILENCE_DB = 60.0

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 4096,
        hop_length: int = 1024,
        f_min: float = 55.0,
        f_max: float = 4000.0,
        key_invariant: bool = False,
        device: str = "auto",
    ):
        if not 0 < f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 < f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}")
        self.name = "chroma_stats_keyinv" if key_invariant else "chroma_stats"
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.key_invariant = key_invariant
        self.dim = 14 if key_invariant else 24
        self.device = pick_device(device)
        self.window = torch.hann_window(n_fft, device=self.device)
        self.filterbank = chroma_filterbank(sample_rate, n_fft, f_min, f_max).to(self.device)

    @torch.no_grad()
    def chroma(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N,) -> (12, T) per-frame chroma summing to 1, voiced frames only."""
        wave = _as_wave(wave, self.n_fft // 2 + 1, self.name).to(self.device)
        spec = torch.stft(
            wave, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True
        )
        power = spec.abs() ** 2  # (F, T)
        chroma = self.filterbank.T @ power  # (12, F) @ (F, T) -> (12, T)
        energy = chroma.sum(dim=0)  # (T,)
        if float(energy.max()) <= EPS:
            raise ValueError(f"{self.name}: no energy between the chroma frequency limits (silent input?)")
        voiced = energy >= energy.max() * 10 ** (-self.SILENCE_DB / 10)
        return chroma[:, voiced] / energy[voiced]

    def embed(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        chroma = self.chroma(wave)
        mean, std = chroma.mean(dim=1), chroma.std(dim=1, correction=0)  # (12,), (12,)
        if self.key_invariant:
            mean, std = torch.fft.rfft(mean).abs(), torch.fft.rfft(std).abs()  # (7,), (7,)
        return _unit(torch.cat([mean, std]).double().cpu().numpy(), self.name)


class SpeakerEncoder(WaveEmbedder):
    """Resemblyzer's pretrained GE2E speaker encoder: (N,) -> (256,); needs the `speaker` extra.

    Input is resampled to 16 kHz and brought to -30 dBFS as in Resemblyzer's own
    preprocessing; its VAD trimming is not applied (recsys.audio already removes silence).
    """

    ENCODER_RATE = 16000
    TARGET_DBFS = -30.0

    def __init__(self, sample_rate: int = 16000, device: str = "auto"):
        try:
            from resemblyzer import VoiceEncoder
            from resemblyzer.audio import normalize_volume
        except ImportError as e:
            raise ImportError(
                f"SpeakerEncoder needs the resemblyzer package ({e}); install it with "
                f"`pip install singer-recsys[speaker]`"
            ) from e
        self.name = "resemblyzer"
        self.dim = 256
        self.sample_rate = sample_rate
        self.device = pick_device(device)
        self._normalize_volume = normalize_volume
        self.encoder = VoiceEncoder(device=self.device, verbose=False)

    def embed(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        wave = _as_wave(wave, self.sample_rate // 10, self.name)
        if self.sample_rate != self.ENCODER_RATE:
            wave = torchaudio.functional.resample(wave, self.sample_rate, self.ENCODER_RATE)
        if float(wave.abs().max()) <= EPS:
            raise ValueError(f"{self.name}: silent input")
        wav = self._normalize_volume(wave.numpy().astype(np.float32), self.TARGET_DBFS)
        return _unit(np.asarray(self.encoder.embed_utterance(wav), dtype=np.float64), self.name)


BASELINES: dict[str, Callable[..., Any]] = {
    "mfcc_stats": MFCCStats,
    "chroma_stats": ChromaStats,
    "chroma_stats_keyinv": lambda **kw: ChromaStats(key_invariant=True, **kw),
    "resemblyzer": SpeakerEncoder,
}


def make_baseline(name: str, sample_rate: int = 16000, device: str = "auto") -> WaveEmbedder:
    """Build a baseline by name; valid names are the keys of BASELINES."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return BASELINES[name](sample_rate=sample_rate, device=device)
