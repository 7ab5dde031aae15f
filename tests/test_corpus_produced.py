"""The produced development catalog: production chain, key/tempo copies, second voice model, cache."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_corpus import envelope, note_f0, read_tree

from recsys import production as P
from recsys.corpus import (
    COPY_COLUMNS,
    MANIFEST_COLUMNS,
    PRODUCTION_COLUMNS,
    STAMP_NAME,
    VOICE_MODEL_COLUMNS,
    generate_corpus,
    make_melodies,
    make_singers,
    sing,
)

SR = 16000


def chain(**changes) -> P.ProductionChain:
    base = P.draw_chain(np.random.default_rng(5), SR)
    return replace(base, **changes)


def tone(freq: float, seconds: float = 2.0) -> np.ndarray:
    return 0.1 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def band_power_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].mean())


def white(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    return 0.05 * np.random.default_rng(seed).standard_normal(int(seconds * SR))


# --- The production chain, stage by stage ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_eq_gain_at_each_band_matches_the_drawn_gain(seed):
    drawn = P.draw_chain(np.random.default_rng(seed), SR)
    for band in drawn.bands:
        alone = replace(drawn, bands=(band,), low_shelf_db=0.0, high_shelf_db=0.0)
        x = tone(band.centre_hz)
        gain = rms_db(P.equalise(x, SR, alone)[SR // 2 :]) - rms_db(x[SR // 2 :])  # after the transient
        assert gain == pytest.approx(band.gain_db, abs=1.0)
        # On white noise: the power in a narrow band around the centre, relative to the input.
        noise = white(seed=seed)
        width = band.centre_hz * 0.03
        measured = band_power_db(P.equalise(noise, SR, alone), band.centre_hz - width, band.centre_hz + width) - (
            band_power_db(noise, band.centre_hz - width, band.centre_hz + width)
        )
        assert measured == pytest.approx(band.gain_db, abs=1.0)


def test_shelves_lift_or_cut_their_end_of_the_spectrum():
    c = chain(bands=(), low_shelf_hz=150.0, low_shelf_db=6.0, high_shelf_hz=4000.0, high_shelf_db=-6.0)
    low, high = tone(50.0, 3.0), tone(7000.0)
    assert rms_db(P.equalise(low, SR, c)[SR:]) - rms_db(low[SR:]) == pytest.approx(6.0, abs=1.0)
    assert rms_db(P.equalise(high, SR, c)[SR:]) - rms_db(high[SR:]) == pytest.approx(-6.0, abs=1.0)


def test_band_limit_passes_the_band_and_attenuates_above_the_cut_off():
    c = chain(highpass_hz=200.0, lowpass_hz=4000.0)
    noise = white()
    out = P.band_limit(noise, SR, c)

    def gain(lo, hi):
        return band_power_db(out, lo, hi) - band_power_db(noise, lo, hi)

    assert abs(gain(600.0, 2000.0)) < 1.0  # pass band
    assert gain(5600.0, 6400.0) < -20.0  # half an octave above the cut-off: 24 dB/octave filters
    assert gain(7200.0, 7900.0) < -30.0
    assert gain(50.0, 90.0) < -20.0  # below the high-pass
    tone_gain = rms_db(P.band_limit(tone(8000.0 * 0.9), SR, c)[SR // 2 :]) - rms_db(tone(7200.0)[SR // 2 :])
    assert tone_gain < -30.0


@pytest.mark.parametrize("colour", P.NOISE_COLOURS)
def test_noise_is_added_at_the_drawn_snr(colour):
    for seed in range(3):
        c = replace(P.draw_chain(np.random.default_rng(seed), SR), noise_colour=colour)
        for x in (tone(440.0), white(seed=seed)):
            noise = P.add_noise(x, c) - x
            assert rms_db(x) - rms_db(noise) == pytest.approx(c.snr_db, abs=1.0)


def test_the_whole_chain_keeps_the_drawn_snr_and_level_on_a_tone():
    c = chain(rt60_s=0.4, snr_db=25.0, level_dbfs=-20.0, noise_colour="white")
    x = tone(1000.0, 3.0)
    out = P.produce(x, SR, c).astype(np.float64)
    clean = P.set_level(P.band_limit(P.equalise(P.reverberate(x, SR, c), SR, c), SR, c), 0.0)
    clean *= np.sqrt(np.mean(out**2) / np.mean(clean**2)) / np.sqrt(1 + 10 ** (-c.snr_db / 10))
    assert rms_db(out) == pytest.approx(-20.0, abs=0.1)
    assert rms_db(clean) - rms_db(out - clean) == pytest.approx(25.0, abs=1.0)


def test_room_impulse_has_the_drawn_wet_level_and_decay():
    c = chain(rt60_s=0.6, wet_db=-10.0)
    h = P.room_impulse(c, SR)
    assert h[0] == 1.0
    tail = h[1:]
    assert 10 * np.log10(np.sum(tail**2)) == pytest.approx(-10.0, abs=0.01)
    first, later = tail[: int(0.1 * SR)], tail[int(0.4 * SR) : int(0.5 * SR)]
    decay_db = 10 * np.log10(np.sum(first**2) / np.sum(later**2))
    assert decay_db > 20.0  # ~60 dB per rt60


# --- The catalog -----------------------------------------------------------------------------------

ARGS = {"n_singers": 4, "songs_per_singer": 2, "song_seconds": 3.0, "seed": 2}
ALL = {"produced": True, "copies": True, "voice_models": ("rosenberg_cascade", "lf_parallel")}


def rows_of(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_produced_catalog_is_deterministic_and_linked(tmp_path):
    a = generate_corpus(tmp_path / "a", workers=1, **ARGS, **ALL)
    generate_corpus(tmp_path / "b", workers=2, **ARGS, **ALL)
    assert read_tree(tmp_path / "a") == read_tree(tmp_path / "b")
    rows = rows_of(a)
    assert tuple(rows[0]) == MANIFEST_COLUMNS + VOICE_MODEL_COLUMNS + PRODUCTION_COLUMNS + COPY_COLUMNS
    originals = {r["song_id"]: r for r in rows if not r["copy_of"]}
    copies = [r for r in rows if r["copy_of"]]
    assert len(originals) == 8 and len(copies) == 8  # a key and a tempo copy per singer
    assert {r["voice_model"] for r in rows} == {"rosenberg_cascade", "lf_parallel"}
    for r in rows:
        assert 20.0 <= float(r["snr_db"]) <= 40.0
    for c in copies:
        o = originals[c["copy_of"]]
        assert (c["singer"], c["melody_id"], c["voice_model"]) == (o["singer"], o["melody_id"], o["voice_model"])
        orig, _ = sf.read(str(a.parent / o["path"]))
        copy, _ = sf.read(str(a.parent / c["path"]))
        if c["copy_kind"] == "pitch":
            assert c["copy_amount"] in ("+2", "-2")
            assert int(c["key_shift"]) == int(o["key_shift"]) + int(c["copy_amount"])
            assert len(copy) == len(orig)
        else:
            rate = float(c["copy_amount"])
            assert rate == pytest.approx(1.1) or rate == pytest.approx(1 / 1.1, abs=1e-4)
            assert len(copy) == round(len(orig) / rate)
    # The produced songs are the clean takes through their chains: same voices, other samples.
    clean = generate_corpus(tmp_path / "clean", workers=1, **ARGS, voice_models=ALL["voice_models"])
    for r in rows_of(clean):
        produced, _ = sf.read(str(a.parent / r["path"]))
        plain, _ = sf.read(str(clean.parent / r["path"]))
        assert produced.shape == plain.shape and not np.array_equal(produced, plain)


def test_pitch_copy_moves_f0_by_two_semitones_and_tempo_copy_keeps_it():
    voice = make_singers(4, 0)[1]
    x = P.set_level(sing(voice, make_melodies(1, 0)[0], 3.0, SR, seed=1), -20.0)
    # Measure on a steady synthetic note: a harmonic tone with vibrato-free f0.
    f0 = 220.0
    t = np.arange(2 * SR) / SR
    note = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * 0.05
    for st in (2.0, -2.0):
        shifted = P.pitch_copy(note, SR, st)
        assert 1200 * np.log2(note_f0(shifted[SR // 4 : -SR // 4], SR) / f0) == pytest.approx(100 * st, abs=10)
        assert len(P.pitch_copy(x, SR, st)) == len(x)
    for rate in (1.1, 1 / 1.1):
        stretched = P.tempo_copy(note, rate)
        assert len(stretched) == round(len(note) / rate)
        assert note_f0(stretched[SR // 4 : -SR // 4], SR) == pytest.approx(f0, rel=0.01)


def test_second_voice_model_has_another_spectral_envelope_for_the_same_notes():
    melody = make_melodies(1, 0)[0]
    two = make_singers(8, 0, voice_models=("rosenberg_cascade", "lf_parallel"))
    one = make_singers(8, 0)
    assert [v.voice_model for v in two] == ["rosenberg_cascade", "lf_parallel"] * 2 + ["lf_parallel", "rosenberg_cascade"] * 2
    n_compared = 0
    for cascade, lf in zip(one, two):
        if lf.voice_model == "rosenberg_cascade":
            assert lf == cascade
            continue
        # The same singer, notes and take, rendered by the other source and tract model.
        assert replace(lf, voice_model=cascade.voice_model, lf_rd=cascade.lf_rd, formant_amps_db=()) == cascade
        a = envelope(sing(cascade, melody, 6.0, SR, seed=1))
        a2 = envelope(sing(cascade, melody, 6.0, SR, seed=2))
        b = envelope(sing(lf, melody, 6.0, SR, seed=1))
        between = float(np.sqrt(np.mean((a - b) ** 2)))
        within = float(np.sqrt(np.mean((a - a2) ** 2)))
        assert between > 0.8 and between > 1.4 * within, (between, within)
        n_compared += 1
        if n_compared == 2:
            break


def test_many_singers_are_distinct_but_overlap():
    singers = make_singers(128, 0, voice_models=("rosenberg_cascade", "lf_parallel"))
    assert len({s.name for s in singers}) == 128
    keys = np.array([[s.tract_length_cm, *s.formant_offsets, s.bandwidth_scale, s.tilt_db_per_oct,
                      s.breathiness_db, *s.colour_db, s.piriform_hz] for s in singers])
    z = (keys - keys.mean(0)) / keys.std(0)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1)) + np.eye(len(z)) * 1e9
    assert d.min() > 0.5  # no two voices alike
    for model in ("rosenberg_cascade", "lf_parallel"):  # every model has every voice type
        types = {(s.gender, s.register) for s in singers if s.voice_model == model}
        assert len(types) == 4
    female = [s.tract_length_cm for s in singers if s.gender == "female"]
    male = [s.tract_length_cm for s in singers if s.gender == "male"]
    assert max(female) > min(male)  # overlapping physiology


def test_the_stamp_skips_regeneration_until_an_argument_changes(tmp_path):
    out = tmp_path / "c"
    args = {**ARGS, "n_singers": 2, "songs_per_singer": 1, "produced": True}
    manifest = generate_corpus(out, workers=1, **args)
    assert (out / STAMP_NAME).is_file()
    wav = out / rows_of(manifest)[0]["path"]
    mtime = wav.stat().st_mtime_ns
    generate_corpus(out, workers=1, **args)
    assert wav.stat().st_mtime_ns == mtime  # cached
    wav.unlink()
    generate_corpus(out, workers=1, **args)  # incomplete: made again
    assert wav.is_file()
    before = wav.read_bytes()
    generate_corpus(out, workers=1, **{**args, "produced": False})
    assert wav.read_bytes() != before
    assert "snr_db" not in rows_of(manifest)[0]
