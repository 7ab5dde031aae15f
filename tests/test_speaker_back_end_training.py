"""The speaker back end's label-free training (recsys.training.speaker): what a step pairs, and that it keeps
what the pretrained front end already knows about voices.

The catalogs here are d-vectors made to order (a singer's direction, each song's own recording chain,
noise per partial), so the trainer is checked without the front end's cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recsys.config import FeatureConfig, TimbreConfig
from recsys.evaluation import retrieval_metrics
from recsys.features import SongFeatures
from recsys.models.speaker_timbre import SpeakerBackEnd, SpeakerBackEndConfig, pad_partials
from recsys.training.data import TrainingSong
from recsys.training.speaker import (
    CROP_PARTIALS,
    build_step,
    crop_partials,
    front_end_neighbours,
    train_speaker_timbre,
)


def _catalog(seed: int, n_singers: int = 8, n_songs: int = 6, chain: float = 0.9) -> list[TrainingSong]:
    """Songs whose 8 partials are their singer's direction, plus their song's chain, plus noise: the chain
    alone tells a song's views from every other song's, as a real recording chain does."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, 256, generator=g), dim=-1)

    singers = unit(n_singers)
    songs = []
    for i in range(n_singers * n_songs):
        voice = singers[i // n_songs] + chain * unit()

        def partials(shift: torch.Tensor | float = 0.0, voice: torch.Tensor = voice) -> torch.Tensor:
            return F.normalize(voice + shift + 0.5 * unit(8), dim=-1)

        views = {"self": ("positive", partials()), "produced": ("positive", partials(0.3 * unit())),
                 "pitch_shift": ("negative", partials(0.8 * unit()))}
        songs.append(TrainingSong(song_id=i, features=SongFeatures(mel=torch.zeros(1, 1)), content_hash=f"h{i}",
                                  speaker_views=views, metadata={"singer": i // n_songs}))
    return songs


def _singer_p_at_1(model: SpeakerBackEnd, songs: list[TrainingSong]) -> float:
    with torch.no_grad():
        v = model(*pad_partials([s.speaker_views["self"][1] for s in songs])).numpy()
    y = np.array([s.metadata["singer"] for s in songs])
    return retrieval_metrics(v, v, y, y, np.arange(len(y)))["p_at_1"]


def test_a_crop_is_a_few_of_the_views_partials_in_song_order():
    partials = torch.arange(8, dtype=torch.float32)[:, None].expand(8, 256)
    gen = torch.Generator().manual_seed(0)
    sizes, spread = set(), False
    for _ in range(50):
        crop = crop_partials(partials, gen)
        rows = crop[:, 0].long().tolist()
        assert CROP_PARTIALS[0] <= len(rows) <= CROP_PARTIALS[1] and rows == sorted(set(rows))
        sizes.add(len(rows))
        spread |= rows != list(range(rows[0], rows[0] + len(rows)))  # not only runs of consecutive ones
    assert sizes == set(range(CROP_PARTIALS[0], CROP_PARTIALS[1] + 1)) and spread
    assert crop_partials(partials[:1], gen).shape == (1, 256)  # fewer than the crop: all of them


def test_the_front_ends_neighbours_are_left_out_of_a_steps_negatives_only():
    songs = _catalog(0, n_singers=2, n_songs=3)
    related = front_end_neighbours(songs, 2)
    assert related.shape == (6, 2)
    assert all(set(related[i].tolist()) == {j for j in range(6) if j // 3 == i // 3 and j != i} for i in range(6))
    labels_of = list(range(6))
    crops, labels, pairs = build_step(songs, [0, 1, 3], labels_of, torch.Generator().manual_seed(0), related)
    # per song: two crops of its positives, then two of its pitch-shifted view (a label of its own)
    assert len(crops) == 12 and labels.tolist() == [0, 0, 6, 6, 1, 1, 7, 7, 3, 3, 8, 8]
    a1, _p, a2, n = pairs
    negatives = set(zip(a2.tolist(), n.tolist()))
    assert (0, 4) not in negatives and (4, 0) not in negatives  # songs 0 and 1: one singer's, not negatives
    assert (0, 8) in negatives and (0, 2) in negatives  # another singer's song; the song's own shifted view
    assert (2, 6) in negatives  # two negative views stay apart, whoever's songs they are
    assert len(a1) == 12  # every positive pair stays
    _, _, unpaired = build_step(songs, [0, 1, 3], labels_of, torch.Generator().manual_seed(0))
    assert unpaired is None  # no neighbours, no labels: all pairs the labels make
    _, _, by_label = build_step(songs, [0, 1, 3], labels_of, torch.Generator().manual_seed(0),
                                singers=["a", "a", "b", "b", "b", "b"])
    assert (0, 4) not in set(zip(by_label[2].tolist(), by_label[3].tolist()))


def test_label_free_training_keeps_what_the_front_end_knows_only_with_its_neighbours(tmp_path: Path):
    """Plain instance discrimination pushes a singer's songs apart (the chain tells them apart); with the
    front end's neighbours left out of the negatives the trained back end finds the singers as the
    untrained one (the mean d-vector) does."""
    songs = _catalog(0)
    torch.manual_seed(0)
    untrained = _singer_p_at_1(SpeakerBackEnd(SpeakerBackEndConfig()).eval(), songs)
    found = {}
    for k in (0, 10):
        cfg = TimbreConfig(front_end="speaker", speaker_steps=150, speaker_songs_per_step=16,
                           speaker_pseudo_neighbours=k)
        found[k] = _singer_p_at_1(train_speaker_timbre(songs, cfg, FeatureConfig(), 16000, tmp_path / str(k),
                                                       device="cpu").model, songs)
    assert untrained >= 0.95 and found[10] >= 0.95, (untrained, found)
    assert found[0] <= 0.7, found
