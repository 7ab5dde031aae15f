"""Augmentations change pitch and duration by the asked amount; pair policies resolve and validate."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio

from recsys.augment import (
    EXTRA_AUGMENTATIONS,
    PAIR_POLICIES,
    apply_extra,
    crop_stretch,
    draw_rates,
    draw_semitones,
    mel_band_centres,
    mel_band_positions,
    mel_envelope,
    mel_key_shift,
    mel_pitch_shift,
    mel_time_stretch,
    pitch_shift_wave,
    resolve_policy,
    time_stretch_wave,
)
from recsys.config import AugmentPolicy, FeatureConfig, TimbreConfig
from recsys.features import log_mel

SR = 16000
FEAT = FeatureConfig()


def tone(f0: float, seconds: float = 2.0, harmonics: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    wave = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, harmonics + 1))
    return (0.3 * wave).float()


def peak_hz(wave: torch.Tensor) -> float:
    """Frequency of the strongest FFT bin, refined by parabolic interpolation."""
    spec = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs()
    k = int(spec[1:-1].argmax()) + 1
    a, b, c = (float(x) for x in torch.log(spec[k - 1 : k + 2]))
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * SR / len(wave)


@pytest.mark.parametrize("semitones", [-4.0, -1.5, 1.0, 2.0, 4.0])
def test_wave_pitch_shift_moves_peak_by_ratio_and_keeps_length(semitones):
    x = tone(440.0)
    y = pitch_shift_wave(x, SR, semitones)
    assert y.shape == x.shape
    ratio = peak_hz(y[2000:-2000]) / peak_hz(x[2000:-2000])
    assert ratio == pytest.approx(2 ** (semitones / 12), rel=2e-3)


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.1, 1.25])
def test_wave_time_stretch_changes_length_not_pitch(rate):
    x = tone(330.0)
    y = time_stretch_wave(x, rate)
    assert y.shape[-1] == round(x.shape[-1] / rate)
    assert peak_hz(y[2000:-2000]) == pytest.approx(330.0, rel=2e-3)


def test_wave_time_stretch_scales_vibrato_rate():
    # A 5 Hz vibrato played at rate 1.25 must become a 6.25 Hz vibrato.
    t = torch.arange(4 * SR, dtype=torch.float64) / SR
    f = 400 * (1 + 0.03 * torch.sin(2 * math.pi * 5.0 * t))
    x = torch.sin(2 * math.pi * torch.cumsum(f, 0) / SR).float()
    y = time_stretch_wave(x, 1.25)
    spec = torch.stft(y, 512, 64, window=torch.hann_window(512), return_complex=True).abs()
    track = spec.argmax(dim=0).double()  # pitch track in FFT bins, one value per 4 ms
    track = track[8:-8] - track[8:-8].mean()
    vib = torch.fft.rfft(track * torch.hann_window(len(track), dtype=torch.float64)).abs()
    hz = (int(vib[1:].argmax()) + 1) * (SR / 64) / len(track)
    assert hz == pytest.approx(6.25, abs=0.35)


def test_mel_band_centres_match_torchaudio_filterbank():
    fb = torchaudio.functional.melscale_fbanks(
        FEAT.n_fft // 2 + 1, FEAT.f_min, SR / 2, FEAT.n_mels, SR, norm="slaney", mel_scale="slaney"
    )  # (freq bins, n_mels)
    bin_hz = SR / FEAT.n_fft
    peaks = fb.argmax(dim=0).double() * bin_hz
    centres = mel_band_centres(FEAT, SR)
    assert torch.all((centres - peaks).abs() < bin_hz)  # triangle apex lies within a bin of the peak bin
    assert torch.allclose(
        mel_band_positions(centres, FEAT, SR), torch.arange(FEAT.n_mels, dtype=torch.float64)
    )


def band_centroid(mel: torch.Tensor) -> float:
    power = mel[:, 10:-10].exp().mean(dim=1)
    return float((power * torch.arange(len(power))).sum() / power.sum())


@pytest.mark.parametrize("semitones", [-3.0, 2.0, 5.0])
def test_mel_pitch_shift_moves_a_tone_to_its_shifted_band(semitones):
    f = 1500.0
    mel = log_mel(tone(f, 1.0), FEAT, SR)
    shifted = mel_pitch_shift(mel, semitones, FEAT, SR)
    truth = log_mel(tone(f * 2 ** (semitones / 12), 1.0), FEAT, SR)
    assert shifted.shape == mel.shape
    assert band_centroid(shifted) == pytest.approx(band_centroid(truth), abs=0.4)
    # Closer to the truly shifted tone than the input was.
    assert (shifted - truth).abs().mean() < 0.6 * (mel - truth).abs().mean()


def test_mel_pitch_shift_zero_is_identity_and_batches_per_view():
    mel = log_mel(tone(220.0, 1.0, harmonics=8), FEAT, SR)
    assert torch.allclose(mel_pitch_shift(mel, 0.0, FEAT, SR), mel, atol=1e-5)
    batch = torch.stack([mel, mel])
    out = mel_pitch_shift(batch, torch.tensor([0.0, 3.0]), FEAT, SR)
    assert torch.allclose(out[0], mel, atol=1e-5)
    assert torch.allclose(out[1], mel_pitch_shift(mel, 3.0, FEAT, SR))


@pytest.mark.parametrize("rate", [0.8, 1.1, 1.25])
def test_mel_time_stretch_length_and_spectrum(rate):
    mel = log_mel(tone(300.0, 2.0, harmonics=5), FEAT, SR)
    out = mel_time_stretch(mel, rate)
    assert out.shape == (FEAT.n_mels, round(mel.shape[-1] / rate))
    # A steady tone keeps its spectrum.
    assert torch.allclose(out[:, 5:-5].mean(1), mel[:, 5:-5].mean(1), atol=0.05)


def test_mel_time_stretch_matches_waveform_stretch():
    mel = log_mel(tone(300.0, 2.0, harmonics=5), FEAT, SR)
    via_wave = log_mel(time_stretch_wave(tone(300.0, 2.0, harmonics=5), 1.25), FEAT, SR)
    via_mel = mel_time_stretch(mel, 1.25)
    assert abs(via_mel.shape[-1] - via_wave.shape[-1]) <= 1
    n = min(via_mel.shape[-1], via_wave.shape[-1])
    strong = via_wave[:, 5 : n - 5] > via_wave.max() - 8  # bands holding the harmonics
    assert (via_mel[:, 5 : n - 5] - via_wave[:, 5 : n - 5])[strong].abs().mean() < 1.0


def test_crop_stretch_is_a_crop_at_rate_one_and_tiles_short_songs():
    song = torch.arange(48 * 100, dtype=torch.float32).reshape(48, 100)
    assert torch.equal(crop_stretch(song, 10, 32), song[:, 10:42])
    assert torch.equal(crop_stretch(song, 90, 32), song[:, 68:100])  # moved back to fit
    assert crop_stretch(song, 0, 32, 1.25).shape == (48, 32)
    short = crop_stretch(song[:, :20], 0, 50)
    assert short.shape == (48, 50) and torch.equal(short[:, 20:40], song[:, :20])


def test_extra_augmentations_keep_shape_and_are_reproducible():
    mel = log_mel(tone(220.0, 1.0, harmonics=8), FEAT, SR)[None].repeat(3, 1, 1)
    for name in EXTRA_AUGMENTATIONS:
        a = apply_extra(mel, name, torch.Generator().manual_seed(1), 0.016, FEAT, SR)
        b = apply_extra(mel, name, torch.Generator().manual_seed(1), 0.016, FEAT, SR)
        assert a.shape == mel.shape and torch.equal(a, b)
        assert not torch.allclose(a, mel), name
    gained = apply_extra(mel, "gain", torch.Generator().manual_seed(0), 0.016)
    offsets = (gained - mel).mean(dim=(1, 2)) / (math.log(10) / 10)  # dB
    assert torch.all(offsets.abs() <= 6.0 + 1e-4)
    noisy = apply_extra(mel, "noise", torch.Generator().manual_seed(0), 0.016)
    assert torch.all(noisy >= mel - 1e-5)  # noise only adds power
    with pytest.raises(ValueError, match="valid: gain"):
        apply_extra(mel, "chorus", torch.Generator(), 0.016)


@pytest.mark.parametrize("name", list(PAIR_POLICIES))
def test_named_policies_resolve_with_their_roles(name):
    policy = resolve_policy(TimbreConfig(policy=name))
    ps, ts = name.split("_")[1], name.split("_")[3]
    assert policy.pitch_shift.role == {"pos": "positive", "neg": "negative"}[ps]
    assert policy.time_stretch.role == {"pos": "positive", "neg": "negative"}[ts]
    assert policy.extra_positives == TimbreConfig().extra_positives


def test_policy_overrides_and_bad_values():
    cfg = TimbreConfig(
        policy="ps_neg_ts_neg", time_stretch=AugmentPolicy(role="off"), extra_positives=("eq",)
    )
    policy = resolve_policy(cfg)
    assert policy.time_stretch.role == "off" and policy.pitch_shift.role == "negative"
    assert policy.roles("negative") == ["pitch_shift"] and policy.extra_positives == ("eq",)
    with pytest.raises(ValueError, match="valid: ps_pos_ts_pos"):
        resolve_policy(TimbreConfig(policy="both_neg"))
    with pytest.raises(ValueError, match="includes no change"):
        resolve_policy(TimbreConfig(pitch_shift=AugmentPolicy(role="negative", low=0.0, high=2.0)))
    with pytest.raises(ValueError, match="time_stretch range low=0.8"):
        resolve_policy(TimbreConfig(time_stretch=AugmentPolicy(role="positive", low=0.8, high=1.25)))
    with pytest.raises(ValueError, match="valid: gain"):
        resolve_policy(TimbreConfig(extra_positives=("chorus",)))


def test_drawn_amounts_stay_in_range_and_both_directions():
    gen = torch.Generator().manual_seed(0)
    s = draw_semitones(AugmentPolicy(role="negative", low=1.0, high=4.0), 500, gen)
    assert torch.all((s.abs() >= 1.0) & (s.abs() <= 4.0)) and (s > 0).any() and (s < 0).any()
    r = draw_rates(AugmentPolicy(role="negative", low=1.1, high=1.25), 500, gen)
    assert torch.all((r.log().abs() >= math.log(1.1) - 1e-9) & (r.log().abs() <= math.log(1.25) + 1e-9))
    assert (r > 1).any() and (r < 1).any()


def test_key_shift_moves_the_pitch_but_keeps_the_envelope():
    """On a harmonic tone: the fundamental moves as with mel_pitch_shift; the envelope moves less."""
    mel = log_mel(tone(220.0, 1.0, harmonics=12), FEAT, SR)
    keyed = mel_key_shift(mel, 7.0, FEAT, SR)
    shifted = mel_pitch_shift(mel, 7.0, FEAT, SR)
    low = slice(0, 8)  # bands below ~500 Hz: the fundamental's
    peak = int(mel[low].mean(1).argmax())
    assert abs(int(keyed[low].mean(1).argmax()) - int(shifted[low].mean(1).argmax())) <= 1
    assert int(keyed[low].mean(1).argmax()) > peak
    env_key = (mel_envelope(keyed) - mel_envelope(mel)).abs().mean()
    env_pitch = (mel_envelope(shifted) - mel_envelope(mel)).abs().mean()
    assert env_key < 0.8 * env_pitch
    assert torch.allclose(mel_key_shift(mel, 0.0, FEAT, SR), mel, atol=1e-4)


def test_key_shift_is_closer_to_the_same_voice_singing_higher_than_pitch_shift():
    """A synthetic singer sings one take in two keys (formants fixed): the key shift of the
    lower take is nearer the higher take than the formant-moving pitch shift is."""
    from recsys.corpus import make_melodies, make_singers, sing

    melody = make_melodies(1, 0)[0]
    for voice in make_singers(3, 0):
        low = log_mel(torch.from_numpy(sing(voice, melody, 4.0, SR, seed=1)), FEAT, SR)
        high = log_mel(torch.from_numpy(sing(voice, melody, 4.0, SR, seed=1, transpose=3)), FEAT, SR)
        voiced = low.mean(0) > low.mean(0).median()
        keyed = mel_key_shift(low, 3.0, FEAT, SR)[:, voiced]
        shifted = mel_pitch_shift(low, 3.0, FEAT, SR)[:, voiced]
        target = high[:, voiced]
        assert (keyed - target).abs().mean() < (shifted - target).abs().mean(), voice.name
        with pytest.raises(ValueError, match="needs feat_cfg"):
            apply_extra(low[None], "key", torch.Generator(), 0.016)


# --- production on a pitch salience (the melody encoder's views) ----------------------------


def tone_then_rest_salience(f0: float = 220.0) -> torch.Tensor:
    """wave_pitch of 1 s of a harmonic tone then 1 s of silence -> (N_PITCH, T) log salience."""
    from recsys import pitch

    wave = torch.cat([tone(f0, 1.0, harmonics=8), torch.zeros(SR)])
    return pitch.wave_pitch(wave, SR, FEAT.hop_length)


def test_produced_salience_keeps_the_note_adds_a_room_tail_and_a_noise_floor():
    from recsys import pitch
    from recsys.augment import produce_salience

    sal = tone_then_rest_salience(220.0)  # MIDI 57, row 17
    row = 57 - pitch.MIDI_LOW
    frame_s = FEAT.hop_length / SR
    views = sal[None].repeat(16, 1, 1)
    out = produce_salience(views, torch.Generator().manual_seed(0), frame_s, pitch.candidate_midi())
    again = produce_salience(views, torch.Generator().manual_seed(0), frame_s, pitch.candidate_midi())
    assert out.shape == views.shape and torch.equal(out, again)
    note, rest = slice(10, 55), slice(70, 120)  # 0.16-0.88 s; 1.12-1.92 s (clear of the STFT's edge)
    # The melody survives: the tone's row is still the strongest in (nearly) every frame of the note.
    assert (out[:, :, note].argmax(1) == row).float().mean() > 0.95
    # A room's tail: just after the note the tone's row is above where it is late in the rest.
    after = out[:, row, 64:68].mean(1)
    late = out[:, row, 110:120].mean(1)
    assert (after > late + 1.0).float().mean() > 0.8
    # A noise floor (with what is left of the tail): the rest rises from the silence's floor to 10-30 dB
    # under the view's mean power.
    floor_db = 10 / math.log(10) * (out[:, :, rest].exp().mean(dim=(1, 2)) / out.exp().mean(dim=(1, 2))).log()
    assert torch.all(floor_db < -3.0) and torch.all(floor_db > -40.0) and floor_db.median() < -8.0
    assert torch.all(out[:, :, rest].mean(dim=(1, 2)) > sal[:, rest].mean() + 1.0)


def test_produced_salience_takes_weight_from_low_fundamentals_as_a_high_pass_does():
    from recsys import pitch
    from recsys.augment import produce_salience

    midi = pitch.candidate_midi()
    flat = torch.zeros(64, pitch.N_PITCH, 50)  # the same salience on every pitch, so only the gain shows
    out = produce_salience(flat, torch.Generator().manual_seed(3), 0.016, midi)
    gain_db = 10 / math.log(10) * (out.exp().mean(-1) / flat.exp().mean(-1)).log().mean(0)  # per row, over views
    low = gain_db[midi < 45].mean()  # fundamentals under 110 Hz: under most drawn cuts (60-250 Hz)
    high = gain_db[midi > 70].mean()  # over 466 Hz: above every cut
    assert high - low > 3.0


def test_melody_views_get_production_only_when_asked():
    from recsys.config import MelodyConfig
    from recsys.training.melody import draw_views

    gen = torch.Generator().manual_seed(0)
    songs = [(tone_then_rest_salience(220.0), torch.rand(126, generator=gen))]
    off = MelodyConfig(equivariant={"pitch_shift": {"role": "off"}, "time_stretch": {"role": "off"}}).equivariant
    on = off.model_copy(update={"production": 1.0})
    plain, w_plain = draw_views(songs, [0] * 4, 100, off, torch.Generator().manual_seed(5))
    produced, w_produced = draw_views(songs, [0] * 4, 100, on, torch.Generator().manual_seed(5))
    assert torch.equal(w_plain, w_produced)  # the same crops; the voicing weight is not the salience's
    assert all(not torch.allclose(p, q) for p, q in zip(plain, produced))
    with pytest.raises(ValueError):
        MelodyConfig(equivariant={"production": 1.5})


def test_vibrato_swings_a_held_note_by_its_depth_at_its_rate_and_keeps_its_power():
    from recsys import pitch
    from recsys.augment import SALIENCE_VIBRATO_CENTS, SALIENCE_VIBRATO_HZ, vibrato_salience

    frame_s, frames, row = 0.016, 125, 17  # a note held 2 s on row 17 over a floor 60 dB down
    sal = torch.full((pitch.N_PITCH, frames), math.log(1e-6))
    sal[row] = 0.0
    views = sal.expand(32, -1, -1).clone()
    out = vibrato_salience(views, torch.Generator().manual_seed(0), frame_s)
    assert torch.equal(out, vibrato_salience(views, torch.Generator().manual_seed(0), frame_s))
    power = out.exp()
    rows = torch.arange(pitch.N_PITCH, dtype=out.dtype)[None, :, None]
    swing = (power * rows).sum(1) / power.sum(1) - row  # (views, frames) semitones from the note
    low, high = SALIENCE_VIBRATO_CENTS[0] / 100, SALIENCE_VIBRATO_CENTS[1] / 100
    peak = swing.abs().amax(-1)  # 2 s hold several cycles: each view reaches its peak
    assert bool((peak > 0.95 * low).all()) and bool((peak < 1.01 * high).all())
    assert bool((swing.amax(-1) > 0).all()) and bool((swing.amin(-1) < 0).all())  # up and down
    assert float(peak.max() - peak.min()) > 0.3  # each view its own depth
    crossings = ((swing[:, 1:] > 0) != (swing[:, :-1] > 0)).sum(-1).float()  # two a cycle
    seconds = frames * frame_s
    assert bool((crossings >= 2 * SALIENCE_VIBRATO_HZ[0] * seconds - 2).all())
    assert bool((crossings <= 2 * SALIENCE_VIBRATO_HZ[1] * seconds + 2).all())
    assert torch.allclose(power.sum(1), sal.exp().sum(0).expand(32, -1), rtol=1e-4)  # moved, not made
    assert int((power.argmax(1) - row).abs().max()) <= 1  # within a semitone of the note


def test_melody_views_get_vibrato_only_when_asked():
    from recsys.config import MelodyConfig
    from recsys.training.melody import draw_views

    gen = torch.Generator().manual_seed(0)
    songs = [(tone_then_rest_salience(220.0), torch.rand(126, generator=gen))]
    off = MelodyConfig(equivariant={"pitch_shift": {"role": "off"}, "time_stretch": {"role": "off"},
                                    "vibrato": 0.0}).equivariant
    assert MelodyConfig().equivariant.vibrato == 0.5  # the default: half the views
    plain, w_plain = draw_views(songs, [0] * 4, 100, off, torch.Generator().manual_seed(5))
    again, _ = draw_views(songs, [0] * 4, 100, off.model_copy(update={"vibrato": 0.0}), torch.Generator().manual_seed(5))
    sung, w_sung = draw_views(songs, [0] * 4, 100, off.model_copy(update={"vibrato": 1.0}),
                              torch.Generator().manual_seed(5))
    assert torch.equal(plain, again) and torch.equal(w_plain, w_sung)
    assert all(not torch.allclose(p, q) for p, q in zip(plain, sung))
    with pytest.raises(ValueError):
        MelodyConfig(equivariant={"vibrato": -0.1})
