"""Frame-level measures of a waveform: level, silence, loudness gain, periodicity.

Frames are consecutive (no overlap) and `cfg.frame_seconds` long; the last one may be
partial. These are the building blocks of the voiced stream (recsys.audio.voiced),
which applies them block by block to files of any length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys.config import AudioConfig

MAX_GAIN_DB = 40.0  # normalisation never amplifies more than this: quiet noise must stay quiet
SILENCE_POWER = 1e-12  # mean power of digital silence in frame_rms_db: -120 dBFS, finite


def frame_samples(cfg: AudioConfig) -> int:
    return max(1, round(cfg.frame_seconds * cfg.sample_rate))


def frame_stats(wave: torch.Tensor, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) -> mean power (n_frames,) float64 and peak |x| (n_frames,) of consecutive frames.

    The last frame may be partial; its power is averaged over the samples it has.
    """
    n = wave.numel()
    n_frames = -(-n // frame)
    if n_frames == 0:
        return torch.zeros(0, dtype=torch.float64, device=wave.device), torch.zeros(0, device=wave.device)
    padded = F.pad(wave, (0, n_frames * frame - n)).view(n_frames, frame)  # (n_frames, frame)
    energy = padded.square().sum(dim=1).double()  # float32 sums of one frame are exact enough
    counts = torch.full((n_frames,), frame, dtype=torch.float64, device=wave.device)
    counts[-1] = n - (n_frames - 1) * frame
    return energy / counts, padded.abs().amax(dim=1)


def power_db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(power.clamp_min(SILENCE_POWER))


def frame_rms_db(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (n_frames,) float32 RMS level in dBFS of frames of cfg.frame_seconds (silence: -120)."""
    power, _ = frame_stats(check_wave(wave), frame_samples(cfg))
    return power_db(power).to(torch.float32)


def _threshold_db(loudest_db: float, cfg: AudioConfig) -> float:
    return max(loudest_db + cfg.silence_threshold_db, cfg.silence_floor_db)


def voiced_frames(power: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(n_frames,) frame powers -> (n_frames,) bool: within silence_threshold_db of the reference level, above the floor."""
    if power.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=power.device)
    db = power_db(power)
    return db >= _threshold_db(_reference_db(db, cfg), cfg)


def _reference_db(db: torch.Tensor, cfg: AudioConfig) -> float:
    """The level silence is measured against: a high percentile of the frame levels rather than
    the maximum, so that a brief loud transient (a click, a clap) cannot mark the singing as silence."""
    return float(torch.quantile(db.double().cpu(), cfg.silence_reference_percentile / 100.0))


def voiced_mask(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (n_frames,) bool, True for voiced frames of cfg.frame_seconds."""
    power, _ = frame_stats(check_wave(wave), frame_samples(cfg))
    return voiced_frames(power, cfg)


def keep_frames(wave: torch.Tensor, mask: torch.Tensor, frame: int) -> torch.Tensor:
    """(N,) samples, (ceil(N / frame),) frame mask -> the samples of the kept frames.

    Whole frames are picked as rows of an (n_frames, frame) view: a per-sample mask cost a 3-minute
    song 20 ms (a fifth of its clean-up and features), the rows well under 1 ms.
    """
    n_full = wave.numel() // frame
    kept = wave[: n_full * frame].view(n_full, frame)[mask[:n_full]].reshape(-1)
    if mask.numel() > n_full and bool(mask[n_full]):  # the last, partial frame
        return torch.cat([kept, wave[n_full * frame :]])
    return kept


def remove_silence(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (M,) the voiced frames concatenated; M may be 0 (nothing voiced)."""
    return keep_frames(wave, voiced_mask(wave, cfg), frame_samples(cfg))


def level_gain(power: float, peak: float, cfg: AudioConfig) -> float:
    """Gain that brings audio of mean `power` and `peak` |x| to cfg's level.

    Loudness mode reaches target_rms_db unless that would push the peak over
    peak_level; no mode amplifies by more than MAX_GAIN_DB.
    """
    if cfg.normalization == "none" or peak <= 0 or power <= 0:
        return 1.0
    if cfg.normalization == "loudness":
        gain = min(10 ** ((cfg.target_rms_db - 10 * math.log10(power)) / 20), cfg.peak_level / peak)
    elif cfg.normalization == "peak":
        gain = cfg.peak_level / peak
    else:
        raise ValueError(f"unknown audio.normalization {cfg.normalization!r}; valid: loudness, peak, none")
    return min(gain, 10 ** (MAX_GAIN_DB / 20))


def normalize(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (N,) scaled to cfg's loudness or peak level. Apply to voiced audio only,
    so that silence does not lower the measured level."""
    wave = check_wave(wave)
    if wave.numel() == 0:
        return wave
    power = float(wave.double().square().mean())
    return wave * level_gain(power, float(wave.abs().max()), cfg)


def frame_harmonicity(
    wave: torch.Tensor, frame: int, sample_rate: int, f0_min_hz: float = 80.0, f0_max_hz: float = 1000.0
) -> torch.Tensor:
    """(N,) -> (ceil(N / frame),) periodicity in [0, 1] of consecutive frames.

    The highest local peak of the normalised autocorrelation
    r(l) = sum x[n] x[n+l] / sqrt(sum x[n]^2 * sum x[n+l]^2) over lags l of periods
    1/f0_max .. 1/f0_min: near 1 for a sung (periodic) tone, small for noise and 0
    for silence. A first difference before it whitens the spectrum so that low-passed
    noise does not look periodic at short lags.
    """
    lag_min = max(1, math.floor(sample_rate / f0_max_hz))
    lag_max = math.ceil(sample_rate / f0_min_hz)
    if lag_max + 2 > frame // 2 + 1 or lag_min >= lag_max:
        raise ValueError(
            f"a frame of {frame} samples at {sample_rate} Hz is too short for f0 down to {f0_min_hz} Hz "
            f"(needs >= {2 * lag_max + 2} samples)"
        )
    n = wave.numel()
    n_frames = -(-n // frame)
    x = torch.diff(wave.float(), prepend=wave[:1].float())
    x = F.pad(x, (0, n_frames * frame - n)).view(n_frames, frame)  # (T, W)
    spectrum = torch.fft.rfft(x, n=2 * frame)
    r = torch.fft.irfft(spectrum.abs().square(), n=2 * frame)[:, : lag_max + 2]  # (T, L) sum x[n]x[n+l]
    energy = torch.cumsum(F.pad(x.square(), (1, 0)), dim=1)  # (T, W+1): energy[:, i] = sum x[:i]
    lags = torch.arange(lag_max + 2, device=x.device)
    head = energy[:, frame - lags]  # sum x[0 : W-l]
    tail = energy[:, -1:] - energy[:, lags]  # sum x[l : W]
    norm = (head * tail).sqrt()
    usable = (
        norm > 1e-6 * energy[:, -1:]
    )  # an overlap holding (almost) no energy, e.g. zero padding, says nothing
    r = torch.where(usable, r / norm.clamp_min(1e-30), torch.zeros_like(r))  # (T, L)
    inner = r[:, 1:-1]
    peak = (inner > r[:, :-2]) & (inner >= r[:, 2:])  # local maxima at lags 1 .. lag_max
    in_range = (lags[1:-1] >= lag_min) & (lags[1:-1] <= lag_max)
    candidates = torch.where(peak & in_range, inner, torch.zeros_like(inner))
    return candidates.amax(dim=1).clamp(0.0, 1.0)


def check_wave(wave: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(wave) or wave.ndim != 1 or not wave.is_floating_point():
        shape = tuple(wave.shape) if hasattr(wave, "shape") else type(wave).__name__
        raise ValueError(
            f"expected a (N,) float tensor at the working rate, got {shape}; see to_mono_resampled"
        )
    return wave.to(torch.float32)

