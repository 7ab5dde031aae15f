"""The encoder contract: needs, dim, unit rows, clear errors; vectors equal to their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys import corpus, pitch
from recsys.config import FeatureConfig, MelodyConfig
from recsys.encoders import (
    IntervalLagConfig,
    IntervalLagMelody,
    SongEncoder,
    TCAEMelodyEncoder,
    TimbreSongEncoder,
    melody_encoder,
    timbre_encoder,
)
from recsys.features import SongFeatures, log_mel
from recsys.models.tcae import TCAE, TCAEConfig, masked_pool
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig

SR = 16000
FEAT = FeatureConfig()
TINY_TCAE = {"channels": 8, "latent_dim": 4, "n_layers": 4, "decoder_layers": 2, "n_lags": 12,
             "max_lag_frames": 200}
TINY_TIMBRE = TimbreModelConfig(channels=8, hidden=32, attention_dim=16, embedding_dim=24, projection_dim=12,
                                chunk_frames=50)
# (TCAEConfig overrides, encoder class): every pool the config knows.
POOLS = {
    "stats": ({"pool": "stats", "input": "mel"}, TCAEMelodyEncoder),
    "stats+lag": ({"pool": "stats+lag", "input": "mel+pitch", "key_invariant": True}, TCAEMelodyEncoder),
    "interval-lag": ({"pool": "interval-lag", "input": "pitch", "key_invariant": True}, IntervalLagMelody),
    "voiced, mel pitch": ({"pool": "voiced-interval-lag", "pitch_source": "mel"}, IntervalLagMelody),
    "voiced, waveform pitch": ({"pool": "voiced-interval-lag"}, IntervalLagMelody),
    "voiced, unison, single lags": ({"pool": "voiced-interval-lag", "unison": True, "lag_bands": False},
                                    IntervalLagMelody),
}


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    """Four synthetic sung songs of 3-7 s, and a short noise burst."""
    singers, tunes = corpus.make_singers(2, seed=3), corpus.make_melodies(2, seed=3)
    out = [torch.from_numpy(corpus.sing(v, m, 3.0 + 2 * i + j, SR, seed=i + 2 * j))
           for i, v in enumerate(singers) for j, m in enumerate(tunes)]
    return [*out, 0.1 * torch.randn(900, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(scope="module")
def songs(waves) -> list[SongFeatures]:
    return [SongFeatures(log_mel(w, FEAT, SR), pitch.wave_pitch(w, SR, FEAT.hop_length)) for w in waves]


def tcae(**kw) -> TCAE:
    torch.manual_seed(0)
    return TCAE(TCAEConfig(**{**TINY_TCAE, **kw})).eval()


@pytest.fixture(scope="module")
def timbre_model() -> TimbreEncoder:
    torch.manual_seed(0)
    model = TimbreEncoder(TINY_TIMBRE)
    with torch.no_grad():  # a few training-mode passes so BatchNorm statistics are not the identity
        for _ in range(3):
            model(torch.randn(8, 48, 60) * 2 - 5)
    return model.eval()


def _all_encoders(timbre_model) -> dict[str, SongEncoder]:
    melody = {name: melody_encoder(tcae(**kw)) for name, (kw, _) in POOLS.items()}
    return {"timbre": timbre_encoder(timbre_model), **melody}


# --- the contract -------------------------------------------------------------------------


def test_every_encoder_keeps_the_contract(songs, timbre_model):
    for name, encoder in _all_encoders(timbre_model).items():
        assert encoder.needs <= {"mel", "pitch"}, name
        x = encoder.embed_songs(songs)
        assert x.shape == (len(songs), encoder.dim) and x.dtype == torch.float32, name
        assert not x.requires_grad and torch.isfinite(x).all(), name
        torch.testing.assert_close(x.norm(dim=1), torch.ones(len(songs)), atol=1e-5, rtol=0)
        assert encoder.embed_songs([]).shape == (0, encoder.dim), name
        assert encoder.to("cpu") is encoder


@pytest.mark.parametrize("name", list(POOLS))
def test_melody_encoder_follows_the_configured_pool(name):
    kw, kind = POOLS[name]
    model = tcae(**kw)
    encoder = melody_encoder(model)
    assert type(encoder) is kind
    reads_pitch = kw["pool"] == "voiced-interval-lag" and kw.get("pitch_source", "waveform") == "waveform"
    assert encoder.needs == ({"mel", "pitch"} if reads_pitch else {"mel"})
    lags = len(model.cfg.lags)
    dim = {"stats": 2 * 4, "stats+lag": (2 + lags) * 4, "interval-lag": 12 * lags,
           "voiced, unison, single lags": 12 * lags}.get(name, 11 * lags)
    assert encoder.dim == dim
    assert not isinstance(encoder, torch.nn.Module)
    assert timbre_encoder(TimbreEncoder(TINY_TIMBRE)).needs == {"mel"}


def test_the_default_melody_settings_give_the_waveform_descriptor():
    model = TCAE(TCAEConfig.from_settings(MelodyConfig(), FEAT, SR))
    encoder = melody_encoder(model)
    assert isinstance(encoder, IntervalLagMelody) and encoder.needs == {"mel", "pitch"}
    assert encoder.cfg == IntervalLagConfig.from_settings(MelodyConfig(), FEAT, SR)
    assert encoder.dim == 11 * len(model.cfg.lags)


def test_a_missing_pitch_names_the_feature_and_how_to_compute_it(songs):
    encoder = melody_encoder(tcae(pool="voiced-interval-lag"))
    how = r"waveform pitch \('pitch'\).*recsys\.pitch\.wave_pitch.*song_features"
    with pytest.raises(ValueError, match=how):
        encoder.embed_songs([SongFeatures(songs[0].mel)])
    for kw in ({"pool": "voiced-interval-lag", "pitch_source": "mel"}, {"pool": "stats"}):
        melody_encoder(tcae(**kw)).embed_songs([SongFeatures(songs[0].mel)])  # reads the mel only


def test_a_log_mel_of_the_wrong_size_is_refused(songs):
    forty_bands = [SongFeatures(torch.randn(40, 90))]
    with pytest.raises(ValueError, match="n_mels=48"):
        melody_encoder(tcae(pool="voiced-interval-lag", pitch_source="mel")).embed_songs(forty_bands)
    with pytest.raises(ValueError, match="n_mels=48"):
        melody_encoder(tcae(pool="stats")).embed_songs(forty_bands)
    with pytest.raises(ValueError, match=r"\(B, 48, T\)"):
        timbre_encoder(TimbreEncoder(TINY_TIMBRE)).embed_songs(forty_bands)


def test_interval_lag_config_is_checked():
    with pytest.raises(ValueError, match="not one of interval-lag, voiced-interval-lag"):
        IntervalLagConfig(lags=(1, 2), pool="stats")
    with pytest.raises(ValueError, match="pitch_source 'crepe'"):
        IntervalLagConfig(lags=(1, 2), pitch_source="crepe")
    with pytest.raises(ValueError, match="distinct increasing"):
        IntervalLagConfig(lags=(2, 1))
    with pytest.raises(ValueError, match="not one of interval-lag"):
        IntervalLagConfig.from_settings(MelodyConfig(pool="stats"), FEAT, SR)


# --- vectors equal their definitions (the computation before the encoder contract) -----------------


@pytest.mark.parametrize("name", list(POOLS))
def test_melody_vectors_equal_the_direct_computation(songs, name):
    kw, _ = POOLS[name]
    model = tcae(**kw)
    cfg, lags = model.cfg, model.cfg.lags
    fine = pitch.harmonic_matrix(FEAT, SR, bins_per_semitone=pitch.FINE_BINS)

    def reference(song: SongFeatures) -> torch.Tensor:
        if cfg.pool in ("stats", "stats+lag"):
            z = model.encode_frames(song.mel).T.unsqueeze(0)  # (1, L, T)
            everywhere = torch.ones(1, z.shape[-1], dtype=torch.bool)
            return masked_pool(z, everywhere, lags if cfg.pool == "stats+lag" else None)[0]
        if cfg.pool == "interval-lag":
            salience = pitch.pitch_salience(song.mel, pitch.harmonic_matrix(FEAT, SR))
            return pitch.interval_lag_profile(pitch.fold_chroma(salience), lags)
        salience = song.pitch if cfg.pitch_source == "waveform" else pitch.fine_semitone_salience(song.mel, fine)
        return pitch.voiced_interval_lag_profile(
            pitch.voiced_chroma(salience), pitch.voicing_weight(song.mel), lags, cfg.unison, cfg.lag_bands)

    got = melody_encoder(model).embed_songs(songs)
    for i, song in enumerate(songs):
        torch.testing.assert_close(got[i], reference(song), atol=1e-6, rtol=0)


def test_an_interval_lag_model_reads_the_harmonics_its_checkpoint_carries(songs):
    model = tcae(pool="interval-lag", input="pitch", key_invariant=True)
    before = melody_encoder(model).embed_songs(songs[:1])
    with torch.no_grad():
        model.front.harmonics.mul_(torch.linspace(0.5, 1.5, model.front.harmonics.shape[0])[:, None])
    assert not torch.allclose(melody_encoder(model).embed_songs(songs[:1]), before)
    assert torch.equal(IntervalLagMelody(IntervalLagConfig.from_tcae(model.cfg)).embed_songs(songs[:1]), before)


def test_timbre_vector_is_the_normalised_mean_of_its_chunk_embeddings(songs, timbre_model):
    got = timbre_encoder(timbre_model).embed_songs(songs)
    for i, song in enumerate(songs):
        expected = F.normalize(timbre_model.embed(timbre_model.chunk_song(song.mel)).mean(0), dim=-1)
        torch.testing.assert_close(got[i], expected, atol=1e-6, rtol=0)


def test_timbre_batches_equal_songs_one_by_one(songs, timbre_model):
    long_song = SongFeatures(torch.cat([songs[1].mel, songs[2].mel], dim=1))  # several chunks
    short_song = SongFeatures(songs[0].mel[:, :30])  # shorter than one chunk: a shape group of its own
    batch = [*songs, long_song, short_song]
    for per_pass in (512, 3, 1):  # all chunks in one pass, or split across passes
        encoder = TimbreSongEncoder(timbre_model, max_chunks_per_pass=per_pass)
        got = encoder.embed_songs(batch)
        for i, song in enumerate(batch):
            torch.testing.assert_close(got[i], encoder.embed_songs([song])[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="max_chunks_per_pass"):
        TimbreSongEncoder(timbre_model, max_chunks_per_pass=0)


def test_timbre_encoder_leaves_the_model_mode_alone(songs, timbre_model):
    timbre_model.train()
    try:
        encoder = timbre_encoder(timbre_model)
        x = encoder.embed_songs(songs[:2])
        assert timbre_model.training
    finally:
        timbre_model.eval()
    torch.testing.assert_close(x, encoder.embed_songs(songs[:2]), atol=1e-6, rtol=0)


def test_latent_batches_equal_songs_one_by_one(songs):
    encoder = melody_encoder(tcae(pool="stats+lag", input="mel"))
    got = encoder.embed_songs(songs)
    for i, song in enumerate(songs):
        torch.testing.assert_close(got[i], encoder.embed_songs([song])[0])
