"""The pretrained speaker front end as a product option (`timbre.front_end: speaker`, issue 15 item 5).

Resemblyzer's GE2E partials of the voiced audio (streamed block by block), the pair policies on
the waveform, a contrastive back end trained on the catalog, and the whole product path on it:
ingest, train, embed, search.
"""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recsys.augment import resolve_policy
from recsys.config import AudioConfig, AugmentPolicy, FeatureConfig, TimbreConfig, load_settings
from recsys.corpus import make_melodies, make_singers, sing
from recsys.errors import MissingDependencyError
from recsys.features import song_features

pytest.importorskip("resemblyzer")

SR = 16000
SPEAKER = {"front_end": "speaker", "speaker_steps": 60, "speaker_songs_per_step": 12}


def _song(singer: int, melody: int, seconds: float) -> np.ndarray:
    voice = make_singers(6, seed=0)[singer]
    return sing(voice, make_melodies(4, seed=0)[melody], seconds, SR, seed=melody)


def test_partials_are_spread_over_the_song_and_capped():
    from recsys.speaker import partial_starts

    starts = partial_starts(100_000, 1000, 8)
    assert len(starts) == 8 and starts[0] == 0 and starts[-1] == 99_000  # the sample spans the song, ends included
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1  # even
    assert partial_starts(5500, 1000, 0) == [0, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500]  # half apart
    assert partial_starts(5500, 1000, 4) == [0, 1500, 3000, 4500]
    assert partial_starts(1200, 1000, 8) == [100]  # room for one: centred
    assert partial_starts(600, 1000, 8) == [0]  # shorter than a partial: one, of all of it


def test_a_partial_is_read_as_resemblyzer_reads_it():
    """The batched mel and levelling equal Resemblyzer's own preprocessing of each partial (librosa's mel)."""
    from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

    from recsys.speaker import _encoder, speaker_partials

    wave = _song(2, 1, 9.0)
    window = 25600
    ours = speaker_partials(torch.from_numpy(wave), SR, 3)  # 9 s: 3 of the 10 partials that fit
    starts = [round(i * (wave.size - window) / 2) for i in range(3)]
    mels = [wav_to_mel_spectrogram(normalize_volume(wave[a : a + window], -30.0))[:160] for a in starts]
    with torch.no_grad():
        theirs = _encoder("cpu")(torch.from_numpy(np.stack(mels)))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
    # at another rate, the same audio gives the same voice
    import torchaudio

    at_22k = torchaudio.functional.resample(torch.from_numpy(wave), SR, 22050)
    other = speaker_partials(at_22k, 22050, 3)
    assert float(torch.nn.functional.cosine_similarity(other, ours).min()) > 0.95


def test_streamed_partials_are_the_whole_songs_and_the_cap_holds():
    wave = torch.from_numpy(_song(0, 0, 40.0))
    every = FeatureConfig(speaker_partials=0)
    whole = song_features(wave, AudioConfig(), every, needs={"mel", "speaker"})
    blocks = song_features(wave, AudioConfig(block_seconds=6.0), every, needs={"mel", "speaker"})
    assert whole.speaker.shape[1] == 256
    voiced_seconds = whole.n_frames * 256 / SR
    assert whole.speaker.shape[0] == 1 + int((voiced_seconds - 1.6) / 0.8 + 1e-6)  # all, half a partial apart
    # streamed in 6 s blocks, a partial that straddles two blocks is the same partial
    np.testing.assert_allclose(blocks.speaker.numpy(), whole.speaker.numpy(), atol=1e-5)
    capped = song_features(wave, AudioConfig(block_seconds=6.0), FeatureConfig(), needs={"mel", "speaker"})
    assert capped.speaker.shape[0] == FeatureConfig().speaker_partials == 8 < whole.speaker.shape[0]
    mean = [torch.nn.functional.normalize(f.speaker.mean(0), dim=0) for f in (whole, capped)]
    assert float(mean[0] @ mean[1]) > 0.98  # 8 partials of the song say what all of them say
    torch.testing.assert_close(capped.mel, whole.mel)  # the log-mel is computed beside it as before
    assert "speaker" not in song_features(wave, AudioConfig(), FeatureConfig()).available


def test_the_pair_policy_gives_the_views_their_roles():
    from recsys.training.speaker import training_views

    wave = torch.from_numpy(_song(1, 0, 6.0))
    views = training_views(wave, SR, resolve_policy(TimbreConfig()), 0, "abc")  # ps_neg_ts_pos
    assert {name: role for name, (role, _) in views.items()} == {
        "self": "positive", "produced": "positive", "pitch_shift": "negative", "time_stretch": "positive"}
    off_cfg = TimbreConfig(pitch_shift=AugmentPolicy(role="off"), time_stretch=AugmentPolicy(role="off"))
    off = training_views(wave, SR, resolve_policy(off_cfg), 0, "abc")
    assert set(off) == {"self", "produced"}
    # a view is another waveform: its partials differ from the song's own
    assert not torch.allclose(views["produced"][1], views["self"][1], atol=1e-3)
    again = training_views(wave, SR, resolve_policy(TimbreConfig()), 0, "abc")
    assert all(torch.equal(views[k][1], again[k][1]) for k in views)  # fixed by seed and audio
    # with the cap, a long song's views are made from its served partials: `self` is exactly those
    long = torch.from_numpy(_song(1, 1, 30.0))
    capped = training_views(long, SR, resolve_policy(TimbreConfig()), 0, "abc", max_partials=4)
    served = song_features(long, AudioConfig(), FeatureConfig(speaker_partials=4), needs={"mel", "speaker"})
    # (the song's features are of its voiced audio; here the wave is taken as it is)
    from recsys.speaker import speaker_partials

    np.testing.assert_allclose(capped["self"][1].numpy(), speaker_partials(long, SR, 4).numpy(), atol=1e-5)
    assert served.speaker.shape[0] == 4 and all(p.shape[0] <= 4 for _, p in capped.values())


@pytest.fixture(scope="module")
def speaker_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 singers x 3 songs x 8 s, ingested by path, trained with the speaker front end."""
    from recsys.api import Recommender
    from recsys.corpus import generate_corpus

    ws = tmp_path_factory.mktemp("speaker-ws")
    manifest = generate_corpus(ws / "corpus", n_singers=6, songs_per_singer=3, song_seconds=8.0, seed=0, workers=1)
    rec = Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu", timbre=SPEAKER,
                                    melody={"epochs": 1}))
    rec.ingest(manifest, workers=1)
    rec.train()
    return ws


def _open(ws: Path, **timbre):
    from recsys.api import Recommender

    return Recommender(load_settings(manifest_file=None, workspace=ws, device="cpu", timbre={**SPEAKER, **timbre},
                                     melody={"epochs": 1}))


@pytest.mark.slow
def test_the_product_path_runs_on_the_speaker_front_end(speaker_workspace, tmp_path):
    rec = _open(speaker_workspace)
    assert rec.models.timbre_meta.model_config["front_end"] == "speaker"
    assert rec.models.needs >= {"speaker", "mel"}
    ids, vectors = rec.catalog_vectors()
    assert len(ids) == 18 and vectors.timbre.shape == (18, 128)
    truth = {s["id"]: s["singer"] for s in rec.songs()}
    found = sum(rec.search_song(i, k=5).singers[0].singer == truth[i] for i in ids)
    assert found >= 12, f"the singer's own voice on top for {found} of 18 songs"  # chance: about 3
    # a file outside the catalog is embedded through the same front end: a quieter copy meets its original
    song = rec.songs()[0]
    wave, rate = sf.read(song["path"], dtype="float32")
    sf.write(tmp_path / "copy.wav", 0.5 * wave, rate)
    hits = rec.search(tmp_path / "copy.wav", k=3)
    assert hits.songs[0].song_id == song["id"] and hits.songs[0].timbre > 0.99


@pytest.mark.slow
def test_the_vectors_come_from_the_trained_back_end(speaker_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(speaker_workspace, ws)
    rec = _open(ws, seed=1)
    before = rec.catalog_vectors()[1].timbre
    rec.train("timbre")
    after = rec.catalog_vectors()[1].timbre
    assert after.shape == before.shape
    assert float(np.abs(after - before).max()) > 1e-3  # another seed, another back end, other vectors


def test_a_missing_resemblyzer_is_one_clear_error(monkeypatch):
    from recsys import speaker

    real = builtins.__import__

    def no_resemblyzer(name, *args, **kwargs):
        if name.startswith("resemblyzer"):
            raise ImportError("No module named 'resemblyzer'")
        return real(name, *args, **kwargs)

    speaker._encoder.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_resemblyzer)
    with pytest.raises(MissingDependencyError, match=r"singer-recsys\[speaker\]"):
        speaker.check_available()
    monkeypatch.undo()
    speaker._encoder.cache_clear()


def test_the_studies_refuse_the_speaker_front_end_with_the_bench_to_use(tmp_path):
    from recsys.errors import InvalidOptionError
    from recsys.studies.trainers import TimbreTrainer

    settings = load_settings(manifest_file=None, workspace=tmp_path, device="cpu", timbre={"front_end": "speaker"})
    with pytest.raises(InvalidOptionError, match=r"timbre.front_end 'speaker'.*--front-ends log-mel,speaker"):
        TimbreTrainer().train([], settings, tmp_path)


@pytest.mark.slow
def test_both_front_ends_give_one_vector_weighted_by_the_share(speaker_workspace, tmp_path):
    from recsys.training.contrastive import load_timbre

    ws = tmp_path / "ws"
    shutil.copytree(speaker_workspace, ws)
    rec = _open(ws, front_end="log-mel+speaker", speaker_share=0.25, epochs=2, steps_per_epoch=5)
    result = rec.train("timbre")["timbre"]
    config = result.version.model_config
    assert config["front_end"] == "log-mel+speaker" and config["speaker_share"] == 0.25
    ids, vectors = rec.catalog_vectors()
    assert vectors.timbre.shape == (18, 256) and rec.models.needs >= {"mel", "speaker"}
    np.testing.assert_allclose(np.linalg.norm(vectors.timbre, axis=1), 1.0, atol=1e-5)
    # each half is its own published model's unit vector, scaled by the square root of its share
    log_mel, speaker = (load_timbre(ws, v)[0] for v in config["parts"])
    feats = [rec.embedder.features(s["path"]) for s in rec.songs()[:3]]
    from recsys.encoders import timbre_encoder

    halves = [timbre_encoder(m, config["log_mel"]).embed_songs(feats).numpy() for m in (log_mel, speaker)]
    np.testing.assert_allclose(vectors.timbre[:3, :128], np.sqrt(0.75) * halves[0], atol=1e-5)
    np.testing.assert_allclose(vectors.timbre[:3, 128:], np.sqrt(0.25) * halves[1], atol=1e-5)
    truth = {s["id"]: s["singer"] for s in rec.songs()}
    assert sum(rec.search_song(i, k=5).singers[0].singer == truth[i] for i in ids) >= 12
