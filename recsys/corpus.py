"""Deterministic synthetic singing catalog: source-filter singers, melodies, accompaniment.

The demo catalog and the tests need singing without downloads, and the encoders need
something real to learn from it, so the synthesis follows the physics of the voice
rather than being easy to tell apart. It is not the target: the product is judged on
real singing. Everything is NumPy, vectorised over samples or STFT frames.

Signal model of one sung song (`sing`):

    score      melody (repeated to fill the song) -> notes in the singer's key, at the tempo
    f0(t)      notes -> portamento / scoops -> per-note intonation error and slow drift
               -> vibrato (rate wobble, onset delay) -> per-cycle jitter
    source     band-limited Rosenberg glottal-flow-derivative wavetables read at the phase,
               x per-cycle shimmer x note envelope, + aspiration noise gated by the glottal flow
    tract      STFT-domain time-varying filter: cascade of 5 formant resonators (vowel and
               consonant targets scaled by vocal-tract length, coarticulated, F1 tuned to f0),
               spectral tilt that brightens with loudness, singer's formant, fricatives
    recording  per-song microphone EQ and high-pass, room reverb, noise floor, loudness

A singer (`SingerVoice`) fixes the voice; the `seed` of `sing` draws the per-song drift
(tilt, breathiness, vibrato, formants, room, loudness) and all per-note randomness.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import multiprocessing
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from recsys.production import ProductionChain, draw_chain, pitch_copy, produce, tempo_copy
from recsys.voicemodel import RD_RANGE, lf_flow, parallel_formant_response

# --- Phonetics ------------------------------------------------------------------------------

REF_TRACT_CM = 17.0  # vocal-tract length the formant tables below describe (adult male)
VOWELS = ("a", "e", "i", "o", "u")
CONSONANTS = ("", "l", "m", "n", "s", "h")  # "" is a vowel onset

# F1-F3 (Hz) of adult male vowels /ɑ e i o u/, Hillenbrand et al. (1995); F4, F5 near the
# neutral-tube values of a 17 cm tract.
_F45 = (3500.0, 4500.0)
VOWEL_FORMANTS: dict[str, tuple[float, ...]] = {
    "a": (768.0, 1333.0, 2522.0, *_F45),
    "e": (476.0, 2089.0, 2691.0, *_F45),
    "i": (342.0, 2322.0, 3000.0, *_F45),
    "o": (497.0, 910.0, 2459.0, *_F45),
    "u": (378.0, 997.0, 2343.0, *_F45),
}
FORMANT_BANDWIDTHS = (70.0, 95.0, 140.0, 220.0, 300.0)  # Hz, before the singer's scale
_HIGHER_FORMANTS = (5500.0, 6500.0, 7500.0)  # F6-F8 of a 17 cm tract, vowel-independent
_HIGHER_BANDWIDTHS = (450.0, 550.0, 650.0)
_FRICATIVE_GAIN = 0.6  # /s/ filter peak gain (linear) on the consonant noise

# Consonant targets: formants, bandwidth factor, voicing amplitude, duration (s).
# Nasals: low murmur formant, damped upper formants; /l/: low F2; /s/ /h/: unvoiced.
_CONSONANT_TARGETS: dict[str, tuple[tuple[float, ...], float, float, float]] = {
    "l": ((360.0, 1100.0, 2650.0, *_F45), 1.3, 0.55, 0.06),
    "m": ((280.0, 1000.0, 2250.0, *_F45), 2.5, 0.28, 0.07),
    "n": ((280.0, 1550.0, 2550.0, *_F45), 2.5, 0.28, 0.07),
    "s": ((0.0,) * 5, 1.0, 0.0, 0.09),  # formants unused: the fricative filter replaces the tract
    "h": ((0.0,) * 5, 1.0, 0.0, 0.07),  # formants of the following vowel
}

# Voice types: (gender, register, lowest and highest comfortable note, MIDI). Ranges overlap.
VOICE_TYPES: tuple[tuple[str, str, int, int], ...] = (
    ("male", "low", 40, 64),  # bass-baritone, E2-E4 (82-330 Hz)
    ("male", "mid", 47, 69),  # tenor, B2-A4 (123-440 Hz)
    ("female", "mid", 53, 74),  # alto, F3-D5 (175-587 Hz)
    ("female", "high", 58, 79),  # soprano, A#3-G5 (233-784 Hz)
)
STYLES = ("legato", "staccato", "pop")
# Glottal source + vocal tract: Rosenberg pulses through a formant cascade (below), or the
# LF model through a parallel formant bank (recsys.voicemodel).
VOICE_MODELS = ("rosenberg_cascade", "lf_parallel")

MIN_SAMPLE_RATE = 8000
_WAVETABLE_LEN = 2048  # samples per glottal cycle in the wavetables
_BANDS_PER_OCTAVE = 6  # wavetables per octave of f0 (band-limiting resolution)
_F0_TABLE_MIN = 40.0  # Hz, lowest f0 the wavetables cover
_N_F0_BANDS = 34  # 40 Hz .. 40 * 2**(34/6) ~ 2 kHz


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(midi) - 69.0) / 12.0)


def _stable_hash(text: str) -> int:
    """A seed from a name that is the same in every process (unlike hash())."""
    return zlib.crc32(text.encode("utf-8"))


# --- Singers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingerVoice:
    """One synthetic singer: the fixed physiology and habits a song varies around."""

    name: str
    gender: str  # "male" | "female", from the voice type
    register: str  # "low" | "mid" | "high"
    style: str  # "legato" | "staccato" | "pop"
    range_midi: tuple[float, float]  # lowest, highest comfortable note
    tract_length_cm: float  # scales all formants by REF_TRACT_CM / length
    formant_offsets: tuple[float, ...]  # per-formant idiosyncrasy (x F1..F5)
    bandwidth_scale: float
    open_quotient: float  # glottal pulse: open fraction of the cycle
    speed_quotient: float  # glottal pulse: opening / closing time
    tilt_db_per_oct: float  # extra source tilt above 400 Hz (negative: darker)
    breathiness_db: float  # aspiration noise relative to the voiced source
    singers_formant_db: float  # boost of the 2.5-3.5 kHz formant cluster
    nasality_db: float  # depth of the nasal anti-resonance near 1 kHz (velum open)
    piriform_hz: float  # anti-resonance of the piriform sinuses (4-5.5 kHz), a speaker-specific dip
    piriform_db: float
    colour_db: tuple[float, ...]  # individual resonance colour at 0.5, 1, 2, 4 kHz (x formant scale)
    vibrato_rate_hz: float
    vibrato_depth_cents: float  # peak deviation
    vibrato_delay_s: float  # from note onset to full vibrato
    jitter: float  # std of the per-cycle relative period perturbation
    shimmer_db: float  # std of the per-cycle amplitude perturbation
    intonation_cents: float  # std of the per-note pitch error
    portamento_s: float  # glide time constant between connected notes
    scoop_semitones: float  # onset glide from below on unconnected notes
    articulation: float  # sounded fraction of each note's written length
    attack_s: float
    voice_model: str = "rosenberg_cascade"  # one of VOICE_MODELS
    lf_rd: float = 1.0  # lf_parallel: the LF source's shape parameter Rd
    formant_amps_db: tuple[float, ...] = ()  # lf_parallel: levels of F1-F8 in the parallel bank

    @property
    def formant_scale(self) -> float:
        return REF_TRACT_CM / self.tract_length_cm

    @property
    def f0_range_hz(self) -> tuple[float, float]:
        return float(midi_to_hz(self.range_midi[0])), float(midi_to_hz(self.range_midi[1]))


def _singer(name: str, voice_type: int, rng: np.random.Generator) -> SingerVoice:
    gender, register, lo, hi = VOICE_TYPES[voice_type]
    style = STYLES[int(rng.integers(len(STYLES)))]
    shift = rng.uniform(-2.0, 2.0)
    lo_midi, hi_midi = lo + shift + rng.uniform(-1.0, 1.0), hi + shift + rng.uniform(-1.0, 1.0)
    # Tract length: male 15.4-19.0 cm, female 13.3-16.9 cm (overlapping), lower voices a bit longer.
    base = 17.2 if gender == "male" else 15.1
    tract = float(
        np.clip(
            base + (0.4 if register == "low" else -0.2 if register == "high" else 0.0) + rng.normal(0.0, 0.8),
            base - 1.8,
            base + 1.8,
        )
    )
    offsets = tuple(float(x) for x in np.clip(rng.normal(1.0, 0.06, 5), 0.88, 1.12))
    if style == "legato":
        art, port, attack, vib_delay, scoop = (
            rng.uniform(0.93, 1.0),
            rng.uniform(0.04, 0.09),
            rng.uniform(0.04, 0.08),
            rng.uniform(0.12, 0.35),
            rng.uniform(0.1, 0.5),
        )
        depth = rng.uniform(30.0, 80.0)
    elif style == "staccato":
        art, port, attack, vib_delay, scoop = (
            rng.uniform(0.45, 0.7),
            rng.uniform(0.01, 0.025),
            rng.uniform(0.01, 0.025),
            rng.uniform(0.25, 0.55),
            rng.uniform(0.0, 0.3),
        )
        depth = rng.uniform(20.0, 65.0)
    else:  # pop: scooped onsets, late and shallow vibrato, breathier
        art, port, attack, vib_delay, scoop = (
            rng.uniform(0.8, 0.93),
            rng.uniform(0.03, 0.06),
            rng.uniform(0.02, 0.05),
            rng.uniform(0.35, 0.7),
            rng.uniform(0.8, 2.0),
        )
        depth = rng.uniform(10.0, 40.0)
    return SingerVoice(
        name=name,
        gender=gender,
        register=register,
        style=style,
        range_midi=(round(float(lo_midi), 2), round(float(hi_midi), 2)),
        tract_length_cm=round(tract, 3),
        formant_offsets=offsets,
        bandwidth_scale=float(rng.uniform(0.8, 1.35)),
        open_quotient=float(rng.uniform(0.45, 0.8)),
        speed_quotient=float(rng.uniform(1.5, 3.5)),
        tilt_db_per_oct=float(rng.uniform(-4.0, 2.0)),
        breathiness_db=float(rng.uniform(-32.0, -14.0) + (3.0 if style == "pop" else 0.0)),
        singers_formant_db=float(rng.uniform(0.0, 9.0) if style == "legato" else rng.uniform(0.0, 4.0)),
        nasality_db=float(rng.uniform(0.0, 12.0) if rng.random() < 0.6 else 0.0),
        piriform_hz=float(rng.uniform(4000.0, 5500.0) * REF_TRACT_CM / tract),
        piriform_db=float(rng.uniform(4.0, 15.0)),
        colour_db=tuple(float(x) for x in rng.normal(0.0, 3.0, 4)),
        vibrato_rate_hz=float(rng.uniform(4.6, 6.8)),
        vibrato_depth_cents=float(depth),
        vibrato_delay_s=float(vib_delay),
        jitter=float(rng.uniform(0.002, 0.012)),
        shimmer_db=float(rng.uniform(0.2, 0.8)),
        intonation_cents=float(rng.uniform(4.0, 16.0)),
        portamento_s=float(port),
        scoop_semitones=float(scoop),
        articulation=float(art),
        attack_s=float(attack),
    )


def _second_model(voice: SingerVoice, rng: np.random.Generator) -> SingerVoice:
    """The singer made with the LF source and the parallel formant bank (recsys.voicemodel)."""
    rd = rng.uniform(*RD_RANGE) + (0.3 if voice.style == "pop" else 0.0)  # breathier pop singers
    amps = (0.0, *(-float(k) * rng.uniform(3.0, 6.5) for k in range(1, 5)), -30.0, -34.0, -38.0)
    return replace(voice, voice_model="lf_parallel", lf_rd=round(float(rd), 3), formant_amps_db=amps)


def make_singers(
    n: int, seed: int, voice_models: tuple[str, ...] = ("rosenberg_cascade",)
) -> list[SingerVoice]:
    """`n` distinct singers, deterministic in `seed`; voice types are balanced (n/4 each).

    `voice_models` (names in VOICE_MODELS) are dealt out in turn, and in turn within each
    voice type, so every model has low and high, male and female voices; a singer's voice
    (range, tract, habits) is the same whatever model renders it.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 singers, got {n}")
    unknown = [m for m in voice_models if m not in VOICE_MODELS]
    if not voice_models or unknown:
        raise ValueError(f"voice_models must name some of {VOICE_MODELS}, got {voice_models!r}")
    order = np.random.default_rng([seed, 0x5149]).permutation(len(VOICE_TYPES))
    width = max(2, len(str(n - 1)))
    out = []
    for i in range(n):
        voice = _singer(
            f"singer_{i:0{width}d}", int(order[i % len(VOICE_TYPES)]), np.random.default_rng([seed, 1, i])
        )
        if voice_models[(i + i // len(VOICE_TYPES)) % len(voice_models)] == "lf_parallel":
            voice = _second_model(voice, np.random.default_rng([seed, 7, i]))
        out.append(voice)
    return out


# --- Melodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Melody:
    """A tune: notes in semitones above the tonic of the key it is written in."""

    melody_id: str
    title: str
    mode: str  # "major" | "minor"
    tonic_midi: int  # the written key (MIDI note of the tonic)
    tempo_bpm: float
    pitches: tuple[int | None, ...]  # semitones above the tonic; None is a rest
    durations: tuple[float, ...]  # beats
    syllables: tuple[str, ...]  # consonant + vowel per note ("la", "o", "mi"); "" for rests

    @property
    def n_beats(self) -> float:
        return float(sum(self.durations))

    @property
    def span(self) -> tuple[int, int]:
        sung = [p for p in self.pitches if p is not None]
        return min(sung), max(sung)

    def seconds(self, tempo_scale: float = 1.0) -> float:
        """Length of one pass through the tune."""
        return self.n_beats * 60.0 / (self.tempo_bpm * tempo_scale)


_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
_BAR_RHYTHMS = (
    (1, 1, 1, 1),
    (2, 1, 1),
    (1, 1, 2),
    (1.5, 0.5, 1, 1),
    (0.5, 0.5, 1, 2),
    (1, 0.5, 0.5, 2),
    (2, 2),
    (1, 1, 1, 0.5, 0.5),
    (0.5, 0.5, 0.5, 0.5, 1, 1),
    (3, 1),
    (1, 2, 1),
)
# Phrase-final bars: a long note then a rest (negative duration marks the rest).
_CADENCE_RHYTHMS = ((1, 1, 1.5, -0.5), (2, 1, -1), (1, 0.5, 0.5, 1, -1), (3, -1), (1, 2, -1))
_STEPS = np.array([-2, -1, 1, 2, -3, 3, 4, -4])
_STEP_P = np.array([0.12, 0.3, 0.3, 0.12, 0.05, 0.05, 0.03, 0.03])
_VOWEL_BLOCK = np.array([0, 0, 1, 2, 3, 3, 4])  # indices into VOWELS: /a/ and /o/ twice per block
_CONSONANT_P = np.array([0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
_WORDS_A = (
    "Silver",
    "Quiet",
    "Golden",
    "Distant",
    "Broken",
    "Summer",
    "Blue",
    "Wild",
    "Paper",
    "Northern",
    "Hollow",
    "Bright",
    "Last",
    "Slow",
    "Winter",
    "Crimson",
)
_WORDS_B = (
    "River",
    "Morning",
    "Light",
    "Harbour",
    "Road",
    "Garden",
    "Lullaby",
    "Window",
    "Sky",
    "Letter",
    "Station",
    "Field",
    "Song",
    "Tide",
    "Heart",
    "Lantern",
)


def _phrase(rng: np.random.Generator, n_deg: int, start: int, final: int, bars: int = 2) -> list[list[tuple]]:
    """One phrase as bars of (degree | None, beats): a random walk on scale degrees ending on `final`."""
    out: list[list[tuple]] = []
    deg = start
    prev_step = 0
    first = True
    for bar in range(bars):
        notes: list[tuple] = []
        cadence = bar == bars - 1
        pool = _CADENCE_RHYTHMS if cadence else _BAR_RHYTHMS
        rhythm = pool[int(rng.integers(len(pool)))]
        sounded = [d for d in rhythm if d > 0]
        for k, beats in enumerate(rhythm):
            if beats < 0:
                notes.append((None, -beats))
                continue
            if cadence and k == len(sounded) - 1:
                deg = final + 7 * round((deg - final) / 7.0)  # the closest octave of the goal
                deg = deg if -2 <= deg <= n_deg else final
            elif first:
                first = False
            else:
                step = int(rng.choice(_STEPS, p=_STEP_P))
                if abs(prev_step) >= 3:  # after a leap, step back the other way
                    step = -int(np.sign(prev_step))
                if not -2 <= deg + step <= n_deg:
                    step = -step
                deg += step
                prev_step = step
            notes.append((deg, float(beats)))
        out.append(notes)
    return out


def _melody(melody_id: str, rng: np.random.Generator) -> Melody:
    mode = "major" if rng.random() < 0.6 else "minor"
    scale = _SCALES[mode]
    n_deg = 7 + int(rng.integers(0, 3))  # highest scale degree index: about an octave

    def semis(deg: int) -> int:
        octave, step = divmod(deg, 7)
        return 12 * octave + scale[step]

    a = _phrase(rng, n_deg, int(rng.choice([0, 2, 4])), int(rng.choice([2, 4])))
    b = _phrase(rng, n_deg, int(rng.choice([2, 4, 5])), 4)  # half cadence on the dominant
    # A' keeps A's first bar and ends on the tonic instead.
    a2 = a[0] + _phrase(rng, n_deg, int(rng.choice([0, 2, 4, 5])), int(rng.choice([0, 2])), bars=1)[0]
    c = _phrase(rng, n_deg, int(rng.choice([4, 5, 7])), 0)  # authentic cadence on the tonic
    form = [note for bar in a + b for note in bar] + a2 + [note for bar in c for note in bar]
    # Lyrics: vowels drawn in shuffled blocks so that every tune uses them all about equally
    # (over a song the vowel mix is the language's, not a fingerprint of the tune).
    vowel_blocks = np.concatenate(
        [rng.permutation(_VOWEL_BLOCK) for _ in range(len(form) // len(_VOWEL_BLOCK) + 1)]
    )
    pitches, durations, syllables = [], [], []
    for deg, beats in form:
        pitches.append(None if deg is None else semis(deg))
        durations.append(float(beats))
        if deg is None:
            syllables.append("")
            continue
        vowel = VOWELS[int(vowel_blocks[len(syllables)])]
        consonant = CONSONANTS[int(rng.choice(len(CONSONANTS), p=_CONSONANT_P))]
        if beats < 1 and consonant not in ("", "l"):
            consonant = ""
        syllables.append(consonant + vowel)
    title = f"{_WORDS_A[int(rng.integers(len(_WORDS_A)))]} {_WORDS_B[int(rng.integers(len(_WORDS_B)))]}"
    return Melody(
        melody_id=melody_id,
        title=title,
        mode=mode,
        tonic_midi=int(rng.integers(55, 67)),
        tempo_bpm=round(float(rng.uniform(72.0, 136.0)), 1),
        pitches=tuple(pitches),
        durations=tuple(durations),
        syllables=tuple(syllables),
    )


def make_melodies(n: int, seed: int) -> list[Melody]:
    """`n` tunes (form A B A' C, 8 bars of 4/4), deterministic in `seed`.

    Melody i depends only on (seed, i), so make_melodies(3, s) == make_melodies(5, s)[:3].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 melodies, got {n}")
    width = max(3, len(str(n - 1)))
    return [_melody(f"melody_{i:0{width}d}", np.random.default_rng([seed, 2, i])) for i in range(n)]


# --- Score: which notes a singer sings, when --------------------------------------------------


@dataclass(frozen=True)
class SungNote:
    """One written note as performed: time span in the song and target pitch (no expression)."""

    onset_s: float
    offset_s: float  # end of the written duration (the singer may stop earlier)
    midi: float
    syllable: str


def key_for(voice: SingerVoice, melody: Melody) -> int:
    """MIDI tonic that centres `melody`'s range in `voice`'s range (whole semitones)."""
    lo, hi = melody.span
    return round((voice.range_midi[0] + voice.range_midi[1]) / 2.0 - (lo + hi) / 2.0)


def note_schedule(
    voice: SingerVoice, melody: Melody, seconds: float, transpose: float = 0.0, tempo_scale: float = 1.0
) -> list[SungNote]:
    """The notes `sing` performs: the melody in the singer's key, repeated to fill `seconds`.

    Rests are left out; the tonic is key_for(voice, melody) + transpose.
    """
    if tempo_scale <= 0:
        raise ValueError(f"tempo_scale must be > 0, got {tempo_scale}")
    beat = 60.0 / (melody.tempo_bpm * tempo_scale)
    tonic = key_for(voice, melody) + transpose
    starts = np.concatenate([[0.0], np.cumsum(melody.durations)[:-1]]) * beat
    period = melody.n_beats * beat
    lyrics = [s for p, s in zip(melody.pitches, melody.syllables) if p is not None]
    notes: list[SungNote] = []
    for rep in range(math.ceil(seconds / period)):
        k = 0
        for start, beats, pitch in zip(starts, melody.durations, melody.pitches):
            onset = rep * period + float(start)
            if pitch is None:
                continue
            if onset < seconds:
                # Each repeat is a new verse: the lyrics shift along the tune.
                syllable = lyrics[(k + 7 * rep) % len(lyrics)]
                if beats * beat < 0.35 and syllable[:-1] not in ("", "l"):
                    syllable = syllable[-1]  # no slow consonant on a quick note
                notes.append(SungNote(onset, onset + beats * beat, tonic + pitch, syllable))
            k += 1
    return notes


# --- Glottal source ----------------------------------------------------------------------------


def _rosenberg_flow(phase: np.ndarray, open_q: float, speed_q: float) -> np.ndarray:
    """Rosenberg glottal flow in [0, 1] at cycle phase in [0, 1)."""
    t_open = open_q * speed_q / (1.0 + speed_q)
    t_close = open_q / (1.0 + speed_q)
    rising = 0.5 * (1.0 - np.cos(np.pi * phase / t_open))
    falling = np.cos(0.5 * np.pi * np.clip(phase - t_open, 0.0, None) / t_close)
    return np.where(phase < t_open, rising, np.where(phase < t_open + t_close, falling, 0.0))


@functools.lru_cache(maxsize=32)
def _glottal_tables(open_q: float, speed_q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Band-limited glottal-flow-derivative wavetables, one per f0 band, and the flow itself.

    Returns (tables (N_F0_BANDS, L) float32 with unit RMS at full band, flow (L,) float32).
    Table j holds the harmonics below Nyquist at the top f0 of band j, tapered to avoid ringing.
    """
    fine = 8 * _WAVETABLE_LEN
    flow_fine = _rosenberg_flow(np.arange(fine) / fine, open_q, speed_q)
    flow = _rosenberg_flow(np.arange(_WAVETABLE_LEN) / _WAVETABLE_LEN, open_q, speed_q).astype(np.float32)
    return _band_limited_tables(flow_fine, sample_rate), flow


@functools.lru_cache(maxsize=32)
def _lf_tables(rd: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """As _glottal_tables for the LF-model source of the second voice model (recsys.voicemodel)."""
    fine = 8 * _WAVETABLE_LEN
    flow_fine = lf_flow(np.arange(fine) / fine, rd)
    return _band_limited_tables(flow_fine, sample_rate), flow_fine[::8].astype(np.float32)


def _band_limited_tables(flow_fine: np.ndarray, sample_rate: int) -> np.ndarray:
    """One cycle of glottal flow (finely sampled) -> its derivative's band-limited wavetables."""
    spectrum = np.fft.rfft(np.diff(flow_fine, append=flow_fine[:1]))  # derivative = radiated
    spectrum[0] = 0.0
    n_harm = _WAVETABLE_LEN // 2 - 1
    harmonics = np.arange(1, n_harm + 1)
    tables = np.empty((_N_F0_BANDS, _WAVETABLE_LEN), dtype=np.float32)
    for j in range(_N_F0_BANDS):
        f0_top = _F0_TABLE_MIN * 2.0 ** ((j + 1) / _BANDS_PER_OCTAVE)
        k_max = max(1.0, 0.5 * sample_rate / f0_top)
        taper = np.clip((k_max - harmonics) / (0.15 * k_max + 1.0), 0.0, 1.0)
        spec = np.zeros(_WAVETABLE_LEN // 2 + 1, dtype=np.complex128)
        spec[1 : n_harm + 1] = spectrum[1 : n_harm + 1] * taper
        tables[j] = np.fft.irfft(spec, _WAVETABLE_LEN)
    full = np.zeros(_WAVETABLE_LEN // 2 + 1, dtype=np.complex128)
    full[1 : n_harm + 1] = spectrum[1 : n_harm + 1]
    tables /= np.sqrt(np.mean(np.fft.irfft(full, _WAVETABLE_LEN) ** 2))
    return tables


def _f0_band(f0: np.ndarray | float) -> np.ndarray:
    """Index of the wavetable whose harmonics stay below Nyquist at f0 (Hz)."""
    band = _BANDS_PER_OCTAVE * np.log2(np.maximum(f0, 1.0) / _F0_TABLE_MIN)
    return np.clip(np.asarray(band).astype(np.int64), 0, _N_F0_BANDS - 1)


def _read_tables(tables: np.ndarray, phase: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Wavetable oscillator: phase in cycles and table index (_f0_band), broadcastable -> samples."""
    length = tables.shape[1]
    pos = (phase % 1.0) * length
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    flat = tables.ravel()
    base = band * length
    return flat[base + i0] * (1.0 - frac) + flat[base + (i0 + 1) % length] * frac


# --- Helpers on sample and frame grids -------------------------------------------------------------


def _smooth(x: np.ndarray, width: int, axis: int = 0) -> np.ndarray:
    """Centred moving average of `width` samples along `axis` (edges held)."""
    if width <= 1:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (width // 2, width - 1 - width // 2)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    n = x.shape[axis]
    return (
        (np.take(c, np.arange(width, width + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / width
    ).astype(x.dtype)


def _smooth_noise(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """(n,) unit-variance-ish random curve varying at about `rate_hz` (linear interpolation of knots)."""
    n_knots = max(2, math.ceil(n / sample_rate * rate_hz) + 2)
    knots = rng.normal(0.0, 1.0, n_knots)
    return np.interp(np.arange(n) * (n_knots - 1) / max(n, 1), np.arange(n_knots), knots)


def _stft_size(sample_rate: int) -> tuple[int, int]:
    """(window, hop): ~32 ms window, 75 % overlap, a power of two."""
    win = 1 << round(math.log2(0.032 * sample_rate))
    return win, win // 4


def _stft(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """(N,) -> (T, win // 2 + 1) complex64 Hann STFT; frame t is centred on sample t * hop."""
    padded = np.pad(x, (win // 2, win + hop))
    n_frames = len(x) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[: n_frames * hop : hop]
    window = np.hanning(win + 1)[:-1].astype(np.float32)
    return np.fft.rfft(frames * window, axis=-1).astype(np.complex64)


def _istft(spec: np.ndarray, win: int, hop: int, n: int) -> np.ndarray:
    """Inverse of _stft by weighted overlap-add (Hann, 75 % overlap) -> (n,) float32."""
    window = np.hanning(win + 1)[:-1].astype(np.float32)
    frames = np.fft.irfft(spec, win, axis=-1).astype(np.float32) * window
    n_frames = len(frames)
    ratio = win // hop
    out = np.zeros((n_frames + ratio) * hop + win, dtype=np.float32)
    for r in range(ratio):  # frames r, r + ratio, ... tile without overlap: add them as one block
        block = frames[r::ratio]
        out[r * hop : r * hop + block.size] += block.ravel()
    norm = np.sum(window**2) / hop  # constant overlap-add gain of Hann^2 at 75 % overlap
    return out[win // 2 : win // 2 + n] / norm


# --- Singing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Take:
    """Per-song drift of a singer and the recording conditions, drawn from the song's seed."""

    tilt_db_per_oct: float
    breathiness_db: float
    vibrato_rate_hz: float
    vibrato_depth_cents: float
    formant_scale: float
    level_dbfs: float
    room_rt60_s: float
    room_wet_db: float
    eq_centres_oct: tuple[float, ...]
    eq_gains_db: tuple[float, ...]
    highpass_hz: float
    noise_dbfs: float


def _take(voice: SingerVoice, rng: np.random.Generator) -> _Take:
    return _Take(
        tilt_db_per_oct=voice.tilt_db_per_oct + rng.normal(0.0, 0.3),
        breathiness_db=voice.breathiness_db + rng.normal(0.0, 1.5),
        vibrato_rate_hz=voice.vibrato_rate_hz * (1.0 + rng.normal(0.0, 0.04)),
        vibrato_depth_cents=voice.vibrato_depth_cents * float(np.clip(rng.normal(1.0, 0.08), 0.85, 1.15)),
        formant_scale=voice.formant_scale * (1.0 + rng.normal(0.0, 0.012)),
        level_dbfs=float(rng.uniform(-26.0, -16.0)),
        room_rt60_s=float(rng.uniform(0.15, 0.8)),
        room_wet_db=float(rng.uniform(-24.0, -11.0)),
        eq_centres_oct=tuple(float(x) for x in rng.uniform(7.0, 12.5, 3)),  # log2 Hz: 128 Hz .. 5.8 kHz
        eq_gains_db=tuple(float(x) for x in rng.normal(0.0, 0.8, 3)),
        highpass_hz=float(rng.uniform(40.0, 90.0)),
        noise_dbfs=float(rng.uniform(-85.0, -70.0)),
    )


@dataclass
class _Notes:
    """The performed notes as arrays (M,), with what the singer adds to the score."""

    onset: np.ndarray  # s
    sounded: np.ndarray  # s the voice sounds from the onset
    midi: np.ndarray  # target pitch including the intonation error
    prev_midi: np.ndarray  # pitch the onset glides from
    glide_s: np.ndarray  # glide time constant
    start_level: np.ndarray  # envelope at the onset (legato notes start from the previous level)
    gain_db: np.ndarray
    vibrato_scale: np.ndarray
    consonant: np.ndarray  # index into CONSONANTS
    vowel: np.ndarray  # index into VOWELS
    consonant_s: np.ndarray

    def index(self, t: np.ndarray) -> np.ndarray:
        """Note sounding (or last sounded) at times t (s) -> (len(t),) int, -1 before the first."""
        return np.searchsorted(self.onset, t, side="right") - 1


def _perform(voice: SingerVoice, score: list[SungNote], take: _Take, rng: np.random.Generator) -> _Notes:
    m = len(score)
    onset = np.array([n.onset_s for n in score])
    offset = np.array([n.offset_s for n in score])
    written = offset - onset
    onset = onset + np.clip(rng.normal(0.0, 0.012, m), -0.03, 0.03) * (written > 0.15)  # human timing
    written = offset - onset
    gap_before = onset - np.concatenate([[-1.0], offset[:-1]])
    connected = (gap_before < 0.02) & (voice.articulation > 0.9)
    connected[0] = False
    sounded = np.where(np.concatenate([connected[1:], [False]]), written + 0.01, written * voice.articulation)
    target = (
        np.array([n.midi for n in score])
        + np.clip(
            rng.normal(0.0, voice.intonation_cents, m),
            -2.5 * voice.intonation_cents,
            2.5 * voice.intonation_cents,
        )
        / 100.0
    )
    prev = np.concatenate([target[:1], target[:-1]])
    scoop = voice.scoop_semitones * rng.uniform(0.5, 1.2, m)
    prev_midi = np.where(connected, prev, target - scoop)
    glide = np.where(connected, voice.portamento_s, 0.35 * voice.portamento_s + 0.02)
    centre = 0.5 * (voice.range_midi[0] + voice.range_midi[1])
    # Louder up high (subglottal pressure rises with pitch), phrase-level swells, random accents.
    gain = 0.35 * (target - centre) + 1.5 * _smooth_noise(rng, m, 1, 0.3) + rng.normal(0.0, 1.0, m)
    syllables = [n.syllable for n in score]
    consonant = np.array([CONSONANTS.index(s[:-1]) for s in syllables])
    vowel = np.array([VOWELS.index(s[-1]) for s in syllables])
    cons_s = np.array([_CONSONANT_TARGETS[c][3] if c else 0.0 for c in (CONSONANTS[i] for i in consonant)])
    cons_s = np.minimum(cons_s * rng.uniform(0.8, 1.2, m), 0.3 * written)
    return _Notes(
        onset=onset,
        sounded=np.maximum(sounded, 0.05),
        midi=target,
        prev_midi=prev_midi,
        glide_s=glide,
        start_level=np.where(connected, 0.7, 0.0),
        gain_db=gain,
        vibrato_scale=np.clip(rng.normal(1.0, 0.1, m), 0.7, 1.3),
        consonant=consonant,
        vowel=vowel,
        consonant_s=cons_s,
    )


CONTROL_RATE = 1000.0  # Hz: pitch and envelope curves are computed at this rate, then interpolated


@dataclass
class _Controls:
    """Expression curves on the control grid (C,), C = seconds * CONTROL_RATE + 1."""

    f0: np.ndarray  # Hz
    level: np.ndarray  # voiced amplitude (linear, includes loudness)
    noise: np.ndarray  # unvoiced-consonant noise amplitude
    fricative: np.ndarray  # 1 where the noise is /s/ (fricative filter), 0 for /h/ or none
    loud_db: np.ndarray  # note loudness, drives the spectral tilt


def _controls(
    voice: SingerVoice, notes: _Notes, take: _Take, seconds: float, rng: np.random.Generator
) -> _Controls:
    """Pitch contour (glides, drift, vibrato) and envelopes from the performed notes."""
    n = math.ceil(seconds * CONTROL_RATE) + 1
    t = np.arange(n) / CONTROL_RATE
    idx = notes.index(t)
    before = idx < 0
    idx = np.maximum(idx, 0)
    since = t - notes.onset[idx]
    cons = notes.consonant[idx]
    in_cons = ~before & (since < notes.consonant_s[idx])
    is_s = cons == CONSONANTS.index("s")
    unvoiced_cons = is_s | (cons == CONSONANTS.index("h"))
    since_voice = since - np.where(unvoiced_cons, notes.consonant_s[idx], 0.0)  # /s/, /h/ delay the voice

    midi = notes.midi[idx] + (notes.prev_midi[idx] - notes.midi[idx]) * np.exp(
        -np.maximum(since, 0.0) / notes.glide_s[idx]
    )
    midi = midi + 0.06 * _smooth_noise(rng, n, CONTROL_RATE, 0.8)  # slow intonation drift (~6 cents)
    vib_rate = take.vibrato_rate_hz * (1.0 + 0.04 * _smooth_noise(rng, n, CONTROL_RATE, 1.0))
    vib_phase = 2.0 * np.pi * np.cumsum(vib_rate) / CONTROL_RATE + rng.uniform(0, 2 * np.pi)
    vib_on = np.clip((since - voice.vibrato_delay_s) / 0.25, 0.0, 1.0)
    midi = midi + take.vibrato_depth_cents / 100.0 * notes.vibrato_scale[idx] * vib_on * np.sin(vib_phase)

    attack = np.clip(since_voice / voice.attack_s, 0.0, 1.0)
    attack = notes.start_level[idx] + (1.0 - notes.start_level[idx]) * attack
    release = np.clip((notes.sounded[idx] - since) / 0.05, 0.0, 1.0)
    level = np.where(before | (since_voice < 0), 0.0, attack * release)
    cons_amp = np.array([_CONSONANT_TARGETS[c][2] if c else 1.0 for c in CONSONANTS])[cons]
    level = level * np.where(in_cons, cons_amp, 1.0)
    swell = 1.5 * np.sin(np.pi * np.clip(since / np.maximum(notes.sounded[idx], 0.1), 0.0, 1.0))
    loud_db = notes.gain_db[idx] + swell
    gain = 10.0 ** (loud_db / 20.0)
    level = _smooth(level * gain, 5)  # 5 ms: no clicks at legato joins
    noise = _smooth((in_cons & unvoiced_cons) * np.where(is_s, 0.5, 0.12) * gain, 10)
    fricative = _smooth((in_cons & is_s).astype(np.float64), 10)
    return _Controls(midi_to_hz(midi), level, noise, fricative, loud_db)


def _upsample(x: np.ndarray, n: int, sample_rate: int) -> np.ndarray:
    """Control-rate curve (C,) -> (n,) float32 at `sample_rate` by linear interpolation."""
    return np.interp(np.arange(n) * (CONTROL_RATE / sample_rate), np.arange(len(x)), x).astype(np.float32)


def _glottal_source(
    voice: SingerVoice, take: _Take, ctrl: _Controls, n: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Voiced excitation (jitter, shimmer), pulse-synchronous aspiration, consonant noise -> (n,) float32."""
    f0 = _upsample(ctrl.f0, n, sample_rate)
    phase0 = np.cumsum(f0, dtype=np.float64) / sample_rate
    cycles = phase0.astype(np.int64)
    jitter = 1.0 + voice.jitter * np.clip(rng.standard_normal(cycles[-1] + 2), -3, 3)
    phase = np.cumsum(f0 * jitter[cycles].astype(np.float32), dtype=np.float64) / sample_rate
    cycles = phase.astype(np.int64)
    shimmer = 10.0 ** (voice.shimmer_db * np.clip(rng.standard_normal(cycles[-1] + 2), -3, 3) / 20.0)
    if voice.voice_model == "lf_parallel":
        tables, flow = _lf_tables(round(voice.lf_rd, 3), sample_rate)
    else:
        tables, flow = _glottal_tables(round(voice.open_quotient, 3), round(voice.speed_quotient, 3), sample_rate)
    level = _upsample(ctrl.level, n, sample_rate)
    band = _f0_band(ctrl.f0)[
        np.minimum((np.arange(n) * (CONTROL_RATE / sample_rate)).astype(np.int64), len(ctrl.f0) - 1)
    ]
    voiced = _read_tables(tables, phase, band) * shimmer[cycles].astype(np.float32)
    # Aspiration: turbulence at the glottis, strongest while it is open; high-passed (radiation).
    # The same noise, ungated, is the /h/ and /s/ source (the tract filter shapes /s/).
    noise = np.diff(rng.standard_normal(n + 1, dtype=np.float32)) * np.float32(1.0 / np.sqrt(2.0))
    gate = 0.25 + flow[((phase % 1.0) * len(flow)).astype(np.int64)]
    breath = np.float32(10.0 ** (take.breathiness_db / 20.0) * 1.6)
    return voiced * level + noise * (gate * level * breath + _upsample(ctrl.noise, n, sample_rate))


def _formant_response(freqs: np.ndarray, bws: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Cascade of 2-pole resonators, unit gain at DC: (T, F) Hz-as-radians -> (T, K) complex64.

    freqs, bws: (T, F) in radians/sample; omega: (K,) bin frequencies in radians/sample.
    """
    z1 = np.exp(-1j * omega).astype(np.complex64)[None, :]
    z2 = z1 * z1
    h = np.ones((freqs.shape[0], omega.size), dtype=np.complex64)
    for k in range(freqs.shape[1]):
        r = np.exp(-0.5 * bws[:, k])[:, None].astype(np.float32)
        a1 = (-2.0 * r * np.cos(freqs[:, k])[:, None]).astype(np.float32)
        a2 = r * r
        h *= (1.0 + a1 + a2) / (1.0 + a1 * z1 + a2 * z2)
    return h


def _tract_filter(
    voice: SingerVoice,
    take: _Take,
    notes: _Notes,
    ctrl: _Controls,
    n_frames: int,
    win: int,
    hop: int,
    sample_rate: int,
) -> np.ndarray:
    """Per-frame response of vocal tract x tilt x recording EQ (the /s/ filter where it sounds).

    Returns H (n_frames, win // 2 + 1) complex64 for the STFT frames of _stft(.., win, hop).
    """
    t = np.arange(n_frames) * hop / sample_rate
    at_frames = np.minimum(np.round(t * CONTROL_RATE).astype(np.int64), len(ctrl.f0) - 1)
    idx = notes.index(t)
    idx = np.maximum(idx, 0)
    since = t - notes.onset[idx]
    in_cons = since < notes.consonant_s[idx]
    cons = np.where(in_cons, notes.consonant[idx], 0)
    vowel_f = np.array([VOWEL_FORMANTS[v] for v in VOWELS])[notes.vowel[idx]]  # (T, 5)
    cons_table = np.array(
        [_CONSONANT_TARGETS[c][0] if c in ("l", "m", "n") else (0.0,) * 5 for c in CONSONANTS]
    )
    cons_bw = np.array([_CONSONANT_TARGETS[c][1] if c in ("l", "m", "n") else 1.0 for c in CONSONANTS])
    has_cons_formants = cons_table[cons, 0] > 0
    freqs = np.where(has_cons_formants[:, None], cons_table[cons], vowel_f)
    freqs = freqs * take.formant_scale * np.array(voice.formant_offsets)
    freqs[:, 0] = np.maximum(freqs[:, 0], 1.1 * ctrl.f0[at_frames])  # F1 tuning: sopranos raise F1 above f0
    bws = np.array(FORMANT_BANDWIDTHS) * voice.bandwidth_scale * cons_bw[cons][:, None]
    bws[:, 0] *= 1.0 + 0.04 * (take.breathiness_db + 32.0)  # glottal losses widen B1 in breathy voices
    coart = max(1, round(0.04 * sample_rate / hop))  # ~40 ms coarticulation
    freqs = np.exp(_smooth(np.log(freqs), coart))
    bws = _smooth(bws, coart)
    nyq = 0.5 * sample_rate
    freqs = np.minimum(freqs, 0.47 * sample_rate)
    to_rad = 2.0 * np.pi / sample_rate
    bins = np.fft.rfftfreq(win, 1.0 / sample_rate)
    # Formants move slowly (40 ms smoothing): evaluate every third frame and hold.
    parallel = voice.voice_model == "lf_parallel"
    if parallel:  # the second voice model: F1-F8 in parallel, each at the singer's own level
        high = np.array(_HIGHER_FORMANTS) * take.formant_scale
        n_high = int(np.sum(high < 0.47 * sample_rate))
        all_f = np.concatenate([freqs[::3], np.broadcast_to(high[:n_high], (len(freqs[::3]), n_high))], axis=1)
        all_b = np.concatenate(
            [bws[::3], np.broadcast_to(np.array(_HIGHER_BANDWIDTHS[:n_high]), (len(bws[::3]), n_high))], axis=1
        )
        amps = np.array(voice.formant_amps_db[: 5 + n_high])
        h = parallel_formant_response(all_f * to_rad, all_b * to_rad, bins * to_rad, amps)
    else:
        h = _formant_response(freqs[::3] * to_rad, bws[::3] * to_rad, bins * to_rad)
    h = np.repeat(h, 3, axis=0)[:n_frames]

    # Spectral tilt (dB/octave above 400 Hz), brighter when louder; singer's formant.
    octaves = np.log2(np.maximum(bins, 400.0) / 400.0)
    tilt = take.tilt_db_per_oct + 0.12 * _smooth(ctrl.loud_db[at_frames], coart)
    gain_db = tilt[:, None] * octaves[None, :]
    sf_centre = 3000.0 * take.formant_scale
    static_db = voice.singers_formant_db * np.exp(-0.5 * ((bins - sf_centre) / 400.0) ** 2)
    log_bins = np.log2(np.maximum(bins, 20.0))
    # The individual's resonance colour and piriform-sinus dip.
    for centre, g in zip((500.0, 1000.0, 2000.0, 4000.0), voice.colour_db):
        static_db = static_db + g * np.exp(
            -0.5 * ((log_bins - np.log2(centre * take.formant_scale)) / 0.5) ** 2
        )
    static_db = static_db - voice.piriform_db * np.exp(-0.5 * ((bins - voice.piriform_hz) / 250.0) ** 2)
    # Nasal coupling: an anti-resonance near 1 kHz and a low nasal resonance near 250 Hz.
    nasal_zero = np.log2(1000.0 * take.formant_scale)
    static_db = static_db - voice.nasality_db * np.exp(-0.5 * ((log_bins - nasal_zero) / 0.18) ** 2)
    static_db = static_db + 0.4 * voice.nasality_db * np.exp(-0.5 * ((log_bins - np.log2(250.0)) / 0.3) ** 2)
    # Higher-pole correction: the resonances above F5 barely depend on the vowel, so one static
    # response restores the 4-8 kHz energy a 5-formant cascade loses.
    high = np.array(_HIGHER_FORMANTS) * take.formant_scale
    keep = high < 0.47 * sample_rate
    higher = np.ones_like(bins) if parallel else np.abs(
        _formant_response(
            (high[keep] * to_rad)[None, :],
            (np.array(_HIGHER_BANDWIDTHS)[keep] * to_rad)[None, :],
            bins * to_rad,
        )
    )[0]
    tract_static = (10.0 ** (static_db / 20.0) * higher).astype(np.float32)
    h *= (10.0 ** (gain_db / 20.0)).astype(np.float32) * tract_static[None, :]

    # /s/: noise made at the teeth and shaped by the short front cavity only (4-8 kHz for a
    # male tract, capped by Nyquist). It bypasses the whole-tract resonances above: the
    # higher-pole correction alone peaks at 30-70 dB near 7 kHz, made to restore what the
    # 5-formant cascade's roll-off removes, so applied to the flat /s/ band it would turn
    # each /s/ into a burst tens of dB louder than the singing.
    fric_weight = ctrl.fricative[at_frames].astype(np.float32)
    fric_centre = min(6200.0 * take.formant_scale, 0.8 * nyq)
    fric = np.exp(-0.5 * (np.log2(np.maximum(bins, 20.0) / fric_centre) / 0.45) ** 2).astype(np.float32)
    h = h * (1.0 - fric_weight)[:, None] + (fric_weight[:, None] * fric[None, :] * _FRICATIVE_GAIN)

    # The recording chain (microphone EQ and high-pass) colours every sound alike.
    eq_db = np.zeros_like(bins)
    for centre, g in zip(take.eq_centres_oct, take.eq_gains_db):
        eq_db = eq_db + g * np.exp(-0.5 * ((log_bins - centre) / 0.7) ** 2)
    highpass = 1.0 / np.sqrt(1.0 + (take.highpass_hz / np.maximum(bins, 1.0)) ** 4)
    recording = (10.0 ** (eq_db / 20.0) * highpass).astype(np.float32)
    return (h * recording[None, :]).astype(np.complex64)


def _room(rng: np.random.Generator, take: _Take, sample_rate: int) -> np.ndarray:
    """Room impulse response: direct sound, a few early reflections, an exponential tail -> (L,)."""
    length = int(min(take.room_rt60_s, 1.0) * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.normal(0.0, 1.0, length) * np.exp(-6.9 * t / take.room_rt60_s)
    dark = _smooth(rng.normal(0.0, 1.0, length), 6) * np.exp(-6.9 * t / (1.4 * take.room_rt60_s))
    tail = 0.4 * tail + dark  # high frequencies decay faster
    predelay = int(rng.uniform(0.005, 0.02) * sample_rate)
    tail[:predelay] = 0.0
    tail *= 10.0 ** (take.room_wet_db / 20.0) / np.sqrt(np.sum(tail**2) + 1e-12)
    for _ in range(3):  # a close microphone: weak early reflections
        tail[int(rng.uniform(0.004, 0.025) * sample_rate)] += rng.uniform(0.04, 0.15) * rng.choice([-1, 1])
    tail[0] = 1.0
    return tail


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << math.ceil(math.log2(len(x) + len(h)))
    x, h = x.astype(np.float32), h.astype(np.float32)  # NumPy >= 2 transforms float32 natively
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def _validate_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz (e.g. 16000, 22050, 44100), "
            f"got {sample_rate!r}"
        )


def sing(
    voice: SingerVoice,
    melody: Melody,
    seconds: float,
    sample_rate: int = 16000,
    seed: int = 0,
    transpose: float = 0.0,
    tempo_scale: float = 1.0,
) -> np.ndarray:
    """`voice` sings `melody` (in the key of key_for(voice, melody) + transpose) for `seconds`.

    The melody repeats to fill the time; `seed` draws this take's drift, room and expression.
    Returns (round(seconds * sample_rate),) float32 in [-1, 1].
    """
    _validate_rate(sample_rate)
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if all(p is None for p in melody.pitches):
        raise ValueError(f"melody {melody.melody_id} has no sung notes")
    rng = np.random.default_rng([seed, _stable_hash(voice.name), _stable_hash(melody.melody_id)])
    take = _take(voice, rng)
    n = round(seconds * sample_rate)
    notes = _perform(voice, note_schedule(voice, melody, seconds, transpose, tempo_scale), take, rng)
    ctrl = _controls(voice, notes, take, seconds, rng)
    source = _glottal_source(voice, take, ctrl, n, sample_rate, rng)

    win, hop = _stft_size(sample_rate)
    spec = _stft(source, win, hop)
    spec *= _tract_filter(voice, take, notes, ctrl, len(spec), win, hop, sample_rate)
    wave = _istft(spec, win, hop, n).astype(np.float64)

    wave = _convolve(wave, _room(rng, take, sample_rate))
    voiced = ctrl.level > 0.1 * ctrl.level.max()
    voiced = voiced[
        np.minimum((np.arange(n) * (CONTROL_RATE / sample_rate)).astype(np.int64), len(voiced) - 1)
    ]
    rms = np.sqrt(np.mean(wave[voiced] ** 2)) if voiced.any() else np.sqrt(np.mean(wave**2))
    wave *= 10.0 ** (take.level_dbfs / 20.0) / max(rms, 1e-9)
    wave += rng.normal(0.0, 10.0 ** (take.noise_dbfs / 20.0), n)
    peak = np.max(np.abs(wave))
    if peak > 0.98:
        wave *= 0.98 / peak
    return wave.astype(np.float32)


# --- Accompaniment ----------------------------------------------------------------------------

# Diatonic triads (semitones above the tonic) a bar may be harmonised with, in order of preference.
_CHORDS = {
    "major": ((0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16), (2, 5, 9)),  # I IV V vi ii
    "minor": ((0, 3, 7), (5, 8, 12), (7, 11, 14), (8, 12, 15), (10, 14, 17)),  # i iv V VI VII
}


def _harmonise(melody: Melody) -> list[tuple[int, int, int]]:
    """One triad per 4/4 bar: the chord holding most of the bar's melody (by duration)."""
    n_bars = math.ceil(melody.n_beats / 4.0)
    weight = np.zeros((n_bars, 12))
    start = 0.0
    for pitch, beats in zip(melody.pitches, melody.durations):
        if pitch is not None:
            weight[min(int(start // 4), n_bars - 1), pitch % 12] += beats
        start += beats
    chords = _CHORDS[melody.mode]
    out = []
    for bar in range(n_bars):
        score = [sum(weight[bar, p % 12] for p in chord) - 0.1 * k for k, chord in enumerate(chords)]
        if bar in (0, n_bars - 1):
            score[0] += 1.0  # start and end at home
        out.append(chords[int(np.argmax(score))])
    return out


@functools.lru_cache(maxsize=8)
def _saw_tables(sample_rate: int) -> np.ndarray:
    """Soft band-limited sawtooth wavetables per f0 band (harmonic k at 1 / k**1.5) -> (bands, L)."""
    k = np.arange(1, _WAVETABLE_LEN // 2)
    tables = np.empty((_N_F0_BANDS, _WAVETABLE_LEN), dtype=np.float32)
    for j in range(_N_F0_BANDS):
        k_max = 0.5 * sample_rate / (_F0_TABLE_MIN * 2.0 ** ((j + 1) / _BANDS_PER_OCTAVE))
        spec = np.zeros(_WAVETABLE_LEN // 2 + 1, dtype=np.complex128)
        spec[1 : len(k) + 1] = -1j * k**-1.5 * np.clip((k_max - k) / (0.15 * k_max + 1.0), 0.0, 1.0)
        tables[j] = np.fft.irfft(spec, _WAVETABLE_LEN)
    return tables / np.sqrt(np.mean(tables[0] ** 2))


def _drum_hits(sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One-shot kick, snare and hi-hat samples."""

    def t_of(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sample_rate)) / sample_rate

    t = t_of(0.35)
    kick = np.sin(2 * np.pi * (50.0 * t + 70.0 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.12)
    t = t_of(0.25)
    snare_noise = np.diff(rng.standard_normal(len(t) + 1)) * 0.5
    snare = snare_noise * np.exp(-t / 0.07) + 0.6 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04)
    t = t_of(0.08)
    hat = np.diff(rng.standard_normal(len(t) + 2), n=2) * 0.35 * np.exp(-t / 0.02)
    return {"kick": kick, "snare": snare, "hat": hat}


def accompany(melody: Melody, key_midi: float, seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Backing track in `key_midi` at the melody's tempo: chord pad, bass on 1 and 3, drums.

    Chords follow the melody bar by bar and loop with it as `sing` does (sing with the same
    melody and tempo_scale=1 to line up). Returns (round(seconds * sample_rate),) float32,
    RMS about -20 dBFS.
    """
    _validate_rate(sample_rate)
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rng = np.random.default_rng([seed, _stable_hash(melody.melody_id), 3])
    n = round(seconds * sample_rate)
    beat = 60.0 / melody.tempo_bpm
    bar_s = 4.0 * beat
    chords = np.array(_harmonise(melody), dtype=np.float64)  # (bars, 3) semitones above the tonic
    n_bars = len(chords)

    # Pad: three chord tones around the octave below middle C, two detuned oscillators each;
    # bass: the chord root on beats 1 and 3, plucked. Frequencies are constant within a bar.
    tonic = float(key_midi)
    pad_root = 48.0 + ((tonic - 48.0) % 12.0)
    saws = _saw_tables(sample_rate)
    detune = 2.0 ** (np.array([-0.06, 0.06]) / 12.0)
    pad = np.zeros(n, dtype=np.float32)
    bass = np.zeros(n, dtype=np.float32)
    phases = rng.random(6)
    for b in range(math.ceil(seconds / bar_s)):
        start, stop = round(b * bar_s * sample_rate), min(n, round((b + 1) * bar_s * sample_rate))
        if start >= stop:
            break
        tb = (np.arange(start, stop) / sample_rate).astype(np.float64)
        chord = chords[b % n_bars]
        f = (midi_to_hz(pad_root + chord)[:, None] * detune[None, :]).ravel()  # (6,) Hz
        osc = _read_tables(saws, f[:, None] * tb[None, :] + phases[:, None], _f0_band(f)[:, None])
        in_bar = tb - b * bar_s
        swell = 1.0 - 0.35 * np.exp(-in_bar / 0.15) * (1.0 - np.exp(-in_bar / 0.02))  # re-voiced each bar
        pad[start:stop] = osc.sum(axis=0) * (swell * 0.12)
        root_hz = float(midi_to_hz(36.0 + ((tonic + chord[0] - 36.0) % 12.0)))
        since = in_bar % (2.0 * beat)
        phase = 2.0 * np.pi * root_hz * tb
        pluck = np.exp(-since / 0.5) * np.clip(since / 0.005, 0.0, 1.0) * 0.35
        bass[start:stop] = (np.sin(phase) + 0.35 * np.sin(2 * phase) + 0.12 * np.sin(3 * phase)) * pluck

    # Drums: kick on 1 and 3, snare on 2 and 4, hi-hat on eighths, small velocity changes.
    drums = np.zeros(n + sample_rate, dtype=np.float64)
    hits = _drum_hits(sample_rate, rng)
    n_eighths = int(seconds / (beat / 2.0)) + 1
    for e in range(n_eighths):
        start = round(e * beat / 2.0 * sample_rate)
        if start >= n:
            break
        beat_i, offbeat = divmod(e, 2)
        parts = ["hat"]
        if not offbeat:
            parts.append("kick" if beat_i % 2 == 0 else "snare")
        for name in parts:
            hit = hits[name]
            velocity = rng.uniform(0.75, 1.0) * (0.6 if name == "hat" and offbeat else 1.0)
            drums[start : start + len(hit)] += velocity * hit
    drums = drums[:n] * 0.3

    mix = pad + bass + drums
    mix *= 0.1 / max(float(np.sqrt(np.mean(mix**2))), 1e-9)
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


# --- Catalog ------------------------------------------------------------------------------------

MANIFEST_COLUMNS = (
    "path",
    "singer",
    "title",
    "song_id",
    "melody_id",
    "gender",
    "register",
    "style",
    "tempo_bpm",
    "key_shift",
)
STEM_COLUMNS = ("vocals_path", "accompaniment_path")
VOICE_MODEL_COLUMNS = ("voice_model",)  # with more than the first voice model
PRODUCTION_COLUMNS = ("snr_db", "highpass_hz", "lowpass_hz", "rt60_s")  # with produced=True
COPY_COLUMNS = ("copy_of", "copy_kind", "copy_amount")  # with copies=True; empty on originals
COPY_SEMITONES = 2.0  # a key copy is pitch-shifted this much, up or down
COPY_RATE = 1.1  # a tempo copy plays this much faster, or 1 / COPY_RATE slower
STAMP_NAME = ".corpus-stamp.json"
CORPUS_FORMAT = 1  # bump when the synthesis changes, so that cached catalogs are made again


def assign_melodies(n_singers: int, songs_per_singer: int, seed: int, common: int = 0) -> list[list[int]]:
    """Melody index of each song, [singer][song]: `common` melodies sung by every singer (a covers
    catalog), then about half of the other songs use shared melodies sung by 2-4 different
    singers, the rest unique ones. No singer repeats a melody."""
    if not 0 <= common <= songs_per_singer:
        raise ValueError(f"common melodies must be between 0 and songs_per_singer={songs_per_singer}, got {common}")
    rng = np.random.default_rng([seed, 4])
    free = songs_per_singer - common
    shared_slots = np.full(n_singers, max(1, free // 2) if n_singers > 1 and free else 0)
    plan: list[list[int]] = [list(range(common)) for _ in range(n_singers)]
    next_id = common
    while np.count_nonzero(shared_slots) >= 2:
        candidates = np.flatnonzero(shared_slots)
        k = min(int(rng.integers(2, 5)), len(candidates))
        # Singers with the most open slots first, ties broken at random.
        order = candidates[np.lexsort((rng.random(len(candidates)), -shared_slots[candidates]))]
        for s in order[:k]:
            plan[s].append(next_id)
            shared_slots[s] -= 1
        next_id += 1
    for s in range(n_singers):
        while len(plan[s]) < songs_per_singer:
            plan[s].append(next_id)
            next_id += 1
        plan[s] = [plan[s][i] for i in rng.permutation(songs_per_singer)]
    return plan


@dataclass(frozen=True)
class _SongJob:
    voice: SingerVoice
    melody: Melody  # at the performed tempo
    song_id: str
    seconds: float
    sample_rate: int
    seed: int
    transpose: int
    key_shift: int
    out_dir: Path
    accompaniment: bool
    accompaniment_db: float
    chain: ProductionChain | None = None
    copies: tuple[tuple[str, float], ...] = ()  # ("pitch", semitones) / ("tempo", rate)
    columns: frozenset[str] = frozenset()  # the optional column groups to fill


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), samples, sample_rate, subtype="PCM_16", format="WAV")
    except (OSError, RuntimeError) as e:
        raise OSError(f"could not write {path}: {e}") from e


def _copy_wave(wave: np.ndarray, kind: str, amount: float, sample_rate: int) -> np.ndarray:
    if kind == "pitch":
        return pitch_copy(wave, sample_rate, amount)
    return tempo_copy(wave, amount)


def _copy_rows(job: _SongJob, row: dict[str, str]) -> list[tuple[dict[str, str], str, float]]:
    """Manifest rows of the song's key- and tempo-changed copies, with (kind, amount)."""
    out = []
    for kind, amount in job.copies:
        tag = f"pitch{amount:+g}" if kind == "pitch" else f"tempo{amount:g}"
        copy_id = f"{job.song_id}_{tag}"
        copy = dict(row, song_id=copy_id, path=(Path(job.voice.name) / f"{copy_id}.wav").as_posix(),
                    copy_of=job.song_id, copy_kind=kind, copy_amount=f"{amount:+g}" if kind == "pitch" else f"{amount:g}")
        if kind == "pitch":
            copy["key_shift"] = str(int(row["key_shift"]) + round(amount))
        else:
            copy["tempo_bpm"] = f"{job.melody.tempo_bpm * amount:.2f}"
        out.append((copy, kind, amount))
    return out


def _render(job: _SongJob) -> list[dict[str, str]]:
    """Synthesise one song (and its copies), write the WAV file(s), return the manifest rows."""
    if job.chain is None and not job.copies:
        return _render_song(job)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the chain and the copies: same bytes in any process
    try:
        return _render_song(job)
    finally:
        torch.set_num_threads(threads)


def _render_song(job: _SongJob) -> list[dict[str, str]]:
    vocals = sing(job.voice, job.melody, job.seconds, job.sample_rate, job.seed, transpose=job.transpose)
    if job.chain is not None:
        vocals = produce(vocals, job.sample_rate, job.chain)
    singer = job.voice.name
    rel = Path(singer) / f"{job.song_id}.wav"
    row = {
        "path": rel.as_posix(),
        "singer": singer,
        "title": job.melody.title,
        "song_id": job.song_id,
        "melody_id": job.melody.melody_id,
        "gender": job.voice.gender,
        "register": job.voice.register,
        "style": job.voice.style,
        "tempo_bpm": f"{job.melody.tempo_bpm:.2f}",
        "key_shift": str(job.key_shift),
    }
    if "voice_model" in job.columns:
        row["voice_model"] = job.voice.voice_model
    if job.chain is not None:
        c = job.chain
        row.update(snr_db=f"{c.snr_db:.2f}", highpass_hz=f"{c.highpass_hz:.1f}", lowpass_hz=f"{c.lowpass_hz:.1f}",
                   rt60_s=f"{c.rt60_s:.3f}")
    if "copies" in job.columns:
        row.update(copy_of="", copy_kind="", copy_amount="")
    copies = _copy_rows(job, row)
    if not job.accompaniment:
        _write_wav(job.out_dir / rel, _to_int16(vocals), job.sample_rate)
        for copy, kind, amount in copies:
            wave = _copy_wave(vocals, kind, amount, job.sample_rate)
            _write_wav(job.out_dir / copy["path"], _to_int16(wave), job.sample_rate)
        return [row] + [c for c, _, _ in copies]
    key = key_for(job.voice, job.melody) + job.transpose
    backing = accompany(job.melody, key, job.seconds, job.sample_rate, job.seed).astype(np.float64)
    vocals = vocals.astype(np.float64)
    backing *= (
        10.0 ** (job.accompaniment_db / 20.0)
        * np.sqrt(np.mean(vocals**2))
        / max(float(np.sqrt(np.mean(backing**2))), 1e-12)
    )
    peak = float(np.max(np.abs(vocals + backing)))
    if peak > 0.95:  # scale both stems alike so that they still add up to the mix
        vocals *= 0.95 / peak
        backing *= 0.95 / peak
    _write_stems(job, row, rel, vocals, backing)
    for copy, kind, amount in copies:
        v, b = (_copy_wave(x, kind, amount, job.sample_rate) for x in (vocals, backing))
        _write_stems(job, copy, Path(copy["path"]), v, b)
    return [row] + [c for c, _, _ in copies]


def _write_stems(job: _SongJob, row: dict[str, str], rel: Path, vocals: np.ndarray, backing: np.ndarray) -> None:
    """Write the mix at `rel` and its two stems; the stems' paths go into `row`."""
    v16, b16 = _to_int16(vocals), _to_int16(backing)
    mix = v16.astype(np.int32) + b16.astype(np.int32)  # the written mix is exactly the stems' sum
    song_id = row["song_id"]
    stems = {
        "vocals_path": Path("stems") / job.voice.name / f"{song_id}.vocals.wav",
        "accompaniment_path": Path("stems") / job.voice.name / f"{song_id}.accompaniment.wav",
    }
    _write_wav(job.out_dir / rel, mix.astype(np.int16), job.sample_rate)
    _write_wav(job.out_dir / stems["vocals_path"], v16, job.sample_rate)
    _write_wav(job.out_dir / stems["accompaniment_path"], b16, job.sample_rate)
    row.update({k: p.as_posix() for k, p in stems.items()})


def generate_corpus(
    out_dir: Path,
    n_singers: int = 24,
    songs_per_singer: int = 8,
    song_seconds: float = 30.0,
    seed: int = 0,
    sample_rate: int = 16000,
    accompaniment: bool = False,
    accompaniment_db: float = -6.0,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    key_offset: int = 0,
    common_melodies: int = 0,
    produced: bool = False,
    copies: bool = False,
    voice_models: tuple[str, ...] = ("rosenberg_cascade",),
) -> Path:
    """Write the demo catalog: out_dir/<singer>/<song_id>.wav (16-bit) and out_dir/manifest.csv.

    Same arguments give byte-identical files (whatever `workers` is). With `accompaniment`,
    the mix is written in place of the a-cappella song and the stems under
    out_dir/stems/<singer>/<song_id>.{vocals,accompaniment}.wav (mix == vocals + accompaniment
    sample for sample); `accompaniment_db` is the backing's RMS relative to the voice.
    `workers`: processes (None: all CPUs, 1: in this process). `key_offset`: every song
    sung that many semitones away from its usual key, all else (voices, takes, tempo)
    unchanged: the same catalog after a real key change, formants in place.
    `common_melodies`: that many melodies sung by every singer among their songs (a covers,
    karaoke or vocal-coaching catalog).
    `produced`: every song's voice goes through its own random production chain
    (recsys.production: room, EQ, band limit, noise at 20-40 dB SNR, level), drawn from the
    seed; the voices and takes are those of the unproduced catalog. `copies`: each singer's
    first song also gets a copy pitch-shifted by +-COPY_SEMITONES and their second song
    (the first with one song) a copy COPY_RATE times faster or slower, rows linked by
    `copy_of`. `voice_models`: the synthesisers dealt out to the singers (VOICE_MODELS).
    A stamp file in out_dir remembers the arguments: called again with the same ones on a
    complete catalog, nothing is rewritten. Returns the manifest path.
    """
    if n_singers < 1 or songs_per_singer < 1:
        raise ValueError(
            f"need n_singers >= 1 and songs_per_singer >= 1, got {n_singers} and {songs_per_singer}"
        )
    if song_seconds <= 0:
        raise ValueError(f"song_seconds must be > 0, got {song_seconds}")
    _validate_rate(sample_rate)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 or None (all CPUs), got {workers}")
    out_dir = Path(out_dir)
    args = {"format": CORPUS_FORMAT, "n_singers": n_singers, "songs_per_singer": songs_per_singer,
            "song_seconds": float(song_seconds), "seed": seed, "sample_rate": int(sample_rate),
            "accompaniment": accompaniment, "accompaniment_db": float(accompaniment_db),
            "key_offset": key_offset, "common_melodies": common_melodies, "produced": produced,
            "copies": copies, "voice_models": list(voice_models)}
    cached = _cached_manifest(out_dir, args)
    if cached is not None:
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_NAME).unlink(missing_ok=True)
    singers = make_singers(n_singers, seed, tuple(voice_models))
    columns = frozenset(
        name for name, on in (("voice_model", tuple(voice_models) != VOICE_MODELS[:1]), ("copies", copies)) if on
    )
    plan = assign_melodies(n_singers, songs_per_singer, seed, common_melodies)
    melodies = make_melodies(1 + max(max(p) for p in plan), seed)
    jobs = []
    for s, voice in enumerate(singers):
        for j, m in enumerate(plan[s]):
            rng = np.random.default_rng([seed, 5, s, j])
            tempo_scale = float(rng.uniform(0.94, 1.06))
            transpose = int(rng.integers(-1, 2)) + key_offset  # the singer's key of the day
            melody = replace(melodies[m], tempo_bpm=round(melodies[m].tempo_bpm * tempo_scale, 2))
            extra = np.random.default_rng([seed, 6, s, j])  # its own stream: the takes stay as they are
            chain = draw_chain(extra, sample_rate) if produced else None
            song_copies: list[tuple[str, float]] = []
            if copies and j == 0:
                song_copies.append(("pitch", COPY_SEMITONES * (1.0 if extra.random() < 0.5 else -1.0)))
            if copies and j == min(1, songs_per_singer - 1):
                song_copies.append(("tempo", COPY_RATE if extra.random() < 0.5 else round(1.0 / COPY_RATE, 4)))
            jobs.append(
                _SongJob(
                    voice=voice,
                    melody=melody,
                    song_id=f"{voice.name}_song_{j}",
                    seconds=float(song_seconds),
                    sample_rate=int(sample_rate),
                    seed=int(rng.integers(2**31)),
                    transpose=transpose,
                    key_shift=key_for(voice, melody) + transpose - melody.tonic_midi,
                    out_dir=out_dir,
                    accompaniment=accompaniment,
                    accompaniment_db=float(accompaniment_db),
                    chain=chain,
                    copies=tuple(song_copies),
                    columns=columns,
                )
            )
    n_workers = min(workers or os.cpu_count() or 1, len(jobs))
    rows: dict[str, list[dict[str, str]]] = {}
    if n_workers == 1:
        for job in jobs:
            rows[job.song_id] = _render(job)
            if progress is not None:
                progress(len(rows), len(jobs))
    else:
        # spawn: no fork of a parent that may hold torch threads or open databases.
        with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_render, job): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    rows[job.song_id] = future.result()
                except Exception as e:
                    raise RuntimeError(
                        f"synthesising {job.song_id} ({job.voice.name} singing "
                        f"{job.melody.melody_id}) failed: {e}"
                    ) from e
                if progress is not None:
                    progress(len(rows), len(jobs))
    fields = (
        MANIFEST_COLUMNS
        + (STEM_COLUMNS if accompaniment else ())
        + (VOICE_MODEL_COLUMNS if "voice_model" in columns else ())
        + (PRODUCTION_COLUMNS if produced else ())
        + (COPY_COLUMNS if copies else ())
    )
    manifest = out_dir / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for job in jobs:
            writer.writerows(rows[job.song_id])
    stamp = {"arguments": args, "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    (out_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _cached_manifest(out_dir: Path, args: dict) -> Path | None:
    """The manifest of a complete catalog made with the same arguments, or None."""
    stamp_path, manifest = out_dir / STAMP_NAME, out_dir / "manifest.csv"
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        if stamp.get("arguments") != args:
            return None
        if hashlib.sha256(manifest.read_bytes()).hexdigest() != stamp.get("manifest_sha256"):
            return None
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for key in ("path", *STEM_COLUMNS):
                    if row.get(key) and not (out_dir / row[key]).is_file():
                        return None
    except (OSError, ValueError):
        return None
    return manifest
