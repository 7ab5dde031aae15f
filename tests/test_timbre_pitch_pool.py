"""timbre.pitch_pool: a song vector pooled over pitch shifts (formants moving), so a pitched re-upload
meets its original; recorded with the model and read back from its version's config."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.augment import mel_pitch_shift
from recsys.config import FeatureConfig, Settings, TimbreConfig
from recsys.corpus import make_melodies, make_singers, sing
from recsys.encoders import TimbreSongEncoder, timbre_encoder
from recsys.features import SongFeatures, log_mel
from recsys.models.timbre import TimbreEncoder
from recsys.production import pitch_copy
from recsys.training.contrastive import model_config_for

SR = 16000
FEAT = FeatureConfig()
SHIFTS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def model(seed: int = 0) -> TimbreEncoder:
    torch.manual_seed(seed)
    return TimbreEncoder(model_config_for(TimbreConfig(), FEAT)).eval()


def meta(shifts) -> dict:
    """What a timbre version records (recsys.training.contrastive._meta_config), as far as the encoder reads it."""
    return {"training": TimbreConfig(pitch_pool=shifts, pitch_pool_chunks="every").model_dump(mode="json"),
            "features": FEAT.model_dump(mode="json"), "sample_rate": SR}


def song(seconds: float = 8.0, semitones: float = 0.0) -> SongFeatures:
    wave = sing(make_singers(4, 0)[1], make_melodies(2, 0)[0], seconds, SR, seed=7).astype("float32")
    if semitones:
        wave = pitch_copy(wave, SR, semitones)
    return SongFeatures(log_mel(torch.from_numpy(wave), FEAT, SR))


def test_the_pooled_vector_is_the_mean_of_the_shifted_songs_vectors():
    m = model()
    pooled = timbre_encoder(m, meta(SHIFTS))
    assert isinstance(pooled, TimbreSongEncoder) and pooled.pitch_pool == SHIFTS
    plain = timbre_encoder(m, meta(()))
    assert plain.pitch_pool == () and timbre_encoder(m).pitch_pool == ()
    s = song()
    by_hand = F.normalize(sum(plain.embed_songs([SongFeatures(mel_pitch_shift(s.mel, x, FEAT, SR))])[0]
                              for x in SHIFTS), dim=-1)
    # The encoder shifts chunk by chunk (each chunk's own floor above the top band), the hand version the song.
    assert float(pooled.embed_songs([s])[0] @ by_hand) > 0.999
    assert float(pooled.embed_songs([s])[0] @ plain.embed_songs([s])[0]) < 0.9999  # pooling changed it


def test_a_pitched_copy_is_nearer_its_original_when_pooled():
    m = model()
    original, up, down = song(), song(semitones=2.0), song(semitones=-2.0)
    for name, copy in (("+2", up), ("-2", down)):
        plain = timbre_encoder(m).embed_songs([original, copy])
        pooled = timbre_encoder(m, meta(SHIFTS)).embed_songs([original, copy])
        assert float(pooled[0] @ pooled[1]) > float(plain[0] @ plain[1]), name


def test_pitch_pool_is_part_of_what_a_model_version_records():
    from recsys.training.contrastive import _meta_config

    settings = Settings(timbre={"pitch_pool": [-2, 0, 2]})
    cfg = settings.timbre
    recorded = _meta_config(model_config_for(cfg, FEAT), cfg, FEAT, SR)
    assert recorded["training"]["pitch_pool"] == [-2.0, 0.0, 2.0]
    assert timbre_encoder(model(), recorded).pitch_pool == (-2.0, 0.0, 2.0)


def meta_rotate(shifts) -> dict:
    return {"training": TimbreConfig(pitch_pool=shifts, pitch_pool_chunks="rotate").model_dump(mode="json"),
            "features": FEAT.model_dump(mode="json"), "sample_rate": SR}


def test_rotate_reads_each_chunk_once_at_its_own_shift_smallest_first():
    m = model()
    rotate = timbre_encoder(m, meta_rotate(SHIFTS))
    assert rotate.pitch_pool_chunks == "rotate" and timbre_encoder(m, meta(SHIFTS)).pitch_pool_chunks == "every"
    s = song(seconds=16.0)
    chunks = m.chunk_song(s.mel)  # (n, n_mels, F)
    assert chunks.shape[0] == 5
    order = (0.0, -1.0, 1.0, -2.0, 2.0)  # the smallest shifts first: a one-chunk song is read in its own key
    by_hand = torch.cat([m.embed(mel_pitch_shift(c[None], x, FEAT, SR)) for c, x in zip(chunks, order)])
    expected = F.normalize(by_hand.mean(0), dim=-1)
    calls, embed = [], m.embed
    m.embed = lambda batch: calls.append(batch.shape[0]) or embed(batch)  # counts the chunks embedded
    got = rotate.embed_songs([s])[0]
    assert float(got @ expected) > 0.9999
    assert sum(calls) == 5  # as many chunk embeddings as the plain vector: the pool costs no extra pass
    plain = timbre_encoder(m).embed_songs([s])[0]
    assert float(got @ plain) < 0.9999


def test_rotate_reads_a_short_songs_chunks_again_until_every_shift_is_used():
    m = model()
    s = song(seconds=7.0)
    chunks = m.chunk_song(s.mel)
    assert chunks.shape[0] == 2
    order = (0.0, -1.0, 1.0, -2.0, 2.0)
    by_hand = torch.cat([m.embed(mel_pitch_shift(chunks[k % 2][None], x, FEAT, SR)) for k, x in enumerate(order)])
    got = timbre_encoder(m, meta_rotate(SHIFTS)).embed_songs([s])[0]
    assert float(got @ F.normalize(by_hand.mean(0), dim=-1)) > 0.9999
    # Batched with a long song, the short one's vector is the same.
    both = timbre_encoder(m, meta_rotate(SHIFTS)).embed_songs([song(seconds=16.0), s])
    assert float(both[1] @ got) > 0.9999


def test_rotate_brings_a_pitched_copy_nearer_its_original():
    m = model()
    original, up, down = song(16.0), song(16.0, semitones=2.0), song(16.0, semitones=-2.0)
    for name, copy in (("+2", up), ("-2", down)):
        plain = timbre_encoder(m).embed_songs([original, copy])
        rotate = timbre_encoder(m, meta_rotate(SHIFTS)).embed_songs([original, copy])
        assert float(rotate[0] @ rotate[1]) > float(plain[0] @ plain[1]), name


def test_a_model_recorded_before_pitch_pool_chunks_pools_every_chunk():
    recorded = meta(SHIFTS)
    del recorded["training"]["pitch_pool_chunks"]
    assert timbre_encoder(model(), recorded).pitch_pool_chunks == "every"


def test_pitch_pool_rejects_shifts_out_of_range_or_repeated():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"timbre.pitch_pool \[-12.0, 0.0\]: every shift must lie within"):
        TimbreConfig(pitch_pool=(-12, 0))
    with pytest.raises(ValidationError, match="repeats a shift"):
        TimbreConfig(pitch_pool=(0, 1, 1))
    with pytest.raises(ValidationError, match="pitch_pool_chunks"):
        TimbreConfig(pitch_pool_chunks="some")
    with pytest.raises(ValueError, match="pitch_pool_chunks must be 'every' or 'rotate'"):
        TimbreSongEncoder(model(), pitch_pool=SHIFTS, feat_cfg=FEAT, sample_rate=SR, pitch_pool_chunks="some")
