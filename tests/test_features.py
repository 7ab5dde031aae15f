"""Log-mel features: shapes, configurability, the physics of a tone; SongFeatures and what computes them."""

import math

import numpy as np
import pytest
import torch
import torchaudio

import recsys.audio
from recsys.config import AudioConfig, FeatureConfig
from recsys.corpus import make_melodies, make_singers, sing
from recsys.features import (
    FEATURES,
    SongFeatures,
    frames_for,
    log_mel,
    seconds_per_frame,
    song_features,
    song_mel,
    wave_features,
)
from recsys.pitch import N_PITCH, wave_pitch
from recsys.speaker import PARTIAL_SECONDS, partial_starts

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


@pytest.mark.parametrize("center", [True, False])
def test_log_mel_is_torchaudios_mel_spectrogram(center):
    """The transform squares the spectrum itself (faster than torch's complex abs); its result is
    torchaudio's MelSpectrogram(power=2) up to float rounding."""
    from recsys.features import _mel_transform

    cfg = FeatureConfig(n_fft=1024, win_length=800, hop_length=160, n_mels=64, f_min=50.0, f_max=7000.0)
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, f_min=cfg.f_min,
        f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=center, pad_mode="reflect", norm="slaney",
        mel_scale="slaney")
    wave = _tone(440.0, 3.0) + 0.05 * torch.randn(3 * SR, generator=torch.Generator().manual_seed(0))
    want = reference(wave)
    got = _mel_transform(cfg, SR, center)(wave)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


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


# --- SongFeatures and what computes them ----------------------------------------------------


@pytest.fixture(scope="module")
def sung() -> torch.Tensor:
    """4 s of synthetic singing with a rest in it."""
    wave = torch.from_numpy(sing(make_singers(1, seed=2)[0], make_melodies(1, seed=2)[0], 4.0, SR, seed=0))
    wave[SR : SR + SR // 2] = 0.0
    return wave


def test_song_features_decode_once_and_compute_only_what_is_needed(sung, monkeypatch):
    audio, cfg = AudioConfig(), FeatureConfig()
    calls = []
    decode = recsys.audio.voiced_audio
    stream = recsys.audio.voiced_stream
    monkeypatch.setattr(recsys.audio, "voiced_stream", lambda *a, **kw: calls.append(1) or stream(*a, **kw))
    both = song_features(sung, audio, cfg, needs=frozenset(FEATURES))
    assert len(calls) == 1
    voiced = decode(sung, audio)
    assert voiced.numel() < sung.numel()  # the rest was removed before the features
    assert torch.equal(both.mel, log_mel(voiced, cfg, SR)) and torch.equal(both.mel, song_mel(sung, audio, cfg))
    assert both.pitch is not None and torch.equal(both.pitch, wave_pitch(voiced, SR, cfg.hop_length))
    assert both.pitch.shape == (N_PITCH, both.n_frames) and both.available == set(FEATURES)
    # the speaker front end's partials of the same voiced audio: 1.6 s windows half a window apart
    window = round(PARTIAL_SECONDS * SR)
    assert both.speaker.shape == (len(partial_starts(voiced.numel(), window, cfg.speaker_partials)), 256)
    assert both.speaker.shape[0] == 1 + (voiced.numel() - window) // (window // 2) >= 2
    mel_only = song_features(sung, audio, cfg)
    assert mel_only.pitch is None and torch.equal(mel_only.mel, both.mel) and mel_only.available == {"mel"}
    from_wave = wave_features(voiced, {"mel", "pitch"}, audio, cfg)
    assert torch.equal(from_wave.mel, both.mel) and torch.equal(from_wave.pitch, both.pitch)


def test_unknown_features_list_the_valid_ones(sung):
    with pytest.raises(ValueError, match="unknown features \\['chroma'\\]; valid: mel, pitch"):
        wave_features(sung, {"mel", "chroma"}, AudioConfig(), FeatureConfig())
    with pytest.raises(ValueError, match="valid: mel, pitch"):
        SongFeatures(torch.zeros(48, 10)).require({"chroma"})
    with pytest.raises(ValueError, match="one song's \\(N,\\) waveform"):
        wave_features(torch.zeros(2, SR), {"mel"}, AudioConfig(), FeatureConfig())


def test_song_features_check_shapes_and_say_what_is_missing():
    mel = torch.randn(48, 20)
    SongFeatures(mel).require({"mel"})
    with pytest.raises(ValueError, match=r"waveform pitch \('pitch'\).*lack.*recsys\.pitch\.wave_pitch"):
        SongFeatures(mel).require({"mel", "pitch"})
    with pytest.raises(ValueError, match=rf"expected waveform pitch \({N_PITCH}, 20\) on the mel's frames"):
        SongFeatures(mel, torch.zeros(N_PITCH, 19))
    with pytest.raises(ValueError, match="one song's log-mel"):
        SongFeatures(torch.zeros(2, 48, 20))


def test_song_features_take_arrays_and_move_between_devices():
    feats = SongFeatures(np.zeros((48, 20), np.float32), np.ones((N_PITCH, 20), np.float32))
    assert torch.is_tensor(feats.mel) and torch.is_tensor(feats.pitch)
    moved = feats.to("cpu")
    assert moved is not feats and torch.equal(moved.pitch, feats.pitch) and moved.pitch.device.type == "cpu"
    assert SongFeatures(feats.mel).to("cpu").pitch is None


def test_features_know_where_the_cut_silence_was(sung):
    """The rest of `sung` (0.5 s from 1 s) is cut from the voiced audio; times put each frame back on the song's clock."""
    from recsys.audio.voiced import timeline_frames

    audio, cfg = AudioConfig(), FeatureConfig()
    feats = song_features(sung, audio, cfg, needs=frozenset(FEATURES))
    assert feats.times is not None and feats.times.shape == (feats.n_frames,)
    steps = torch.diff(feats.times)
    gap = int(steps.max()) - 1  # frames cut: the rest, less the 32 ms silence frames its edges share with notes
    assert (steps >= 1).all() and 0.4 * SR / cfg.hop_length <= gap <= 0.5 * SR / cfg.hop_length
    assert int(feats.times[-1]) <= sung.numel() // cfg.hop_length
    placed = feats.on_timeline(feats.mel, -1.0)
    assert placed.shape == (cfg.n_mels, int(feats.times[-1]) + 1) and torch.equal(placed[:, feats.times], feats.mel)
    assert (placed[:, 70:88] == -1.0).all()  # frames 1.1-1.4 s: inside the rest
    assert song_features(_tone(440.0, 2.0), audio, cfg).times is None  # nothing cut: the frames are the timeline
    assert torch.equal(feats.to("cpu").times, feats.times)
    # 512-sample frames 0 1 kept, 2 3 cut, 4 5 6 kept: feature frames every 256 samples land after the gap
    kept = torch.tensor([1, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert timeline_frames(kept, 512, 5 * 512, 256).tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14]
    with pytest.raises(ValueError, match="strictly increasing frame times"):
        SongFeatures(torch.zeros(48, 3), times=torch.tensor([0, 2, 2]))


def test_a_copy_of_the_voiced_audio_keeps_the_rests_of_its_source(sung):
    """recsys evaluate perturbs the voiced audio: its copies' frames go back on the source's timeline, at their tempo."""
    from recsys.augment import time_stretch_wave
    from recsys.features import derived_times, voiced_wave_features

    audio, cfg = AudioConfig(), FeatureConfig()
    voiced, base = voiced_wave_features(sung, FEATURES, audio, cfg)
    assert base.times is not None and torch.equal(base.times, song_features(sung, audio, cfg).times)
    same = derived_times(base, wave_features(voiced, FEATURES, audio, cfg))
    assert torch.equal(same, base.times)  # the same audio again: the same timeline
    faster = time_stretch_wave(voiced, 1.25)
    _, copy = voiced_wave_features(faster, FEATURES, audio, cfg)
    times = derived_times(base, copy, voiced.numel() / faster.numel())
    assert times.shape == (copy.n_frames,) and bool((torch.diff(times) >= 1).all())
    assert int(times[-1]) == pytest.approx(int(base.times[-1]) / 1.25, rel=0.05)  # the rest is there, 25 % shorter
    assert derived_times(SongFeatures(base.mel), copy) is copy.times
