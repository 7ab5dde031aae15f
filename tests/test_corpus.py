"""The synthetic singing catalog: determinism, the manifest, pitch accuracy, timbre, stems."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recsys.config import FeatureConfig
from recsys.corpus import (
    CONSONANTS,
    MANIFEST_COLUMNS,
    STEM_COLUMNS,
    VOWELS,
    accompany,
    assign_melodies,
    generate_corpus,
    key_for,
    make_melodies,
    make_singers,
    note_schedule,
    sing,
)
from recsys.features import log_mel

SR = 16000


# --- Reference measurements, independent of the synthesiser ------------------------------------


def note_f0(x: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 1100.0, n_harm: int = 5) -> float:
    """Mean f0 (Hz) of a sung note.

    A harmonic-comb search (log power on the harmonics minus between them) finds the octave;
    the power centroid of the strongest of the first three harmonics then gives the mean
    frequency (the centroid of a frequency-modulated tone is its mean frequency, vibrato or not).
    """
    n = 1 << 17
    power = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)), n)) ** 2
    logp = np.log(power + 1e-12)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)

    def at(f: np.ndarray) -> np.ndarray:
        return logp[np.minimum(np.round(f * n / sr).astype(int), len(logp) - 1)]

    cands = fmin * 2.0 ** (np.arange(0.0, np.log2(fmax / fmin), 1.0 / 120.0))[:, None]
    k = np.arange(1, n_harm + 1)
    on = at(cands * k).mean(axis=1)
    off = np.mean([at(cands * (k - q)).mean(axis=1) for q in (1 / 3, 1 / 2, 2 / 3)], axis=0)
    coarse = float(cands[np.argmax(on - off), 0])
    best_energy, best_f0 = -1.0, coarse
    for h in (1, 2, 3):
        band = (freqs > h * coarse * 0.88) & (freqs < h * coarse * 1.12)
        energy = float(power[band].sum())
        if energy > best_energy:
            best_energy, best_f0 = energy, float((freqs[band] * power[band]).sum() / energy) / h
    return best_f0


def envelope(y: np.ndarray) -> np.ndarray:
    """Mean log-mel profile (48,) of the loud frames, loudness-normalised as the product does."""
    y = y * (0.1 / np.sqrt(np.mean(y**2)))
    lm = log_mel(torch.from_numpy(y), FeatureConfig(), SR).numpy()  # (48, T)
    energy = lm.mean(axis=0)
    profile = lm[:, energy > np.percentile(energy, 95) - 2.0].mean(axis=1)
    return profile - profile.mean()


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- Singers and melodies --------------------------------------------------------------------------


def test_singers_are_deterministic_varied_and_overlapping():
    singers = make_singers(24, seed=0)
    assert singers == make_singers(24, seed=0)
    assert singers != make_singers(24, seed=1)
    assert len({s.name for s in singers}) == 24
    assert {s.register for s in singers} == {"low", "mid", "high"}
    assert {s.gender for s in singers} == {"male", "female"}
    assert all(s.gender == "male" for s in singers if s.register == "low")
    assert all(s.gender == "female" for s in singers if s.register == "high")
    assert len({s.style for s in singers}) >= 2
    # Not trivially separable: ranges of male and female singers overlap, so do tract lengths.
    male = [s for s in singers if s.gender == "male"]
    female = [s for s in singers if s.gender == "female"]
    assert max(s.range_midi[1] for s in male) > min(s.range_midi[0] for s in female) + 6
    many = make_singers(96, seed=0)
    assert max(s.tract_length_cm for s in many if s.gender == "female") > min(
        s.tract_length_cm for s in many if s.gender == "male"
    )
    lo_hz = min(s.f0_range_hz[0] for s in male)
    hi_hz = max(s.f0_range_hz[1] for s in female)
    assert 70 < lo_hz < 110 and 600 < hi_hz < 900


def test_melodies_are_deterministic_musical_and_prefix_stable():
    melodies = make_melodies(6, seed=3)
    assert melodies[:4] == make_melodies(4, seed=3)
    assert melodies != make_melodies(6, seed=4)
    steps: list[int] = []
    for m in melodies:
        assert len(m.pitches) == len(m.durations) == len(m.syllables)
        assert m.n_beats % 4 == 0  # whole 4/4 bars
        assert any(p is None for p in m.pitches)  # phrases end with rests
        scale = {0, 2, 4, 5, 7, 9, 11} if m.mode == "major" else {0, 2, 3, 5, 7, 8, 10}
        sung = [p for p in m.pitches if p is not None]
        assert all(p % 12 in scale for p in sung)
        assert sung[-1] % 12 == 0  # ends on the tonic
        assert max(sung) - min(sung) <= 19
        steps.extend(np.abs(np.diff(sung)))
        assert all(s == "" if p is None else s[-1] in VOWELS for p, s in zip(m.pitches, m.syllables))
    assert np.mean(np.array(steps) <= 5) > 0.8  # mostly steps and small skips, few leaps


def test_assign_melodies_shares_tunes_across_singers():
    plan = assign_melodies(24, 8, seed=0)
    assert [len(songs) for songs in plan] == [8] * 24
    assert all(len(set(songs)) == 8 for songs in plan)  # nobody sings a tune twice
    singers_of: dict[int, set[int]] = {}
    for s, songs in enumerate(plan):
        for m in songs:
            singers_of.setdefault(m, set()).add(s)
    counts = np.array([len(v) for v in singers_of.values()])
    assert counts.max() <= 4
    assert (counts >= 2).sum() >= 24  # plenty of shared tunes for melody retrieval
    assert (counts == 1).sum() >= 24  # and unique ones


# --- sing ---------------------------------------------------------------------------------------------


def test_sing_is_deterministic_bounded_and_varies_per_take():
    voice, melody = make_singers(2, 0)[1], make_melodies(1, 0)[0]
    y = sing(voice, melody, 3.0, seed=5)
    assert y.dtype == np.float32 and y.shape == (3 * SR,)
    assert np.all(np.abs(y) <= 1.0) and np.sqrt(np.mean(y**2)) > 0.01
    np.testing.assert_array_equal(y, sing(voice, melody, 3.0, seed=5))
    assert not np.array_equal(y, sing(voice, melody, 3.0, seed=6))
    for sr in (22050, 44100):
        assert sing(voice, melody, 1.5, sample_rate=sr).shape == (round(1.5 * sr),)


def test_sing_rejects_bad_arguments():
    voice, melody = make_singers(1, 0)[0], make_melodies(1, 0)[0]
    with pytest.raises(ValueError, match="sample_rate"):
        sing(voice, melody, 1.0, sample_rate=100)
    with pytest.raises(ValueError, match="seconds"):
        sing(voice, melody, 0.0)
    with pytest.raises(ValueError, match="tempo_scale"):
        sing(voice, melody, 1.0, tempo_scale=0.0)
    with pytest.raises(ValueError, match="workers"):
        generate_corpus(Path("unused"), workers=0)


def frame_levels_db(y: np.ndarray, frame: int = 512) -> np.ndarray:
    """RMS level (dBFS) of consecutive non-overlapping frames (512 samples: 32 ms at 16 kHz)."""
    n = len(y) // frame
    rms = np.sqrt(np.mean(y[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1))
    return 20.0 * np.log10(rms + 1e-10)


def test_no_frame_is_far_louder_than_the_singing():
    """The loudest 32 ms frame stays close to the sung level: no consonant or resonance bursts.

    A burst tens of dB above the singing (as /s/ through the higher-pole correction made) sets
    the peak normalisation, so the product's silence removal (relative to the loudest frame)
    then throws the singing away. Over the default catalog's 192 songs (first 6 s), healthy
    takes measure at most 13 dB (median 2 dB); the /s/ bursts measured up to 41 dB.
    """
    voices = make_singers(8, seed=0)  # every voice type and style
    # Tunes whose first seconds hold every kind of syllable onset, the fricative /s/ included.
    melodies = [
        m
        for m in make_melodies(12, seed=0)
        if any(n.syllable[:-1] in ("s", "h") for n in note_schedule(voices[0], m, 6.0))
    ][:3]
    sung_onsets = {n.syllable[:-1] for m in melodies for n in note_schedule(voices[0], m, 6.0)}
    assert sung_onsets == set(CONSONANTS)
    excess = {}
    for voice in voices:
        for k, melody in enumerate(melodies):
            y = sing(voice, melody, 6.0, SR, seed=k)
            levels = frame_levels_db(y)
            sung = levels[levels > np.median(levels) - 20.0]  # rests and reverb tails drop out
            excess[f"{voice.name}/{melody.melody_id}"] = float(levels.max() - np.percentile(sung, 90))
    worst = max(excess, key=excess.get)
    assert excess[worst] < 15.0, f"{worst}: loudest frame {excess[worst]:.1f} dB above the sung level"
    assert np.median(list(excess.values())) < 8.0


@pytest.mark.parametrize("transpose, tempo_scale", [(0, 1.0), (3, 1.2)])
def test_sung_pitch_follows_the_score(transpose, tempo_scale):
    """The f0 of every sustained note is the written note in the singer's key (vibrato, jitter,
    intonation error and room included), with tempo and transposition applied."""
    errors = []
    for voice in make_singers(8, seed=0):  # all voice types and styles
        melody = make_melodies(2, seed=0)[1]
        seconds = 12.0
        y = sing(voice, melody, seconds, SR, seed=1, transpose=transpose, tempo_scale=tempo_scale)
        beat = 60.0 / (melody.tempo_bpm * tempo_scale)
        tonic = key_for(voice, melody) + transpose
        onsets = np.concatenate([[0.0], np.cumsum(melody.durations)[:-1]]) * beat
        skip = max(0.2, 4 * voice.portamento_s) + 0.1  # past the onset glide and consonant
        for onset, beats, pitch in zip(onsets, melody.durations, melody.pitches):
            end = onset + beats * beat * voice.articulation - 0.08
            if pitch is None or end - (onset + skip) < 0.25 or end > seconds:
                continue
            f0 = note_f0(y[int((onset + skip) * SR) : int(end * SR)], SR)
            expected = 440.0 * 2.0 ** ((tonic + pitch - 69) / 12.0)
            errors.append(abs(f0 / expected - 1.0))
    errors = np.array(errors)
    assert len(errors) >= 30
    assert np.median(errors) < 0.01
    assert np.mean(errors < 0.03) >= 0.95
    assert errors.max() < 0.05  # no octave or semitone slips


def test_timbre_is_consistent_within_a_singer_and_distinct_across():
    """Two singers singing the same tune differ in spectral envelope more than two songs of one
    singer (the tune again, another take: other key, tempo, room, microphone and drift)."""
    singers = make_singers(8, seed=0)
    melody = make_melodies(1, seed=0)[0]
    first = [envelope(sing(v, melody, 12.0, seed=1)) for v in singers]
    retake = [envelope(sing(v, melody, 12.0, seed=2)) for v in singers]
    other_key = [envelope(sing(v, melody, 12.0, seed=3, transpose=2, tempo_scale=1.1)) for v in singers]
    between = np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(first, 2)])
    within_take = np.mean([np.linalg.norm(a - b) for a, b in zip(first, retake)])
    within_song = np.mean([np.linalg.norm(a - b) for a, b in zip(first, other_key)])
    assert within_take < within_song  # a new key changes the harmonics the envelope is sampled at
    assert between > 1.5 * within_song
    # Each take's nearest other take is the same singer's.
    takes = np.array(first + other_key)
    dist = np.linalg.norm(takes[:, None] - takes[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    owner = np.arange(len(takes)) % len(singers)
    assert np.mean(owner[dist.argmin(axis=1)] == owner) >= 0.4  # chance: 1/15
    # Same voice type, same tune: still apart (not only a matter of pitch range).
    by_type: dict[str, list[int]] = {}
    for i, v in enumerate(singers):
        by_type.setdefault(f"{v.gender}-{v.register}", []).append(i)
    pairs = [(i, j) for idx in by_type.values() for i, j in itertools.combinations(idx, 2)]
    assert pairs
    same_type = np.mean([np.linalg.norm(first[i] - first[j]) for i, j in pairs])
    print(
        f"envelope distances: between {between:.2f} (same voice type {same_type:.2f}), "
        f"within: retake {within_take:.2f}, new key and tempo {within_song:.2f}"
    )
    assert same_type > within_song and same_type > 2.0 * within_take


def test_accompany_follows_the_key():
    melody = make_melodies(1, seed=2)[0]
    key = 57.0  # A
    y = accompany(melody, key, 8.0, SR, seed=0)
    assert y.shape == (8 * SR,) and y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)
    np.testing.assert_array_equal(y, accompany(melody, key, 8.0, SR, seed=0))
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1.0 / SR)
    band = (freqs > 50) & (freqs < 1000)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0) + 69 - key).astype(int) % 12
    chroma = np.bincount(pitch_class, weights=power[band], minlength=12)
    scale = [0, 2, 4, 5, 7, 9, 11] if melody.mode == "major" else [0, 2, 3, 5, 7, 8, 10, 11]
    assert chroma[scale].sum() / chroma.sum() > 0.8


# --- generate_corpus -----------------------------------------------------------------------------------


def test_generate_corpus_is_byte_identical_and_well_formed(tmp_path):
    args = {"n_singers": 3, "songs_per_singer": 2, "song_seconds": 3.0, "seed": 7}
    calls = []
    manifest = generate_corpus(tmp_path / "a", workers=1, progress=lambda d, t: calls.append((d, t)), **args)
    generate_corpus(tmp_path / "b", workers=1, **args)
    generate_corpus(tmp_path / "c", workers=2, **args)  # process pool: same bytes
    tree = read_tree(tmp_path / "a")
    assert tree == read_tree(tmp_path / "b") == read_tree(tmp_path / "c")
    assert calls[-1] == (6, 6) and len(calls) == 6

    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        rows = list(reader)
    assert len(rows) == 6 and len({r["song_id"] for r in rows}) == 6
    singers = {v.name: v for v in make_singers(3, 7)}
    for r in rows:
        path = manifest.parent / r["path"]
        assert path.exists() and path.parent.name == r["singer"]
        info = sf.info(str(path))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (SR, 3 * SR, 1, "PCM_16")
        v = singers[r["singer"]]
        assert (r["gender"], r["register"], r["style"]) == (v.gender, v.register, v.style)
        assert r["song_id"].startswith(r["singer"] + "_song_")
        assert 60 < float(r["tempo_bpm"]) < 150 and float(r["key_shift"]) == int(r["key_shift"])
    singers_per_melody: dict[str, set[str]] = {}
    for r in rows:
        singers_per_melody.setdefault(r["melody_id"], set()).add(r["singer"])
    assert max(len(s) for s in singers_per_melody.values()) >= 2
    # A shared melody keeps its title; it is a cover, sung by different singers.
    titles = {r["melody_id"]: r["title"] for r in rows}
    assert all(r["title"] == titles[r["melody_id"]] for r in rows)
    # A different seed gives a different catalog.
    generate_corpus(tmp_path / "d", workers=1, **{**args, "seed": 8})
    assert read_tree(tmp_path / "d") != tree


def test_accompaniment_stems_sum_to_the_mix(tmp_path):
    manifest = generate_corpus(
        tmp_path, 2, 2, 3.0, seed=1, accompaniment=True, accompaniment_db=-6.0, workers=1
    )
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS + STEM_COLUMNS
        rows = list(reader)
    for r in rows:
        mix, sr = sf.read(str(tmp_path / r["path"]), dtype="int16")
        vocals, _ = sf.read(str(tmp_path / r["vocals_path"]), dtype="int16")
        backing, _ = sf.read(str(tmp_path / r["accompaniment_path"]), dtype="int16")
        assert sr == SR and mix.shape == vocals.shape == backing.shape == (3 * SR,)
        np.testing.assert_array_equal(
            mix.astype(np.int32), vocals.astype(np.int32) + backing.astype(np.int32)
        )
        level_db = 20 * np.log10(np.std(backing.astype(float)) / np.std(vocals.astype(float)))
        assert level_db == pytest.approx(-6.0, abs=0.3)


def test_key_offset_sings_the_same_catalog_in_another_key(tmp_path):
    args = {"n_singers": 2, "songs_per_singer": 2, "song_seconds": 3.0, "seed": 3, "workers": 1}
    base = generate_corpus(tmp_path / "base", **args)
    up = generate_corpus(tmp_path / "up", key_offset=2, **args)
    with open(base, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(up, newline="", encoding="utf-8") as f:
        rows_up = list(csv.DictReader(f))
    for a, b in zip(rows, rows_up):
        assert (a["song_id"], a["melody_id"], a["tempo_bpm"]) == (b["song_id"], b["melody_id"], b["tempo_bpm"])
        assert int(b["key_shift"]) == int(a["key_shift"]) + 2
        wave_a, _ = sf.read(str(base.parent / a["path"]))
        wave_b, _ = sf.read(str(up.parent / b["path"]))
        # The same take in another key: same length, other samples.
        assert wave_a.shape == wave_b.shape and not np.array_equal(wave_a, wave_b)


# The digest of a small default catalog as generated before the produced-catalog options existed:
# with none of them, the catalog stays byte for byte what it was (same machine and libraries).
DEFAULT_CATALOG_DIGEST = "b146a846aef890c29ca3baa5ac65d2e0a19afae8540999aaf51f9bbe94301632"


def test_default_catalog_is_unchanged_by_the_new_options(tmp_path):
    import hashlib

    from recsys.corpus import STAMP_NAME

    generate_corpus(tmp_path, n_singers=5, songs_per_singer=2, song_seconds=4.0, seed=3, workers=1)
    files = {k: hashlib.sha256(v).hexdigest() for k, v in read_tree(tmp_path).items() if k != STAMP_NAME}
    digest = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    assert digest == DEFAULT_CATALOG_DIGEST, "the default synthetic catalog changed"
