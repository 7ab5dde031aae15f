"""Speed and artefacts of the pitch-shift / time-stretch implementations compared for training.

    .venv/bin/python bench/bench_augment.py [--threads 1] [--seconds 10] [--repeats 5]

Implementations, all torchaudio / torch (permissive licences):
  wave  torchaudio phase vocoder on the waveform (+ resample for pitch), then log-mel  [reference]
  stft  phase vocoder on the complex STFT of the feature front-end, pitch = warp of the
        linear-frequency power spectrum, then mel (needs the waveform's STFT)
  mel   interpolation on the log-mel itself: frames for stretch, mel-frequency warp for pitch [chosen]

Figures, on a synthetic sung tone (220 Hz, 20 harmonics with a formant-like envelope,
5.5 Hz vibrato) whose true transformation can be synthesised exactly:
  xRT        audio seconds processed per second (one song-length signal, input already in
             the form the implementation starts from; wave includes its final log-mel)
  mel err    mean |log-mel - truth| in dB over frames/bands within 40 dB of the peak
  flat d     change of mean spectral flatness (mel power) against the truth, x1000
  cents      pitch error of the waveform output, FFT peak of a shifted 440 Hz sine (wave only)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torchaudio.functional as AF

from recsys.augment import mel_pitch_shift, mel_time_stretch, pitch_shift_wave, time_stretch_wave
from recsys.config import FeatureConfig
from recsys.features import log_mel

SR = 16000
FEAT = FeatureConfig()
DB = 10.0 / math.log(10.0)  # natural-log power -> dB


def sung_tone(seconds: float, f0: float = 220.0, vibrato_hz: float = 5.5, ratio: float = 1.0) -> torch.Tensor:
    """Harmonic tone, formant-like envelope fixed on the harmonic number (so pitch shift moves it)."""
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    f = ratio * f0 * (1 + 0.01 * torch.sin(2 * math.pi * vibrato_hz * t))
    phase = 2 * math.pi * torch.cumsum(f, 0) / SR
    wave = torch.zeros_like(t)
    for k in range(1, 21):
        if k * ratio * f0 * 1.02 < SR / 2:
            envelope = 1.0 / k + 0.8 * math.exp(-((k - 3) ** 2) / 2) + 0.4 * math.exp(-((k - 11) ** 2) / 4)
            wave += envelope * torch.sin(k * phase)
    return (0.1 * wave).float()


def stft_power(wave: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(FEAT.win_length)
    return torch.stft(wave, FEAT.n_fft, FEAT.hop_length, FEAT.win_length, window, return_complex=True)


def to_log_mel(power: torch.Tensor) -> torch.Tensor:
    fb = AF.melscale_fbanks(
        FEAT.n_fft // 2 + 1,
        FEAT.f_min,
        FEAT.f_max or SR / 2,
        FEAT.n_mels,
        SR,
        norm="slaney",
        mel_scale="slaney",
    )  # (freq, n_mels), as recsys.features
    return torch.log(fb.T @ power + FEAT.log_floor)


def stft_stretch(spec: torch.Tensor, rate: float) -> torch.Tensor:
    advance = torch.linspace(0, math.pi * FEAT.hop_length, FEAT.n_fft // 2 + 1)[:, None]
    return to_log_mel(AF.phase_vocoder(spec, rate, advance).abs() ** 2)


def stft_pitch(spec: torch.Tensor, semitones: float) -> torch.Tensor:
    power = spec.abs() ** 2  # (F, T)
    n = power.shape[0]
    src = torch.arange(n, dtype=torch.float32) / 2 ** (semitones / 12)
    lo = src.floor().long().clamp(max=n - 2)
    w = (src - lo)[:, None]
    return to_log_mel((1 - w) * power[lo] + w * power[lo + 1])


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def mel_error_db(mel: torch.Tensor, truth: torch.Tensor) -> float:
    n = min(mel.shape[-1], truth.shape[-1])
    mel, truth = mel[:, 4 : n - 4], truth[:, 4 : n - 4]
    strong = truth > truth.max() - 40 / DB
    return float((mel - truth)[strong].abs().mean() * DB)


def flatness(mel: torch.Tensor) -> float:
    power = mel.exp()
    return float((power.log().mean(0).exp() / power.mean(0)).mean())


def peak_hz(wave: torch.Tensor) -> float:
    spec = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    k = int(spec[1:-1].argmax()) + 1
    a, b, c = (float(x) for x in torch.log(spec[k - 1 : k + 2]))
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(wave)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = args.seconds
    wave = sung_tone(seconds)
    spec = stft_power(wave)
    mel = log_mel(wave, FEAT, SR)
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    steady = (0.3 * torch.sin(2 * math.pi * 440.0 * t)).float()  # pitch error: one FFT peak

    rows = []
    for semitones in (-4.0, -2.0, 2.0, 4.0):
        ratio = 2 ** (semitones / 12)
        truth = log_mel(sung_tone(seconds, ratio=ratio), FEAT, SR)
        impls = {
            "wave": lambda s=semitones: log_mel(pitch_shift_wave(wave, SR, s), FEAT, SR),
            "stft": lambda s=semitones: stft_pitch(spec, s),
            "mel": lambda s=semitones: mel_pitch_shift(mel, s, FEAT, SR),
        }
        for name, fn in impls.items():
            dt, out = timed(fn, args.repeats)
            cents = math.nan
            if name == "wave":
                shifted = pitch_shift_wave(steady, SR, semitones)[4000:-4000]
                cents = 1200 * math.log2(peak_hz(shifted) / peak_hz(steady[4000:-4000]) / ratio)
            rows.append(
                (
                    f"pitch {semitones:+g} st",
                    name,
                    seconds / dt,
                    mel_error_db(out, truth),
                    1000 * (flatness(out) - flatness(truth)),
                    cents,
                )
            )
        rows.append(
            (
                f"pitch {semitones:+g} st",
                "(none)",
                math.nan,
                mel_error_db(mel, truth),
                1000 * (flatness(mel) - flatness(truth)),
                math.nan,
            )
        )
    for rate in (0.8, 0.9, 1.1, 1.25):
        truth = log_mel(sung_tone(seconds / rate, vibrato_hz=5.5 * rate), FEAT, SR)
        impls = {
            "wave": lambda r=rate: log_mel(time_stretch_wave(wave, r), FEAT, SR),
            "stft": lambda r=rate: stft_stretch(spec, r),
            "mel": lambda r=rate: mel_time_stretch(mel, r),
        }
        for name, fn in impls.items():
            dt, out = timed(fn, args.repeats)
            rows.append(
                (
                    f"stretch x{rate:g}",
                    name,
                    seconds / dt,
                    mel_error_db(out, truth),
                    1000 * (flatness(out) - flatness(truth)),
                    math.nan,
                )
            )

    # Training-shaped workload: a batch of 64 chunks of 188 frames (~3 s each).
    batch = mel[:, :188].expand(64, -1, -1).contiguous()
    dt_ps, _ = timed(lambda: mel_pitch_shift(batch, torch.linspace(-4, 4, 64), FEAT, SR), args.repeats)
    dt_ts, _ = timed(lambda: torch.stack([mel_time_stretch(c, 1.2, length=188) for c in batch]), args.repeats)

    print(f"threads={args.threads} signal={seconds:g} s (xRT: seconds of audio per second; higher is faster)")
    print(f"{'operation':<15} {'impl':<7} {'xRT':>10} {'mel err dB':>11} {'flat d x1e3':>12} {'cents':>7}")
    for op, name, xrt, err, flat, cents in rows:
        print(f"{op:<15} {name:<7} {xrt:>10.0f} {err:>11.2f} {flat:>12.2f} {cents:>7.2f}")
    chunk_s = 64 * 188 * FEAT.hop_length / SR
    print(
        f"mel batch 64 x 188 frames: pitch shift {1000 * dt_ps:.1f} ms ({chunk_s / dt_ps:.0f} xRT), "
        f"time stretch {1000 * dt_ts:.1f} ms ({chunk_s / dt_ts:.0f} xRT)"
    )


if __name__ == "__main__":
    main()
