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
    return {"training": TimbreConfig(pitch_pool=shifts).model_dump(mode="json"),
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
