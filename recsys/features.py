"""Log-mel features through torchaudio, with the original study's parameters as defaults.

Defaults (recsys.config.FeatureConfig): 16 kHz, window and FFT 512, hop 256,
48 mel bands, so one frame is 16 ms and 30 s of audio is 1876 frames.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torchaudio

from recsys.config import AudioConfig, FeatureConfig

if TYPE_CHECKING:
    from recsys.separation import Separator


def frames_for(n_samples: int, cfg: FeatureConfig) -> int:
    """Number of frames log_mel returns for `n_samples` samples (centred STFT)."""
    return n_samples // cfg.hop_length + 1


def seconds_per_frame(cfg: FeatureConfig, sample_rate: int) -> float:
    return cfg.hop_length / sample_rate


@functools.lru_cache(maxsize=8)
def _mel_transform(cfg: FeatureConfig, sample_rate: int) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=cfg.n_fft,
        win_length=cfg.win_length,
        hop_length=cfg.hop_length,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm="slaney",
        mel_scale="slaney",
    )


def log_mel(wave: torch.Tensor, cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(..., N) waveform -> (..., n_mels, T) natural-log mel power, computed on wave's device.

    The transform runs in float32 on whatever device `wave` is on, so CPU and CUDA
    give the same result up to float rounding.
    """
    if not torch.is_tensor(wave):
        wave = torch.as_tensor(wave)
    if wave.shape[-1] < cfg.n_fft // 2 + 1:
        raise ValueError(f"audio of {wave.shape[-1]} samples is too short for n_fft={cfg.n_fft}")
    transform = _mel_transform(cfg, sample_rate).to(wave.device)
    mel = transform(wave.to(torch.float32))
    return torch.log(mel + cfg.log_floor)


def song_mel(
    source, audio_cfg: AudioConfig, cfg: FeatureConfig, separator: Separator | None = None
) -> torch.Tensor:
    """A file path or (N,) wave at audio_cfg.sample_rate -> (n_mels, T) log-mel of its voiced audio.

    With a `separator` the accompaniment is suppressed first; then silence is removed
    and loudness normalised (recsys.audio.voiced_audio). Raises recsys.audio.AudioError
    when the source has no voiced audio.
    """
    from recsys.audio import voiced_audio

    return log_mel(voiced_audio(source, audio_cfg, separator), cfg, audio_cfg.sample_rate)


def song_features(
    source, audio_cfg: AudioConfig, cfg: FeatureConfig, separator: Separator | None = None, pitch: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As song_mel, plus (with `pitch`) the (N_PITCH, T) waveform pitch salience on the same frames.

    Both come from one decode of the voiced audio: the mel feeds the timbre encoder, the
    pitch a melody model whose needs_wave_pitch is true (recsys.pitch.wave_pitch).
    """
    from recsys.audio import voiced_audio
    from recsys.pitch import wave_pitch

    wave = voiced_audio(source, audio_cfg, separator)
    mel = log_mel(wave, cfg, audio_cfg.sample_rate)
    return mel, (wave_pitch(wave, audio_cfg.sample_rate, cfg.hop_length) if pitch else None)
