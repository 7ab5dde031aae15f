"""Baseline embedders: the contract (shape, unit norm, finite), and what each baseline should hear.

The voices are synthesised here (harmonic tones through fixed formant resonances) rather than
taken from recsys.corpus, so that the invariance tests do not depend on how the corpus sings.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from recsys.baselines import ChromaStats, MFCCStats, SpeakerEncoder, chroma_filterbank, make_baseline
from recsys.evaluation import retrieval_metrics

SR = 16000
VOICE_LOW = (500.0, 1500.0, 2500.0)  # formant centres in Hz
VOICE_HIGH = (750.0, 1150.0, 2900.0)
SCALE = (0, 2, 4, 5, 7, 9, 11, 12)


def _sing(
    notes: np.ndarray | tuple[int, ...],
    tonic_midi: float,
    formants: tuple[float, ...] | None = None,
    seconds: float = 2.0,
    n_harmonics: int = 30,
) -> np.ndarray:
    """Notes (semitones above the tonic, equal length) as a harmonic tone, optionally formant-filtered.

    Without formants the harmonic amplitudes are 1/k, so transposing shifts the whole spectrum.
    """
    n = int(seconds * SR)
    t = np.arange(n) / SR
    idx = np.minimum((t * len(notes) / seconds).astype(int), len(notes) - 1)
    f0 = 440.0 * 2 ** ((tonic_midi + np.asarray(notes)[idx] - 69) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    y = np.zeros(n)
    for k in range(1, n_harmonics + 1):
        f = k * f0
        if formants is None:
            amp = np.full(n, 1.0 / k)
        else:
            amp = sum(np.exp(-0.5 * ((f - fc) / 100.0) ** 2) for fc in formants) + 0.02
        y += amp * (f < SR / 2) * np.sin(k * phase)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _song(seed: int, formants: tuple[float, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    notes = np.array(SCALE)[rng.integers(0, len(SCALE), 8)]
    return _sing(notes, tonic_midi=float(rng.uniform(50, 58)), formants=formants)


def _assert_unit_vectors(v: np.ndarray, shape: tuple[int, ...]) -> None:
    assert v.shape == shape and v.dtype == np.float32
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("embedder", "dim"),
    [
        (MFCCStats(device="cpu"), 80),
        (MFCCStats(n_mfcc=13, device="cpu"), 52),
        (ChromaStats(device="cpu"), 24),
        (ChromaStats(key_invariant=True, device="cpu"), 14),
    ],
    ids=["mfcc20", "mfcc13", "chroma", "chroma_keyinv"],
)
def test_contract_shapes_unit_norm_finite(embedder, dim):
    waves = [_song(0, VOICE_LOW), _song(1, VOICE_HIGH)[: SR // 2]]
    assert embedder.dim == dim
    _assert_unit_vectors(embedder.embed(waves[0]), (dim,))
    many = embedder.embed_many(waves)
    _assert_unit_vectors(many, (2, dim))
    np.testing.assert_allclose(many[0], embedder.embed(waves[0]), atol=1e-6)


def test_bad_input_is_a_clear_error():
    mfcc = MFCCStats(device="cpu")
    with pytest.raises(ValueError, match="mono"):
        mfcc.embed(np.zeros((2, SR), dtype=np.float32))
    with pytest.raises(ValueError, match="too short"):
        mfcc.embed(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        mfcc.embed(np.full(SR, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="silent"):
        ChromaStats(device="cpu").embed(np.zeros(SR, dtype=np.float32))
    with pytest.raises(ValueError, match="valid: mfcc_stats, chroma_stats"):
        make_baseline("wav2vec")


def test_mfcc_stats_separate_two_voices_singing_the_same_melodies():
    # Both voices sing the same six melodies, so only timbre (formants) can group the songs.
    # Chance: P@1 = 5/11 and mAP@10 about 0.5.
    waves = [_song(s, VOICE_LOW) for s in range(6)] + [_song(s, VOICE_HIGH) for s in range(6)]
    labels = np.repeat([0, 1], 6)
    mfcc = MFCCStats(device="cpu")
    loo = np.arange(len(labels))  # each song queries the others
    x = mfcc.embed_many(waves)
    raw = retrieval_metrics(x, x, labels, labels, loo)
    assert raw["p_at_1"] >= 0.9 and raw["map_at_k"] >= 0.8
    x = mfcc.fit(waves).embed_many(waves)
    fitted = retrieval_metrics(x, x, labels, labels, loo)
    assert fitted["p_at_1"] >= 0.75 and fitted["map_at_k"] >= 0.7


def test_mfcc_fit_standardises_the_catalog_statistics():
    waves = [_song(s, VOICE_LOW if s % 2 else VOICE_HIGH) for s in range(5)]
    mfcc = MFCCStats(device="cpu")
    before = mfcc.embed(waves[0])
    mfcc.fit(waves)
    z = (np.stack([mfcc.stats(w) for w in waves]) - mfcc.mean) / mfcc.std
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(mfcc.embed(waves[0]), z[0] / np.linalg.norm(z[0]), atol=1e-5)
    assert not np.allclose(before, mfcc.embed(waves[0]), atol=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        mfcc.fit(waves[:1])


def test_chroma_filterbank_rows_are_pitch_class_distributions():
    fb = chroma_filterbank(SR, 4096, f_min=55.0, f_max=4000.0)
    freqs = np.arange(4096 // 2 + 1) * SR / 4096
    inside = (freqs >= 55.0) & (freqs <= 4000.0)
    np.testing.assert_allclose(fb.sum(dim=1).numpy()[inside], 1.0, atol=1e-5)
    assert fb.numpy()[~inside].sum() == 0.0
    a4 = int(np.argmin(np.abs(freqs - 440.0)))
    assert int(fb[a4].argmax()) == 9  # A is pitch class 9 (C = 0)


def test_chroma_hears_the_pitch_class_of_a_tone():
    chroma = ChromaStats(device="cpu")
    for midi, pitch_class in ((69, 9), (60, 0), (64, 4)):
        mean = chroma.chroma(_sing((0,), midi, seconds=1.0)).mean(dim=1)
        assert int(mean.argmax()) == pitch_class, midi


def test_chroma_key_invariant_variant_ignores_a_transposition():
    notes = (0, 2, 4, 5, 7, 4, 2, 0, 9, 7)
    melody = _sing(notes, 57.0, seconds=3.0)
    up_two = _sing(notes, 59.0, seconds=3.0)
    other = _sing((0, 3, 7, 10, 0, 7, 3, 0, 5, 8), 57.0, seconds=3.0)  # a different (minor) melody
    plain = ChromaStats(device="cpu")
    # Transposition shifts the chroma by 2 bins...
    np.testing.assert_allclose(
        np.roll(plain.chroma(melody).mean(dim=1).numpy(), 2),
        plain.chroma(up_two).mean(dim=1).numpy(),
        atol=0.02,
    )
    # ...so the plain vector moves, while the key-invariant one stays (and still tells melodies apart).
    assert np.linalg.norm(plain.embed(melody) - plain.embed(up_two)) > 0.3
    keyinv = ChromaStats(key_invariant=True, device="cpu")
    moved = np.linalg.norm(keyinv.embed(melody) - keyinv.embed(up_two))
    assert moved < 0.03
    assert np.linalg.norm(keyinv.embed(melody) - keyinv.embed(other)) > 3 * moved


def test_speaker_encoder_without_the_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # makes `import resemblyzer` fail
    with pytest.raises(ImportError, match=r"pip install singer-recsys\[speaker\]"):
        SpeakerEncoder(device="cpu")


@pytest.mark.slow
def test_speaker_encoder_embeds_a_synthetic_voice():
    pytest.importorskip("resemblyzer", reason="optional `speaker` extra not installed")
    encoder = SpeakerEncoder(device="cpu")
    wave = _sing((0, 2, 4, 5, 7, 9), 57.0, formants=VOICE_LOW, seconds=3.0)
    v = encoder.embed(wave)
    _assert_unit_vectors(v, (256,))
    # Input at another rate is resampled to the encoder's 16 kHz and lands near the same vector.
    import torch
    import torchaudio

    at_22k = torchaudio.functional.resample(torch.from_numpy(wave), SR, 22050).numpy()
    v22 = SpeakerEncoder(sample_rate=22050, device="cpu").embed(at_22k)
    _assert_unit_vectors(v22, (256,))
    assert float(v @ v22) > 0.95
