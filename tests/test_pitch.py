"""Pitch front ends and the voiced-interval-lag melody descriptor (recsys.pitch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys import corpus, pitch
from recsys.config import FeatureConfig
from recsys.features import log_mel

SR = 16000
FEAT = FeatureConfig()
LAGS = [1, 2, 4, 8, 16, 32, 64, 128, 250]
FINE = pitch.harmonic_matrix(FEAT, SR, bins_per_semitone=pitch.FINE_BINS)


def tone(midis: list[float], note_s: float = 0.3, seed: int = 0, rest_s: float = 0.0) -> np.ndarray:
    """A harmonic-tone melody with a random spectral envelope, one note per note_s (+ optional rests)."""
    rng = np.random.default_rng(seed)
    amps = rng.uniform(0.2, 1.0, 12) * 0.8 ** np.arange(12)
    t = np.arange(int(note_s * SR)) / SR
    out = []
    for m in midis:
        f0 = 440 * 2 ** ((m - 69) / 12)
        out.append(sum(a * np.sin(2 * np.pi * f0 * (h + 1) * t) for h, a in enumerate(amps) if f0 * (h + 1) < 7800))
        out.append(np.zeros(int(rest_s * SR)))
    wave = np.concatenate(out)
    return (0.1 * wave + 1e-4 * rng.standard_normal(len(wave))).astype(np.float32)


def mel_vector(wave: np.ndarray) -> torch.Tensor:
    mel = log_mel(torch.from_numpy(wave), FEAT, SR)
    chroma = pitch.voiced_chroma(pitch.fine_semitone_salience(mel, FINE))
    return pitch.voiced_interval_lag_profile(chroma, pitch.voicing_weight(mel), LAGS)


def tune(seed: int, n: int = 40) -> list[int]:
    rng = np.random.default_rng(seed)
    return list(60 + np.cumsum(rng.choice([-2, -1, 1, 2, 3, -3], n)).clip(-9, 9))


def test_voiced_profile_equals_its_definition_per_lag():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(12, 200, generator=gen), 0)
    w = torch.rand(200, generator=gen)
    lags = [1, 3, 50, 199, 200, 400]
    rows = []
    for lag in lags:
        if lag >= 200:
            rows.append(torch.zeros(12))
            continue
        num = torch.zeros(12)
        for d in range(12):
            for t in range(lag, 200):
                num[d] += w[t] * w[t - lag] * sum(p[(c + d) % 12, t] * p[c, t - lag] for c in range(12))
        rows.append(num / (w[lag:] * w[:-lag]).sum())
    prof = torch.stack(rows)
    ref = torch.nn.functional.normalize((prof - prof.mean(0)).flatten(), dim=0)
    torch.testing.assert_close(pitch.voiced_interval_lag_profile(p, w, lags, unison=True), ref, atol=1e-5, rtol=1e-4)
    moving = prof[:, 1:]  # without the unison column (interval 0), centred and normalised the same way
    ref = torch.nn.functional.normalize((moving - moving.mean(0)).flatten(), dim=0)
    torch.testing.assert_close(pitch.voiced_interval_lag_profile(p, w, lags), ref, atol=1e-5, rtol=1e-4)


def test_banded_voiced_profile_pools_every_frame_lag_of_each_band():
    gen = torch.Generator().manual_seed(2)
    p = torch.softmax(3 * torch.randn(12, 120, generator=gen), 0)
    w = torch.rand(120, generator=gen)
    lags = [1, 4, 16, 64]
    rows = []
    for band in pitch.lag_bands(lags):
        num, den = torch.zeros(12), torch.tensor(0.0)
        for lag in (m for m in band if m < 120):
            for d in range(12):
                num[d] += sum(w[t] * w[t - lag] * sum(p[(c + d) % 12, t] * p[c, t - lag] for c in range(12))
                              for t in range(lag, 120))
            den += (w[lag:] * w[:-lag]).sum()
        rows.append(num / den if den > 0 else torch.zeros(12))
    prof = torch.stack(rows)[:, 1:]
    ref = torch.nn.functional.normalize((prof - prof.mean(0)).flatten(), dim=0)
    torch.testing.assert_close(pitch.voiced_interval_lag_profile(p, w, lags, bands=True), ref, atol=1e-5, rtol=1e-4)


def test_lag_bands_tile_the_lag_axis_around_each_lag():
    lags = [1, 2, 3, 5, 8, 13, 21, 34]
    bands = pitch.lag_bands(lags)
    flat = [m for band in bands for m in band]
    assert flat == list(range(1, flat[-1] + 1))  # contiguous, no lag twice
    for lag, band in zip(lags, bands):
        assert lag in band
        assert all(abs(np.log(m / lag)) <= min(abs(np.log(m / other)) for other in lags) for m in band)
    assert pitch.lag_bands([7]) == [[1, 2, 3, 4, 5, 6, 7]]


def test_voiced_profile_ignores_rotating_the_pitch_classes():
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(12, 300, generator=gen), 0)
    w = torch.rand(300, generator=gen)
    ref = pitch.voiced_interval_lag_profile(p, w, LAGS)
    for k in (1, 5, 11):
        torch.testing.assert_close(pitch.voiced_interval_lag_profile(p.roll(k, 0), w, LAGS), ref)


def _class_accuracy(log_salience: torch.Tensor, midi: float) -> float:
    frames = pitch.fold_chroma_max(log_salience)[:, 5:-5].argmax(0)
    return float((frames == round(midi) % 12).float().mean())


def test_wave_pitch_finds_the_pitch_class_of_slightly_sharp_notes_over_the_sung_range():
    """Where the mel fails (low voices, next test), the waveform's 1024-point STFT resolves every note."""
    for midi in np.arange(pitch.MIDI_LOW, pitch.MIDI_HIGH) + 0.3:
        wave = torch.from_numpy(tone([midi] * 2, note_s=0.5, seed=int(midi)))
        sal = pitch.wave_pitch(wave, SR, FEAT.hop_length)
        assert sal.shape == (pitch.N_PITCH, log_mel(wave, FEAT, SR).shape[-1])
        assert _class_accuracy(sal, midi) > 0.9, midi


@pytest.mark.parametrize("n_samples", [257, 300, 511, 512, 513, 1000, 16_000, 16_257])
def test_wave_pitch_has_the_log_mels_frames_for_any_length(n_samples):
    wave = torch.from_numpy(tone([60, 64], note_s=1.0))[:n_samples]
    out = pitch.wave_pitch(wave, SR, FEAT.hop_length)
    assert out.shape == (pitch.N_PITCH, log_mel(wave, FEAT, SR).shape[-1])
    assert torch.isfinite(out).all()


def test_sparse_comb_equals_the_dense_harmonic_sum():
    wave = torch.from_numpy(tone([48, 55, 62, 69, 76]))
    mag = torch.stft(wave, pitch.WAVE_N_FFT, FEAT.hop_length, window=torch.hann_window(pitch.WAVE_N_FFT),
                     return_complex=True).abs().sqrt()
    comb = pitch.harmonic_comb(pitch.WAVE_N_FFT, SR, pitch.FINE_BINS, pitch.N_HARMONICS, pitch.WAVE_DECAY)
    assert (comb != 0).sum(1).max() <= 2 * pitch.N_HARMONICS  # two taps per harmonic: why sparse pays
    dense = torch.log(comb @ mag + 1e-5)
    torch.testing.assert_close(pitch.stft_pitch_salience(wave, SR, FEAT.hop_length), dense, atol=1e-5, rtol=1e-5)


def test_mel_salience_finds_the_pitch_class_of_most_sung_notes():
    """The 48-band mel cannot resolve low voices' harmonics (docs/melody.md): most notes, not all."""
    right = []
    for midi in np.arange(pitch.MIDI_LOW, pitch.MIDI_HIGH) + 0.3:
        mel = log_mel(torch.from_numpy(tone([midi] * 2, note_s=0.5, seed=int(midi))), FEAT, SR)
        right.append(_class_accuracy(pitch.fine_semitone_salience(mel, FINE), midi) > 0.9)
    assert np.mean(right) > 0.55
    assert np.mean(right[len(right) // 2 :]) > 0.75  # the upper half of the range, where harmonics are resolved


def test_fine_semitone_salience_equals_max_over_sub_bins():
    mel = log_mel(torch.from_numpy(tone([60, 64, 67])), FEAT, SR)
    ref = pitch.semitone_salience(pitch.pitch_salience(mel, FINE), pitch.FINE_BINS)
    torch.testing.assert_close(pitch.fine_semitone_salience(mel, FINE), ref)


def test_voicing_weight_is_low_in_rests_and_ignores_the_recording_level():
    wave = tone([60, 62, 64, 65], note_s=0.4, rest_s=0.4)
    mel = log_mel(torch.from_numpy(wave), FEAT, SR)
    w = pitch.voicing_weight(mel)
    hop_s = FEAT.hop_length / SR
    note = torch.tensor([int((0.8 * k + 0.2) / hop_s) for k in range(4)])
    rest = torch.tensor([int((0.8 * k + 0.6) / hop_s) for k in range(4)])
    assert (w[note] > 0.9).all() and (w[rest] < 0.1).all()
    torch.testing.assert_close(pitch.voicing_weight(mel + 3.0), w)


def test_transposing_a_melody_keeps_its_vector_and_other_melodies_stay_further():
    a = tune(0)
    base = mel_vector(tone(a, seed=1))
    other = mel_vector(tone(tune(1), seed=1))
    for shift in (-2, 2, 5):
        moved = mel_vector(tone([m + shift for m in a], seed=2))
        # Same rhythm for both tunes, so every vector is alike; only the intervals tell them apart.
        assert torch.dot(base, moved) > 0.95
        assert torch.dot(base, moved) > torch.dot(base, other)


@pytest.mark.parametrize("seconds", [0.05, 1.0, 37.3])
def test_any_length_gives_a_finite_unit_vector(seconds):
    wave = tone(tune(2, n=max(1, int(seconds / 0.3))), note_s=min(0.3, seconds))
    vec = mel_vector(wave)
    assert vec.shape == (11 * len(LAGS),) and torch.isfinite(vec).all()
    assert torch.isclose(vec.norm(), torch.tensor(1.0))


def test_same_sung_melody_by_two_voices_is_closer_than_two_melodies_by_one_voice():
    """corpus.sing: each singer in their own key, with vibrato, glides and intonation error."""
    singers = corpus.make_singers(2, seed=3)
    melodies = corpus.make_melodies(2, seed=3)
    vec = {(i, j): mel_vector(corpus.sing(v, m, 10.0, SR, seed=i + 2 * j))
           for i, v in enumerate(singers) for j, m in enumerate(melodies)}
    for i in range(2):
        for j in range(2):
            assert torch.dot(vec[i, j], vec[1 - i, j]) > torch.dot(vec[i, j], vec[i, 1 - j])


def _vibrato_tone(depth_cents: float, rate_hz: float, midi: float = 69.0, seconds: float = 4.0) -> torch.Tensor:
    """8 harmonics (1/h) whose f0 swings sinusoidally `depth_cents` around the note."""
    t = torch.arange(int(SR * seconds), dtype=torch.float64) / SR
    f0 = 440.0 * 2 ** ((midi - 69.0) / 12 + depth_cents / 1200 * torch.sin(2 * np.pi * rate_hz * t))
    phase = 2 * np.pi * torch.cumsum(f0, 0) / SR
    return (0.2 * sum(torch.sin(h * phase) / h for h in range(1, 9))).float()


@pytest.mark.parametrize("depth, rate, midi", [(60.0, 5.0, 69.0), (75.0, 5.7, 52.0), (100.0, 6.5, 76.0)])
def test_a_deep_vibrato_reads_as_its_note(depth, rate, midi):
    """A vibrato swinging 60-100 cents crosses into both neighbouring semitones for a third to two thirds of
    the time; the chroma's moving mean over a vibrato cycle reads the note at the centre of the swing."""
    sal = pitch.wave_pitch(_vibrato_tone(depth, rate, midi), SR, FeatureConfig().hop_length)
    note = round(midi) % pitch.N_CHROMA
    inner = slice(10, -10)  # the moving mean's edges see half a window
    on_note = (pitch.voiced_chroma(sal).argmax(0)[inner] == note).float().mean()
    assert on_note >= 0.98
    # Over 48 ms (what models saved before it read with) the frames follow the swing off the note.
    legacy = (pitch.voiced_chroma(sal, pitch.LEGACY_SMOOTH_FRAMES).argmax(0)[inner] == note).float().mean()
    assert legacy < 0.85
