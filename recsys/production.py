"""A random production chain for synthetic songs: EQ, band limit, room, noise floor, level.

Real catalogs are not recorded alike: each song has its own microphone, room, mixing EQ,
codec band limit and noise floor. A development catalog where every song shares one clean
chain hides an encoder that recognises the chain instead of the voice, so
`recsys.corpus.generate_corpus(produced=True)` runs every rendered voice through a chain
of its own, drawn here. The stages are separate functions so that tests can measure each:

    reverberate  synthetic room impulse response (direct sound, early reflections, a tail
                 whose highs decay faster), torchaudio fftconvolve
    equalise     peaking bands and low / high shelves (torchaudio biquads)
    band_limit   4th-order high-pass and low-pass (two cascaded biquads each)
    add_noise    white, pink or brown noise at `snr_db` below the signal's RMS
    set_level    RMS to `level_dbfs`, peaks kept below full scale

Key- and tempo-changed copies (`pitch_copy`, `tempo_copy`) are the plain production
transforms of a re-upload: formants move with the pitch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

NOISE_COLOURS = ("white", "pink", "brown")
_HEADROOM_PEAK = 0.01  # filters run on a scaled-down copy: torchaudio's biquads clamp to [-1, 1]


@dataclass(frozen=True)
class PeakingBand:
    centre_hz: float
    gain_db: float
    q: float


@dataclass(frozen=True)
class ProductionChain:
    """One song's recording and mixing chain, drawn by `draw_chain`."""

    bands: tuple[PeakingBand, ...]
    low_shelf_hz: float
    low_shelf_db: float
    high_shelf_hz: float
    high_shelf_db: float
    highpass_hz: float
    lowpass_hz: float
    rt60_s: float
    wet_db: float  # reverberant energy relative to the direct sound
    predelay_s: float
    snr_db: float
    noise_colour: str
    level_dbfs: float
    seed: int  # draws the impulse response and the noise


def draw_chain(rng: np.random.Generator, sample_rate: int) -> ProductionChain:
    """A random chain; frequencies scale with the sample rate's Nyquist limit."""
    top = min(6000.0, 0.4 * sample_rate)
    n_bands = int(rng.integers(2, 5))
    bands = tuple(
        PeakingBand(
            centre_hz=float(np.exp(rng.uniform(math.log(150.0), math.log(top)))),
            gain_db=float(rng.uniform(-9.0, 9.0)),
            q=float(rng.uniform(0.7, 2.5)),
        )
        for _ in range(n_bands)
    )
    return ProductionChain(
        bands=bands,
        low_shelf_hz=float(rng.uniform(80.0, 250.0)),
        low_shelf_db=float(rng.uniform(-6.0, 6.0)),
        high_shelf_hz=float(rng.uniform(min(2500.0, 0.3 * sample_rate), top)),
        high_shelf_db=float(rng.uniform(-6.0, 6.0)),
        highpass_hz=float(np.exp(rng.uniform(math.log(50.0), math.log(300.0)))),
        lowpass_hz=float(rng.uniform(3400.0, min(7500.0, 0.47 * sample_rate))),
        rt60_s=float(rng.uniform(0.2, 1.2)),
        wet_db=float(rng.uniform(-20.0, -4.0)),
        predelay_s=float(rng.uniform(0.003, 0.03)),
        snr_db=float(rng.uniform(20.0, 40.0)),
        noise_colour=NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))],
        level_dbfs=float(rng.uniform(-28.0, -14.0)),
        seed=int(rng.integers(2**31)),
    )


def _tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(wave, dtype=np.float64))


def _scaled(wave: np.ndarray, fn) -> np.ndarray:
    """Run a linear filter on a copy scaled to a small peak, so torchaudio's clamp never acts."""
    x = np.asarray(wave, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x.copy()
    scale = _HEADROOM_PEAK / peak
    return fn(_tensor(x * scale)).numpy() / scale


def equalise(wave: np.ndarray, sample_rate: int, chain: ProductionChain) -> np.ndarray:
    """Peaking bands, then the low and high shelves."""

    def run(x: torch.Tensor) -> torch.Tensor:
        for b in chain.bands:
            x = AF.equalizer_biquad(x, sample_rate, b.centre_hz, b.gain_db, b.q)
        x = AF.bass_biquad(x, sample_rate, chain.low_shelf_db, chain.low_shelf_hz)
        return AF.treble_biquad(x, sample_rate, chain.high_shelf_db, chain.high_shelf_hz)

    return _scaled(wave, run)


def band_limit(wave: np.ndarray, sample_rate: int, chain: ProductionChain) -> np.ndarray:
    """High-pass and low-pass, each two cascaded Butterworth biquads (24 dB per octave)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = AF.highpass_biquad(x, sample_rate, chain.highpass_hz)
            x = AF.lowpass_biquad(x, sample_rate, chain.lowpass_hz)
        return x

    return _scaled(wave, run)


def room_impulse(chain: ProductionChain, sample_rate: int) -> np.ndarray:
    """Direct sound (1.0), three early reflections, then a noise tail decaying by 60 dB in rt60_s
    whose high frequencies die faster; reflections and tail carry `wet_db` of the direct energy."""
    rng = np.random.default_rng([chain.seed, 1])
    length = int(1.2 * chain.rt60_s * sample_rate)
    t = np.arange(length) / sample_rate
    bright = rng.normal(0.0, 1.0, length) * np.exp(-6.9 * t / (0.6 * chain.rt60_s))
    dark = np.convolve(rng.normal(0.0, 1.0, length), np.ones(8) / 8.0, mode="same") * np.exp(-6.9 * t / chain.rt60_s)
    tail = 0.5 * bright + dark
    tail[: int(chain.predelay_s * sample_rate)] = 0.0
    tail /= max(float(np.sqrt(np.sum(tail**2))), 1e-12)
    for _ in range(3):
        at = int(rng.uniform(0.002, chain.predelay_s + 0.002) * sample_rate)
        tail[max(at, 1)] += rng.uniform(0.15, 0.35) * rng.choice([-1.0, 1.0])
    tail *= 10.0 ** (chain.wet_db / 20.0) / max(float(np.sqrt(np.sum(tail**2))), 1e-12)
    tail[0] = 1.0
    return tail


def reverberate(wave: np.ndarray, sample_rate: int, chain: ProductionChain) -> np.ndarray:
    """The wave in the chain's room (same length: the tail past the end is cut)."""
    x, h = _tensor(wave), _tensor(room_impulse(chain, sample_rate))
    n = x.shape[-1]
    size = 1 << math.ceil(math.log2(n + h.shape[-1] - 1))  # zero-padded to a fast FFT length
    x = torch.nn.functional.pad(x, (0, size - h.shape[-1] + 1 - n))
    return AF.fftconvolve(x, h)[:n].numpy()


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """(n,) unit-RMS noise with a flat (white), 1/f (pink) or 1/f^2 (brown) power spectrum."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"noise colour must be one of {NOISE_COLOURS}, got {colour!r}")
    white = rng.standard_normal(n)
    if colour != "white":
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n), 1.0 / max(n, 1))
        spec *= f ** (-0.5 if colour == "pink" else -1.0)
        spec[0] = 0.0
        white = np.fft.irfft(spec, n)
    return white / max(float(np.sqrt(np.mean(white**2))), 1e-12)


def add_noise(wave: np.ndarray, chain: ProductionChain) -> np.ndarray:
    """Noise `snr_db` below the wave's RMS over the whole song."""
    x = np.asarray(wave, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x**2)))
    noise = coloured_noise(len(x), chain.noise_colour, np.random.default_rng([chain.seed, 2]))
    return x + noise * rms * 10.0 ** (-chain.snr_db / 20.0)


def set_level(wave: np.ndarray, level_dbfs: float, peak: float = 0.98) -> np.ndarray:
    """RMS to `level_dbfs`; the whole wave turned down if a peak would pass `peak`."""
    x = np.asarray(wave, dtype=np.float64)
    x = x * (10.0 ** (level_dbfs / 20.0) / max(float(np.sqrt(np.mean(x**2))), 1e-12))
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / top) if top > peak else x


def produce(wave: np.ndarray, sample_rate: int, chain: ProductionChain) -> np.ndarray:
    """Room, EQ, band limit, noise floor, level: (N,) -> (N,) float32."""
    x = reverberate(wave, sample_rate, chain)
    x = equalise(x, sample_rate, chain)
    x = band_limit(x, sample_rate, chain)
    x = add_noise(x, chain)
    return set_level(x, chain.level_dbfs).astype(np.float32)


def pitch_copy(wave: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """The same song pitch-shifted (phase vocoder + resampling: formants move too), same length."""
    from recsys.augment import pitch_shift_wave

    out = pitch_shift_wave(torch.from_numpy(np.asarray(wave, dtype=np.float32)), sample_rate, semitones)
    return out.numpy()


def tempo_copy(wave: np.ndarray, rate: float) -> np.ndarray:
    """The same song played `rate` times faster (phase vocoder: pitch kept), round(N / rate) samples."""
    from recsys.augment import time_stretch_wave

    return time_stretch_wave(torch.from_numpy(np.asarray(wave, dtype=np.float32)), rate).numpy()
