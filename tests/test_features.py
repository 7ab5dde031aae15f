"""Log-mel features: shapes, configurability, and the physics of a tone."""

import math

import pytest
import torch
import torchaudio

from recsys.config import FeatureConfig
from recsys.features import frames_for, log_mel, seconds_per_frame

SR = 16000


def _tone(freq: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_default_shape_and_frame_count():
    cfg = FeatureConfig()
    wave = _tone(440.0, 30.0)
    mel = log_mel(wave, cfg, SR)
    assert mel.shape == (48, frames_for(wave.numel(), cfg)) == (48, 1876)
    assert seconds_per_frame(cfg, SR) == pytest.approx(0.016)
    assert mel.dtype == torch.float32 and torch.isfinite(mel).all()


def test_batched_input_matches_one_by_one():
    cfg = FeatureConfig()
    batch = torch.stack([_tone(220.0), _tone(660.0)])
    mel = log_mel(batch, cfg, SR)
    assert mel.shape[:2] == (2, 48)
    torch.testing.assert_close(mel[1], log_mel(batch[1], cfg, SR))


def test_tone_energy_lands_in_the_right_mel_band():
    cfg = FeatureConfig()
    fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, 0.0, SR / 2, cfg.n_mels, SR, "slaney", "slaney")
    for freq in (300.0, 1000.0, 3000.0):
        band = int(log_mel(_tone(freq), cfg, SR).mean(-1).argmax())
        bin_ = round(freq / (SR / cfg.n_fft))
        assert band == int(fb[bin_].argmax()), freq


def test_parameters_are_configurable():
    cfg = FeatureConfig(n_fft=1024, win_length=800, hop_length=160, n_mels=80)
    mel = log_mel(_tone(440.0, 2.0), cfg, SR)
    assert mel.shape == (80, 2 * SR // 160 + 1)


def test_silence_is_finite_and_at_the_floor():
    cfg = FeatureConfig()
    mel = log_mel(torch.zeros(SR), cfg, SR)
    torch.testing.assert_close(mel, torch.full_like(mel, math.log(cfg.log_floor)))


def test_too_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too short for n_fft=512"):
        log_mel(torch.zeros(100), FeatureConfig(), SR)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    cfg = FeatureConfig()
    wave = _tone(440.0, 3.0) + 0.01 * torch.randn(3 * SR, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_mel(wave.cuda(), cfg, SR).cpu(), log_mel(wave, cfg, SR), atol=1e-3, rtol=1e-4)
