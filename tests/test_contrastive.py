"""Contrastive training: sampler balance, batch pair structure per policy, training, resume, checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from recsys.augment import PAIR_POLICIES, crop_stretch, resolve_policy
from recsys.config import AudioConfig, FeatureConfig, SeparationConfig, TimbreConfig
from recsys.corpus import make_melodies, make_singers, sing
from recsys.evaluation import retrieval_metrics
from recsys.features import SongFeatures, log_mel
from recsys.fingerprint import audio_fingerprint
from recsys.models.timbre import TimbreEncoder
from recsys.training.checkpoint import CheckpointMismatchError, load_resume
from recsys.training.contrastive import (
    build_batch,
    embed_songs,
    load_timbre,
    make_loss,
    model_config_for,
    train_timbre,
)
from recsys.training.data import TrainingSong
from recsys.training.sampler import BalancedChunkSampler

SR = 16000
FEAT = FeatureConfig()
AUDIO = audio_fingerprint(AudioConfig(vocal_activity=True), SeparationConfig())
TINY = TimbreConfig(
    chunk_frames=64,
    songs_per_batch=6,
    chunks_per_song=2,
    channels=8,
    embedding_dim=32,
    projection_dim=16,
    epochs=6,
    steps_per_epoch=10,
    patience=10,
    extra_positives=("gain", "noise"),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machine is shared: two OpenMP threads contending for busy cores run ~7x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def songs() -> list[TrainingSong]:
    """6 singers x 3 songs x 6 s of synthetic singing (recsys.corpus)."""
    out = []
    for i, voice in enumerate(make_singers(6, seed=0)):
        for j, melody in enumerate(make_melodies(3, seed=0)):
            wave = torch.from_numpy(sing(voice, melody, 6.0, SR, seed=j))
            out.append(TrainingSong(i * 3 + j, SongFeatures(log_mel(wave, FEAT, SR)), voice.name, f"{i}-{j}"))
    return out


# --- sampler -----------------------------------------------------------------------------------


def test_sampler_is_deterministic_and_well_formed():
    frames, singers = [300, 80, 500, 1000, 40], ["a", "a", "b", "c", None]

    def batches(seed):
        s = BalancedChunkSampler(frames, singers, 4, 3, 64, generator=torch.Generator().manual_seed(seed))
        return [s.sample() for _ in range(20)]

    assert batches(0) == batches(0) and batches(0) != batches(1)
    for refs in batches(0):
        songs = [song for song, _ in refs]
        assert len(set(songs)) == 4 and all(songs.count(s) == 3 for s in set(songs))
        assert all(0 <= start <= max(0, frames[song] - 64) for song, start in refs)


def test_sampler_draws_singers_equally_despite_unequal_song_counts():
    singers = ["prolific"] * 10 + ["rare"] + ["duo"] * 2
    s = BalancedChunkSampler([200] * 13, singers, 1, 1, 64, generator=torch.Generator().manual_seed(0))
    counts = {"prolific": 0, "rare": 0, "duo": 0}
    for _ in range(3000):
        counts[singers[s.sample_songs()[0]]] += 1
    for name, n in counts.items():
        assert n / 3000 == pytest.approx(1 / 3, abs=0.04), (name, counts)


def test_sampler_covers_long_songs_uniformly_and_pairs_songs_per_singer():
    s = BalancedChunkSampler([1000], None, 1, 4, 100, generator=torch.Generator().manual_seed(0))
    starts = torch.tensor([start for _ in range(500) for _, start in s.sample()], dtype=torch.float32)
    assert starts.min() < 50 and starts.max() > 850 and starts.mean() == pytest.approx(450, abs=25)
    singers = ["a", "a", "a", "b", "b", "c", "c"]
    s = BalancedChunkSampler(
        [100] * 7, singers, 4, 1, 64, songs_per_singer=2, generator=torch.Generator().manual_seed(0)
    )
    for _ in range(10):
        picked = [singers[i] for i in s.sample_songs()]
        assert len(picked) == 4 and len(set(picked)) == 2  # two singers, two songs each


# --- batch construction ------------------------------------------------------------------------

REFS = [(0, 5), (0, 40), (1, 0), (1, 30), (2, 10), (2, 20), (3, 0), (3, 50)]
SINGERS = ["a", "a", "b", "c"]


def batch_mels() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(48, 100, generator=gen) - 5 for _ in range(4)]


def make_batch(policy_name, singers=None, supervised=False, extras=()):
    policy = resolve_policy(TimbreConfig(policy=policy_name, extra_positives=extras))
    return build_batch(
        batch_mels(),
        REFS,
        policy,
        32,
        FEAT,
        SR,
        torch.Generator().manual_seed(3),
        singers=singers,
        supervised=supervised,
    )


def pair_sets(labels, indices_tuple=None):
    a1, p, a2, n = indices_tuple if indices_tuple is not None else lmu.get_all_pairs_indices(labels)
    return set(zip(a1.tolist(), p.tolist())), set(zip(a2.tolist(), n.tolist()))


@pytest.mark.parametrize("name", list(PAIR_POLICIES))
def test_policy_gives_expected_positive_and_negative_structure(name):
    views, labels, indices = make_batch(name)
    negatives = [
        aug for aug, short in (("pitch_shift", "ps_neg"), ("time_stretch", "ts_neg")) if short in name
    ]
    assert views.shape == (8 * (1 + len(negatives)), 48, 32) and indices is None
    # Originals: the two chunks of a song are positives; other songs are negatives.
    assert labels[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # Each negative augmentation makes one new voice per song: its 2 chunks share a label no one else has.
    groups = [labels[8 + 2 * g : 10 + 2 * g] for g in range(4 * len(negatives))]
    assert all(g[0] == g[1] for g in groups)
    assert len({int(g[0]) for g in groups} | {0, 1, 2, 3}) == 4 + len(groups)
    pos, neg = pair_sets(labels)
    for g in range(len(groups)):
        i = 8 + 2 * g
        assert (i, i + 1) in pos and (i, (g % 4) * 2) in neg  # a negative copy repels its own song
    # Positive-role augmentations alter every original view; without them an original is a plain crop.
    mels = batch_mels()
    crops = torch.stack([crop_stretch(mels[s], start, 32) for s, start in REFS])
    unchanged = [torch.equal(views[k], crops[k]) for k in range(8)]
    if "pos" in name:
        assert not all(unchanged)
    else:
        assert all(unchanged)
    # Negative copies differ from their original view.
    for g in range(len(groups)):
        k = (g % 4) * 2
        assert not torch.allclose(views[8 + 2 * g], views[k], atol=1e-3)


def test_self_supervised_with_singers_leaves_same_singer_songs_unpaired():
    _, labels, indices = make_batch("ps_neg_ts_neg", singers=SINGERS)
    assert indices is not None
    pos, neg = pair_sets(labels, indices)
    all_pos, all_neg = pair_sets(labels)
    assert pos == all_pos
    same_singer = {(i, j) for i in (0, 1) for j in (2, 3)} | {
        (j, i) for i in (0, 1) for j in (2, 3)
    }  # songs 0, 1
    assert neg == all_neg - same_singer and same_singer <= all_neg
    assert (0, 8 + 2) in neg  # song 1's pitch-shifted copy is still a negative of song 0


def test_supervised_labels_are_singers():
    _, labels, indices = make_batch("ps_pos_ts_pos", singers=SINGERS, supervised=True)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2] and indices is None
    pos, _ = pair_sets(labels)
    assert (0, 3) in pos  # different songs of singer "a" are positives
    with pytest.raises(ValueError, match="singer labels"):
        make_batch("ps_pos_ts_pos", supervised=True)


def naive_ntxent(x, labels, indices, temperature):
    """NT-Xent by a plain loop over positive pairs (reference for the loss the trainer uses)."""
    pos, neg = pair_sets(labels, indices)
    x = F.normalize(x, dim=-1)
    losses = []
    for a, p in sorted(pos):
        s_ap = float(x[a] @ x[p]) / temperature
        s_an = [float(x[a] @ x[n]) / temperature for aa, n in neg if aa == a]
        losses.append(-(s_ap - math.log(math.exp(s_ap) + sum(math.exp(s) for s in s_an))))
    return sum(losses) / len(losses)


def test_loss_sees_the_batch_pairs():
    _, labels, indices = make_batch("ps_neg_ts_pos", singers=SINGERS)
    x = torch.randn(len(labels), 16, generator=torch.Generator().manual_seed(0))
    loss = make_loss(TimbreConfig(temperature=0.2))
    assert float(loss(x, labels, indices)) == pytest.approx(naive_ntxent(x, labels, indices, 0.2), rel=1e-4)
    assert type(make_loss(TimbreConfig(supervised=True))).__name__ == "SupConLoss"


# --- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(songs, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("timbre")
    return train_timbre(songs, TINY, FEAT, SR, workspace, audio=AUDIO), workspace


def leave_one_out(model, songs):
    x = embed_songs(model, [s.mel for s in songs])
    y = [s.singer for s in songs]
    return retrieval_metrics(x, x, y, y, list(range(len(y))))


def test_training_lowers_loss_and_beats_chance_and_the_untrained_model(songs, trained):
    result, _ = trained
    assert [h["epoch"] for h in result.history] == list(range(TINY.epochs))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    torch.manual_seed(TINY.seed)
    untrained = TimbreEncoder(model_config_for(TINY, FEAT))  # the same initial weights
    before, after = leave_one_out(untrained, songs), leave_one_out(result.model, songs)
    chance = 2 / 17  # 2 other songs of the singer among 17
    assert after["p_at_1"] >= 2 * chance
    assert after["map"] > before["map"]


def test_checkpoint_reloads_bit_identically_and_refuses_other_configs(songs, trained):
    result, workspace = trained
    model, meta = load_timbre(workspace, feat_cfg=FEAT, sample_rate=SR)
    assert meta.version == result.version.version
    assert meta.audio == result.version.audio == AUDIO  # the training audio's settings travel with the model
    mels = torch.stack([crop_stretch(s.mel, 0, 64) for s in songs[:4]])
    assert torch.equal(model.embed(mels), result.model.embed(mels))
    assert torch.equal(embed_songs(model, [songs[0].mel]), embed_songs(result.model, [songs[0].mel]))
    with pytest.raises(CheckpointMismatchError, match="channels: checkpoint=8 requested=16"):
        load_timbre(workspace, expect=replace(model.cfg, channels=16))
    with pytest.raises(CheckpointMismatchError, match="features"):
        load_timbre(workspace, feat_cfg=FeatureConfig(n_mels=40))
    assert load_resume(workspace, "timbre") is None  # cleared once the version is published


class _Interrupt(Exception):
    pass


def test_resume_continues_from_the_saved_epoch(songs, tmp_path: Path):
    cfg = TINY.model_copy(update={"epochs": 3, "steps_per_epoch": 2})
    straight = train_timbre(songs, cfg, FEAT, SR, tmp_path / "straight")

    def stop_after_epoch_1(record):
        if record.get("epoch") == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_timbre(songs, cfg, FEAT, SR, tmp_path / "resumed", log=stop_after_epoch_1)
    assert load_resume(tmp_path / "resumed", "timbre")["epoch"] == 1
    seen: list[dict] = []
    resumed = train_timbre(songs, cfg, FEAT, SR, tmp_path / "resumed", log=seen.append)
    assert [r["epoch"] for r in seen] == [2]
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key

    # A resume point from another config is not used, and says so.
    with pytest.raises(_Interrupt):
        train_timbre(songs, cfg, FEAT, SR, tmp_path / "stale", log=stop_after_epoch_1)
    seen = []
    train_timbre(songs, cfg.model_copy(update={"seed": 1}), FEAT, SR, tmp_path / "stale", log=seen.append)
    assert seen[0]["event"] == "resume_ignored" and [r["epoch"] for r in seen[1:]] == [0, 1, 2]


def test_training_rejects_bad_inputs(songs, tmp_path: Path):
    with pytest.raises(ValueError, match="at least 2 songs"):
        train_timbre(songs[:1], TINY, FEAT, SR, tmp_path)
    unlabelled = [replace(s, singer=None) for s in songs]
    with pytest.raises(ValueError, match="needs singer labels"):
        train_timbre(unlabelled, TINY.model_copy(update={"supervised": True}), FEAT, SR, tmp_path)
    with pytest.raises(ValueError, match="unknown pair policy"):
        train_timbre(songs, TINY.model_copy(update={"policy": "nope"}), FEAT, SR, tmp_path)


def test_unlabelled_and_supervised_training_run(songs, tmp_path: Path):
    cfg = TINY.model_copy(update={"epochs": 1, "steps_per_epoch": 2})
    unlabelled = [replace(s, singer=None) for s in songs]
    result = train_timbre(unlabelled, cfg, FEAT, SR, tmp_path / "ssl")
    assert 0.0 <= result.history[0]["p_at_1"] <= 1.0  # own-song retrieval (first half -> second half)
    result = train_timbre(songs, cfg.model_copy(update={"supervised": True}), FEAT, SR, tmp_path / "sup")
    assert math.isfinite(result.final_loss)
