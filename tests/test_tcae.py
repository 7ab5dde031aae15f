"""TCAE melody encoder: causality, receptive field, any length, masks, streaming, training, checkpoints."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from recsys import corpus, pitch
from recsys.config import AudioConfig, FeatureConfig, MelodyConfig, SeparationConfig
from recsys.encoders import melody_encoder
from recsys.features import SongFeatures, log_mel
from recsys.fingerprint import audio_fingerprint
from recsys.models.tcae import TCAE, TCAEConfig, masked_pool
from recsys.training.checkpoint import CheckpointMismatchError
from recsys.training.data import TrainingSong
from recsys.training.tcae import (
    load_melody,
    pad_batch,
    reconstruction_error,
    train_melody,
    window_batch,
    windows,
)

SR = 16000
FEAT = FeatureConfig()
TINY = {"channels": 8, "latent_dim": 4, "n_layers": 4, "decoder_layers": 2, "n_lags": 6, "max_lag_frames": 40,
        "pool": "stats+lag"}


def tiny(**kw) -> TCAE:
    torch.manual_seed(0)
    return TCAE(TCAEConfig(**{**TINY, **kw})).eval()


def tone_mel(midis: list[int], note_s: float = 0.25, seed: int = 0) -> torch.Tensor:
    """Log-mel of a harmonic-tone melody, one note per `note_s` seconds: (48, T)."""
    rng = np.random.default_rng(seed)
    amps = rng.uniform(0.3, 1.0, 10) * 0.8 ** np.arange(10)
    t = np.arange(int(note_s * SR)) / SR
    notes = []
    for m in midis:
        f0 = 440 * 2 ** ((m - 69) / 12)
        notes.append(sum(a * np.sin(2 * np.pi * f0 * (h + 1) * t) for h, a in enumerate(amps) if f0 * (h + 1) < 7800))
    wave = np.concatenate(notes) + 1e-3 * rng.standard_normal(len(t) * len(midis))
    return log_mel(torch.from_numpy(wave.astype(np.float32)), FEAT, SR)


@pytest.fixture(scope="module")
def sung_waves() -> dict[tuple[int, int], torch.Tensor]:
    """3 synthetic singers x 3 melodies, 8 s each (singers sing in their own keys)."""
    singers = corpus.make_singers(3, seed=7)
    melodies = corpus.make_melodies(3, seed=7)
    return {
        (i, j): torch.from_numpy(corpus.sing(v, m, 8.0, SR, seed=i + 3 * j))
        for i, v in enumerate(singers)
        for j, m in enumerate(melodies)
    }


@pytest.fixture(scope="module")
def sung(sung_waves) -> dict[tuple[int, int], torch.Tensor]:
    """Their log-mels."""
    return {k: log_mel(w, FEAT, SR) for k, w in sung_waves.items()}


@pytest.fixture(scope="module")
def sung_pitch(sung_waves) -> dict[tuple[int, int], torch.Tensor]:
    """Their waveform pitch (what pitch_source='waveform' reads)."""
    return {k: pitch.wave_pitch(w, SR, FEAT.hop_length) for k, w in sung_waves.items()}


def songs_from(sung, sung_pitch=None) -> list[TrainingSong]:
    return [
        TrainingSong(k, SongFeatures(mel, None if sung_pitch is None else sung_pitch[i, j]), singer=f"s{i}",
                     content_hash=f"h{k}", metadata={"melody": f"m{j}"})
        for k, ((i, j), mel) in enumerate(sorted(sung.items()))
    ]


def melody_vector(model: TCAE, mel: torch.Tensor, wave_pitch: torch.Tensor | None = None) -> torch.Tensor:
    """(n_mels, T) log-mel [and (N_PITCH, T) waveform pitch] -> the model's (dim,) melody vector."""
    return melody_encoder(model).embed_songs([SongFeatures(mel, wave_pitch)])[0]


# --- model invariants ---------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{"input": "mel"}, {"input": "mel+pitch"}, {"input": "pitch", "key_invariant": True,
                                                                              "context_frames": 9}])
def test_changing_frame_t_never_changes_earlier_latents(kw):
    model = tiny(**kw)
    mel = torch.randn(48, 150)
    ref = model.encode_frames(mel, chunk_frames=None)
    for t in (0, 40, 149):
        changed = mel.clone()
        changed[:, t] += 3.0 * torch.randn(48)
        out = model.encode_frames(changed, chunk_frames=None)
        assert torch.equal(out[:t], ref[:t])
        assert not torch.allclose(out[t], ref[t])


@pytest.mark.parametrize("kw", [{"input": "mel"}, {"input": "pitch", "key_invariant": True, "context_frames": 9}])
def test_receptive_field_equals_formula(kw):
    model = tiny(**kw).double()
    rf = 1 + sum((model.cfg.kernel_size - 1) * d for d in model.cfg.dilations)
    if model.cfg.key_invariant:
        rf += model.cfg.context_frames - 1
    assert model.receptive_field == rf
    t = rf + 20
    mel = torch.randn(1, 48, t + 30, dtype=torch.float64, requires_grad=True)
    x, _ = model.front(mel)
    model.encoder(x)[0, :, t].sum().backward()
    touched = (mel.grad[0].abs().sum(0) > 0).nonzero().flatten()
    assert int(touched.max()) == t
    assert t - int(touched.min()) + 1 == rf
    assert f"{rf} frames = {rf * 256 / SR:.2f} s" in model.summary(SR, 256)


def test_any_length_in_same_length_out():
    model = tiny(input="mel+pitch")
    gen = torch.Generator().manual_seed(0)
    for length in torch.randint(1, 700, (6,), generator=gen).tolist():
        mel = torch.randn(2, 48, length)
        target, recon, z = model(mel)
        assert recon.shape == target.shape == (2, model.front.out_channels, length)
        assert z.shape == (2, 4, length)
        assert model.encode_frames(mel[0], chunk_frames=64).shape == (length, 4)
        vec = melody_vector(model, mel[0])
        assert vec.shape == (model.pooled_dim,) and torch.isclose(vec.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("kw", [{"input": "mel"}, {"input": "mel+pitch", "key_invariant": True, "context_frames": 50}])
def test_streaming_equals_whole_sequence(kw):
    model = tiny(**kw)
    mel = torch.randn(48, 1000)
    whole = model.encode_frames(mel, chunk_frames=None)
    torch.testing.assert_close(model.encode_frames(mel, chunk_frames=97), whole, rtol=1e-4, atol=1e-5)
    state, parts = model.init_state(), []
    for chunk in torch.split(mel, [1, 300, 13, 686], dim=-1):
        z, state = model.encode_chunk(chunk.unsqueeze(0), state)
        parts.append(z[0].T)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-4, atol=1e-5)


def test_masking_ignores_padding():
    model = tiny(input="mel+pitch", key_invariant=True, context_frames=20)
    mels = [torch.randn(48, n) for n in (90, 200, 37)]
    batch, mask = pad_batch(mels)
    other = batch.clone()
    other[~mask.unsqueeze(1).expand_as(other)] = torch.randn(int((~mask).sum()) * 48)
    assert torch.equal(model.reconstruction_loss(batch, mask), model.reconstruction_loss(other, mask))
    assert not torch.equal(model.reconstruction_loss(batch), model.reconstruction_loss(other))
    embedded = model.pool_latents(other, mask)
    for i, m in enumerate(mels):
        torch.testing.assert_close(embedded[i], model.pool_song(m), rtol=1e-4, atol=1e-5)


def test_masked_pool_matches_plain_loop():
    z = torch.randn(1, 3, 50)
    lags = [1, 4, 60]
    got = masked_pool(z, torch.ones(1, 50, dtype=torch.bool), lags)[0]
    mean, std = z[0].mean(-1), z[0].std(-1, unbiased=False)
    zn = (z[0] - mean[:, None]) / std[:, None]
    acf = [
        [sum(zn[c, t] * zn[c, t - lag] for t in range(lag, 50)) / max(50 - lag, 1) if lag < 50 else 0.0 for c in range(3)]
        for lag in lags
    ]
    stats = torch.nn.functional.normalize(torch.cat([mean, std]), dim=0)
    lag_part = torch.nn.functional.normalize(torch.tensor(acf, dtype=torch.float32).flatten(), dim=0)
    torch.testing.assert_close(got, torch.cat([stats, lag_part]) / 2**0.5, rtol=1e-3, atol=1e-4)


def test_bad_config_and_mask_raise():
    with pytest.raises(ValueError, match="'mel', 'pitch', 'mel\\+pitch'|mel, pitch, mel\\+pitch"):
        TCAEConfig(input="chroma")
    with pytest.raises(ValueError, match="key_invariant needs a pitch representation"):
        TCAEConfig(input="mel", key_invariant=True)
    model = tiny()
    with pytest.raises(ValueError, match="prefix"):
        model.pool_latents(torch.randn(1, 48, 5), torch.tensor([[True, False, True, True, False]]))
    with pytest.raises(ValueError, match="n_mels=48"):
        model.pool_song(torch.randn(40, 100))


# --- pitch features -----------------------------------------------------------------------


def test_harmonic_salience_finds_the_sung_pitch_class_within_a_semitone():
    matrix = pitch.harmonic_matrix(FEAT, SR)
    midis = list(range(48, 76, 3))
    mel = tone_mel(midis, note_s=0.3)
    chroma = pitch.fold_chroma(pitch.pitch_salience(mel, matrix))  # (12, T)
    per_note = chroma.shape[-1] // len(midis)
    found = [int(chroma[:, k * per_note + 3 : (k + 1) * per_note - 3].mean(-1).argmax()) for k in range(len(midis))]
    # 48 mel bands cannot always split neighbouring semitones: ask for the right class within one.
    near = sum(min((f - m) % 12, (m - f) % 12) <= 1 for f, m in zip(found, midis))
    assert near >= 0.8 * len(midis), f"pitch classes {found} for notes {midis}"
    shuffled = [found[(k + 3) % len(found)] for k in range(len(found))]  # the same test fails on wrong notes
    assert sum(min((f - m) % 12, (m - f) % 12) <= 1 for f, m in zip(shuffled, midis)) < near


def test_relative_chroma_is_transposition_invariant_and_causal():
    log_chroma = torch.randn(12, 80)
    ref = pitch.relative_chroma(log_chroma, 10)
    torch.testing.assert_close(pitch.relative_chroma(log_chroma.roll(5, dims=0), 10), ref)
    changed = log_chroma.clone()
    changed[:, 40] += 5.0
    assert torch.equal(pitch.relative_chroma(changed, 10)[:, :40], ref[:, :40])


def test_key_invariant_model_ignores_exact_transposition():
    """Transposing a tone melody by 12 semitones keeps every pitch class: the vector barely moves."""
    model = tiny(input="pitch", key_invariant=True, context_frames=30)
    midis = [55, 57, 59, 60, 62, 60, 59, 57] * 2
    a = melody_vector(model, tone_mel(midis))
    b = melody_vector(model, tone_mel([m + 12 for m in midis]))
    c = melody_vector(model, tone_mel([55, 62, 55, 62, 57, 64, 57, 64] * 2))
    assert torch.dot(a, b) > torch.dot(a, c)


def test_crepe_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcrepe", None)
    with pytest.raises(ImportError, match=r"pip install singer-recsys\[pitch\]"):
        pitch.crepe_f0(torch.zeros(SR), SR, 256)


# --- training and checkpoints -------------------------------------------------------------


def test_windows_cover_every_frame_once():
    n_frames = [5, 100, 257, 512]
    refs = windows(n_frames, chunk_frames=64, overlap=16)
    mels = [torch.randn(2, n) for n in n_frames]
    counts = [torch.zeros(n) for n in n_frames]
    _, valid, scored = window_batch(mels, refs, 64, 16)
    for (i, s), v, sc in zip(refs, valid, scored):
        counts[i][s : s + 64] += (v & sc)[: n_frames[i] - s].float()
    assert all(torch.equal(c, torch.ones_like(c)) for c in counts)
    with pytest.raises(ValueError, match="chunk_overlap"):
        windows([10], chunk_frames=8, overlap=8)


def _melody_cfg(**kw) -> MelodyConfig:
    base = {"model": "frame", "channels": 12, "latent_dim": 4, "n_layers": 5, "chunk_frames": 128, "chunk_overlap": 32, "batch_size": 8,
                "learning_rate": 3e-3, "epochs": 3, "patience": 5, "seed": 1}
    return MelodyConfig(**{**base, **kw})


def test_short_training_lowers_reconstruction_error(sung, tmp_path):
    songs = songs_from(sung)
    cfg = _melody_cfg(input="mel+pitch", key_invariant=True, batch_size=4, epochs=4)
    torch.manual_seed(cfg.seed)
    untrained = TCAE(TCAEConfig.from_settings(cfg, FEAT, SR))
    before = reconstruction_error(untrained, [s.mel for s in songs])
    result = train_melody(songs, cfg, FEAT, SR, tmp_path, device="cpu")
    after = reconstruction_error(result.model, [s.mel for s in songs])
    assert after < 0.8 * before
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert all(h["held_out"] for h in result.history)
    assert result.history[-1]["valid_loss"] < result.history[0]["valid_loss"]


def _melody_wins(vec: dict[tuple[int, int], torch.Tensor]) -> list[bool]:
    """For singers a != b and melodies j != o: is (a, j) closer to (b, j) than to (a, o)?"""
    wins = []
    for j in range(3):
        for a in range(3):
            for b in range(3):
                if a != b:
                    same_melody = torch.dot(vec[a, j], vec[b, j])
                    wins += [bool(same_melody > torch.dot(vec[a, j], vec[a, o])) for o in range(3) if o != j]
    return wins


@pytest.mark.parametrize("pool, source", [("interval-lag", "mel"), ("voiced-interval-lag", "mel"),
                                          ("voiced-interval-lag", "waveform")])
def test_same_melody_by_two_voices_is_closer_than_two_melodies_by_one_voice(sung, sung_pitch, pool, source):
    """Key-invariant pitch features (interval-lag poolings), across the singers' own keys."""
    model = tiny(input="pitch", key_invariant=True, pool=pool, n_lags=24, max_lag_frames=256, pitch_source=source)
    vec = {k: melody_vector(model, mel, sung_pitch[k]) for k, mel in sung.items()}
    wins = _melody_wins(vec)
    assert sum(wins) >= 0.8 * len(wins), f"{sum(wins)}/{len(wins)}"
    # The latent mean/std alone is dominated by the voice: the pooling is what makes it melodic.
    stats = tiny(input="pitch", key_invariant=True, pool="stats")
    assert sum(_melody_wins({k: melody_vector(stats, mel) for k, mel in sung.items()})) < sum(wins)


@pytest.mark.parametrize("pool, source", [("interval-lag", "mel"), ("voiced-interval-lag", "mel"),
                                          ("voiced-interval-lag", "waveform")])
def test_interval_lag_batch_of_songs_of_unequal_length_equals_each_song_alone(sung, sung_pitch, pool, source):
    model = tiny(input="pitch", key_invariant=True, pool=pool, pitch_source=source)
    songs = [SongFeatures(sung[0, 0], sung_pitch[0, 0]), SongFeatures(sung[1, 2][:, :300], sung_pitch[1, 2][:, :300])]
    encoder = melody_encoder(model)
    out = encoder.embed_songs(songs)
    assert out.shape == (2, encoder.dim)
    for i, song in enumerate(songs):
        torch.testing.assert_close(out[i], encoder.embed_songs([song])[0])


def test_checkpoint_reloads_bit_identically_and_refuses_other_config(sung, sung_pitch, tmp_path):
    songs = songs_from(sung)[:4]
    cfg = _melody_cfg(epochs=1)
    audio = audio_fingerprint(AudioConfig(vocal_activity=True), SeparationConfig())
    result = train_melody(songs, cfg, FEAT, SR, tmp_path, device="cpu", audio=audio)
    model, meta = load_melody(tmp_path)
    assert meta.version == result.version.version
    assert meta.audio == result.version.audio == audio  # the training audio's settings travel with the model
    for (k, a), b in zip(result.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    mel, wave_pitch = songs[0].mel, sung_pitch[0, 0]
    assert torch.equal(melody_vector(model, mel, wave_pitch), melody_vector(result.model, mel, wave_pitch))
    assert torch.equal(model.pool_song(mel), result.model.pool_song(mel))  # the weights, through the latents
    load_melody(tmp_path, expect=TCAEConfig.from_settings(cfg, FEAT, SR))
    with pytest.raises(CheckpointMismatchError, match="latent_dim"):
        load_melody(tmp_path, expect=TCAEConfig.from_settings(_melody_cfg(latent_dim=8), FEAT, SR))


def test_resume_after_interruption_equals_uninterrupted_run(sung, tmp_path):
    songs = songs_from(sung)[:5]
    cfg = _melody_cfg(epochs=3, input="pitch")
    full = train_melody(songs, cfg, FEAT, SR, tmp_path / "a", device="cpu")

    def crash(record: dict) -> None:
        if record.get("epoch") == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_melody(songs, cfg, FEAT, SR, tmp_path / "b", device="cpu", log=crash)
    resumed = train_melody(songs, cfg, FEAT, SR, tmp_path / "b", device="cpu")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("source", ["waveform", "mel"])
def test_voiced_interval_lag_ignores_a_transposed_take_and_any_length(source):
    """The same singer and take sung 2 semitones up or down keeps its vector; short and long songs embed."""
    model = tiny(input="pitch", key_invariant=True, pool="voiced-interval-lag", n_lags=24, max_lag_frames=256,
                 pitch_source=source)
    voice, _ = corpus.make_singers(2, seed=5)
    tune, other_tune = corpus.make_melodies(2, seed=5)

    def embed(wave: torch.Tensor) -> torch.Tensor:
        return melody_vector(model, log_mel(wave, FEAT, SR), pitch.wave_pitch(wave, SR, FEAT.hop_length))

    vec = lambda v, m, tr=0: embed(torch.from_numpy(corpus.sing(v, m, 10.0, SR, seed=1, transpose=tr)))
    base = vec(voice, tune)
    different = vec(voice, other_tune)
    for shift in (-2, 2):
        moved = vec(voice, tune, shift)
        assert torch.dot(base, moved) > torch.dot(base, different)
    assert melody_encoder(model).dim == 11 * len(model.cfg.lags)  # the unison interval is left out
    with_unison = tiny(pool="voiced-interval-lag", unison=True)
    assert melody_encoder(with_unison).dim == 12 * len(with_unison.cfg.lags)
    gen = torch.Generator().manual_seed(0)
    for n_samples in (600, 10_000, 20_000 * FEAT.hop_length):
        out = embed(0.1 * torch.randn(n_samples, generator=gen))
        assert out.shape == (melody_encoder(model).dim,) and torch.isfinite(out).all()


def test_the_front_end_keeps_only_the_harmonic_matrix_in_checkpoints():
    """The descriptor's finer matrix is rebuilt from the config: checkpoints keep their keys and load."""
    keys = [k for k in tiny(input="pitch", key_invariant=True, pool="voiced-interval-lag").state_dict()
            if k.startswith("front.")]
    assert keys == ["front.harmonics"]


def test_waveform_pitch_source_needs_the_pitch_and_says_how_to_get_it(sung, sung_pitch):
    model = tiny(pool="voiced-interval-lag", n_lags=24, max_lag_frames=256)
    assert model.cfg.pitch_source == "waveform" and melody_encoder(model).needs == {"mel", "pitch"}
    with pytest.raises(ValueError, match="waveform pitch.*wave_pitch"):
        melody_vector(model, sung[0, 0])
    with pytest.raises(ValueError, match=r"expected waveform pitch \(44, 501\)"):
        melody_vector(model, sung[0, 0], sung_pitch[0, 0][:, :10])
    assert melody_encoder(tiny(pool="voiced-interval-lag", pitch_source="mel")).needs == {"mel"}
    assert melody_encoder(tiny(pool="stats")).needs == {"mel"}  # latent poolings read the mel only
    with pytest.raises(ValueError, match="pitch_source 'crepe'"):
        TCAEConfig(pitch_source="crepe")


def test_waveform_pitch_separates_melodies_better_than_the_mel_for_low_voices():
    """Why 'waveform' is the default: for a low voice the 48-band mel mistakes the notes (docs/melody.md)."""
    low = [v for v in corpus.make_singers(12, seed=3) if v.range_midi[0] <= 45][:2]
    assert len(low) == 2
    tunes = corpus.make_melodies(4, seed=3)

    def vectors(source: str) -> dict[tuple[int, int], torch.Tensor]:
        model = tiny(input="pitch", key_invariant=True, pool="voiced-interval-lag", n_lags=24,
                     max_lag_frames=256, pitch_source=source)
        out = {}
        for i, v in enumerate(low):
            for j, m in enumerate(tunes):
                wave = torch.from_numpy(corpus.sing(v, m, 12.0, SR, seed=10 * i + j))
                out[i, j] = melody_vector(model, log_mel(wave, FEAT, SR), pitch.wave_pitch(wave, SR, FEAT.hop_length))
        return out

    def margin(vec) -> float:
        """Mean over melodies: similarity to the same melody by the other voice minus the best other melody."""
        return float(np.mean([
            torch.dot(vec[0, j], vec[1, j]) - max(torch.dot(vec[0, j], vec[1, o]) for o in range(4) if o != j)
            for j in range(4)
        ]))

    wave_margin, mel_margin = margin(vectors("waveform")), margin(vectors("mel"))
    assert wave_margin > 0 and wave_margin > mel_margin, (wave_margin, mel_margin)


def test_checkpoints_saved_before_pitch_source_and_unison_existed_compute_what_they_did():
    data = TCAEConfig().to_dict()
    del data["pitch_source"], data["unison"]
    cfg = TCAEConfig.from_dict(data)
    assert cfg.pitch_source == "mel" and cfg.unison


def test_leaving_out_the_unison_interval_lowers_the_similarity_of_unrelated_melodies(sung, sung_pitch):
    """Held notes look alike in every song: without interval 0 two different melodies share less of their vector."""
    kw = {"input": "pitch", "key_invariant": True, "pool": "voiced-interval-lag", "n_lags": 24, "max_lag_frames": 256}
    moving, full = tiny(**kw), tiny(**kw, unison=True)

    def mean_cross_melody_cosine(model) -> float:
        vec = {k: melody_vector(model, mel, sung_pitch[k]) for k, mel in sung.items()}
        return float(np.mean([torch.dot(vec[a], vec[b]) for a in vec for b in vec if a[1] != b[1]]))

    assert mean_cross_melody_cosine(moving) < mean_cross_melody_cosine(full) - 0.2  # measured 0.28 vs 0.72


def test_lag_bands_keep_a_melody_recognisable_at_another_tempo():
    """The same tune sung 10 % faster or slower stays closer to itself with lag bands than without."""
    voices = corpus.make_singers(2, seed=11)
    tune, other = corpus.make_melodies(2, seed=11)
    kw = {"input": "pitch", "key_invariant": True, "pool": "voiced-interval-lag", "n_lags": 30, "max_lag_frames": 500}

    def song(model, voice, melody, rate=1.0) -> torch.Tensor:
        melody = dataclasses.replace(melody, tempo_bpm=melody.tempo_bpm * rate)
        wave = torch.from_numpy(corpus.sing(voice, melody, 16.0, SR, seed=3))
        return melody_vector(model, log_mel(wave, FEAT, SR), pitch.wave_pitch(wave, SR, FEAT.hop_length))

    def margins(model) -> list[float]:
        out = []
        for v in voices:
            base, different = song(model, v, tune), song(model, v, other)
            out += [float(torch.dot(base, song(model, v, tune, r)) - torch.dot(base, different)) for r in (0.9, 1.1)]
        return out

    banded, plain = margins(tiny(**kw)), margins(tiny(**kw, lag_bands=False))
    assert min(banded) > 0 and np.mean(banded) > np.mean(plain)


def test_old_checkpoints_keep_single_lags():
    data = TCAEConfig().to_dict()
    del data["lag_bands"]
    assert not TCAEConfig.from_dict(data).lag_bands and TCAEConfig().lag_bands
