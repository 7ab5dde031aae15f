"""Contrastive training of the back end over the pretrained speaker front end (`timbre.front_end: speaker`).

The pair policies act on the waveform here (the front end reads audio, not the log-mel): each
training song gives views, each a waveform read by the front end into partials
(:func:`training_views`):

- ``self`` and ``produced`` (the song through a production chain of its own, recsys.production):
  positives of the song, so the recording chain cannot be what matches them;
- ``pitch_shift`` / ``time_stretch``, one drawn amount each, in the role the pair policy gives them:
  a positive of the song, or (role negative) a voice of its own, its views positives of each other.

A step takes `speaker_songs_per_step` songs, two crops (a few of a view's partials, drawn anywhere: the
served partials are spread over the song) from their positive views, and two crops of each negative view,
through NT-Xent (labels: the songs; SupCon over singers with timbre.supervised) from
pytorch-metric-learning, for `speaker_steps` steps; the last is published: label-free validation cannot
tell a better voice model from a noisier one (recsys.training.contrastive._keeps_best).

Label-free, two songs are not each other's negatives when the front end puts one among the other's
`speaker_pseudo_neighbours` nearest (with singer labels: when they share one). Plain instance
discrimination pushes a singer's songs apart: with 8 partials a song it undid what the front end knew
(seen-singer P@1 .80 untrained, .63 trained on the 24-singer development catalog; docs/evaluation.md).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.augment import PairPolicy, draw_rates, draw_semitones, resolve_policy
from recsys.config import FeatureConfig, TimbreConfig
from recsys.models.speaker_timbre import FRONT_END, SpeakerBackEnd, SpeakerBackEndConfig, pad_partials
from recsys.training.checkpoint import catalog_fingerprint, save_version
from recsys.training.common import nearest_songs, pick_device, seed_everything
from recsys.training.contrastive import KIND, IndicesTuple, TrainResult, pairs_without_related, singer_codes
from recsys.training.data import TrainingSong, canonical_order

CROP_PARTIALS = (2, 5)  # a view's crop: this many of its partials, drawn anywhere (all when fewer)
LOGGED_EPOCHS = 10  # the schedule (timbre.speaker_steps) is reported in this many parts


def _song_generator(seed: int, content_hash: str) -> tuple[np.random.Generator, torch.Generator]:
    """Per-song random draws, fixed by the seed and the audio: the catalog's order changes nothing."""
    key = zlib.crc32(content_hash.encode()) ^ (seed * 2654435761 % 2**32)
    return np.random.default_rng(key), torch.Generator().manual_seed(key)


def training_views(
    wave: torch.Tensor, sample_rate: int, policy: PairPolicy, seed: int, content_hash: str,
    max_partials: int = 0, device: torch.device | str = "cpu",
) -> dict[str, tuple[str, torch.Tensor]]:
    """One song's (N,) voiced waveform -> {view: (role, (K, 256) partials)} for the views the policy names.

    With `max_partials` (features.speaker_partials), a song long enough to hold that many partials apart has
    its views made from the partials it is served with, joined end to end, so a long song costs what a short
    one does; the `self` view's partials are then exactly the served ones."""
    from recsys.production import draw_chain, pitch_copy, produce, tempo_copy
    from recsys.speaker import PARTIAL_SECONDS, partial_starts, speaker_partials

    rng, gen = _song_generator(seed, content_hash)
    x = wave.detach().cpu().numpy().astype(np.float32)
    window = round(PARTIAL_SECONDS * sample_rate)
    if max_partials > 0 and x.size >= max_partials * window:  # the served partials do not overlap: join them
        x = np.concatenate([x[start : start + window] for start in partial_starts(x.size, window, max_partials)])
    waves: dict[str, tuple[str, np.ndarray]] = {
        "self": ("positive", x),
        "produced": ("positive", produce(x, sample_rate, draw_chain(rng, sample_rate))),
    }
    if policy.pitch_shift.role != "off":
        semitones = float(draw_semitones(policy.pitch_shift, 1, gen)[0])
        waves["pitch_shift"] = (policy.pitch_shift.role, pitch_copy(x, sample_rate, semitones))
    if policy.time_stretch.role != "off":
        rate = float(draw_rates(policy.time_stretch, 1, gen)[0])
        waves["time_stretch"] = (policy.time_stretch.role, tempo_copy(x, rate))
    return {name: (role, speaker_partials(torch.from_numpy(np.ascontiguousarray(w)), sample_rate, max_partials,
                                          device))
            for name, (role, w) in waves.items()}


def crop_partials(partials: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CROP_PARTIALS of the view's partials drawn anywhere, in song order (all of them when fewer): the served
    partials are spread over the song, and a run of consecutive ones of a few would be nearly all of them."""
    n = partials.shape[0]
    size = min(n, int(torch.randint(CROP_PARTIALS[0], CROP_PARTIALS[1] + 1, (1,), generator=gen)))
    return partials[torch.randperm(n, generator=gen)[:size].sort().values]


def front_end_neighbours(songs: Sequence[TrainingSong], k: int) -> torch.Tensor:
    """(n, min(k, n - 1)) each song's nearest songs by the front end's own song vector (the mean of its served
    partials, what the untrained back end gives): its pseudo-singers. Fixed, not recomputed: the pretrained
    front end already knows voices."""
    mean = torch.stack([_views_of(s)["self"][1].mean(0) for s in songs])
    return nearest_songs(torch.nn.functional.normalize(mean, dim=-1), k)


def _views_of(song: TrainingSong) -> dict[str, tuple[str, torch.Tensor]]:
    views = song.speaker_views
    if not views:
        raise ValueError(f"song {song.song_id}: no speaker-front-end views; build the training songs with "
                         "timbre.front_end: speaker (Recommender.training_songs does)")
    return views


def build_step(songs: Sequence[TrainingSong], picks: Sequence[int], labels_of: Sequence[int],
               gen: torch.Generator, related: torch.Tensor | None = None,
               singers: Sequence[str | None] | None = None) -> tuple[list[torch.Tensor], torch.Tensor, IndicesTuple | None]:
    """Crops, labels and pairs of one step: two crops of the picked songs' positive views (label: the song's,
    or its singer's), and two of each negative view under a label of its own. The pairs
    (recsys.training.contrastive.pairs_without_related) leave out negatives between songs `related` links or
    `singers` says share a singer; None: all pairs the labels make."""
    crops, labels, song_of, original = [], [], [], []
    fresh = max(labels_of) + 1
    for i in picks:
        views = _views_of(songs[i])
        positives = [p for role, p in views.values() if role == "positive"]
        for _ in range(2):
            crops.append(crop_partials(positives[int(torch.randint(len(positives), (1,), generator=gen))], gen))
            labels.append(labels_of[i])
            song_of.append(i)
            original.append(True)
        for role, partials in views.values():
            if role == "negative":
                crops += [crop_partials(partials, gen), crop_partials(partials, gen)]
                labels += [fresh, fresh]
                song_of += [i, i]
                original += [False, False]
                fresh += 1
    label_tensor = torch.tensor(labels)
    pairs = pairs_without_related(label_tensor, torch.tensor(song_of), torch.tensor(original),
                                  related=related, singers=singers)
    return crops, label_tensor, pairs


def _labels(songs: Sequence[TrainingSong], supervised: bool) -> list[int]:
    if not supervised:
        return list(range(len(songs)))
    return singer_codes([s.singer for s in songs]).tolist()


def train_speaker_timbre(
    songs: list[TrainingSong],
    cfg: TimbreConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    log: Callable[[dict], None] | None = None,
    audio: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the back end on the songs' speaker views (TrainingSong.speaker_views) and publish it as a timbre version."""
    from pytorch_metric_learning.losses import NTXentLoss, SupConLoss

    if len(songs) < 2:
        raise ValueError(f"contrastive training needs at least 2 songs, got {len(songs)}")
    if cfg.supervised and not any(s.singer is not None for s in songs):
        raise ValueError("timbre.supervised=True needs singer labels, but no song has one")
    resolve_policy(cfg)  # validated; the views already carry its roles
    songs = canonical_order(songs)
    for s in songs:
        _views_of(s)
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    model_cfg = SpeakerBackEndConfig(embedding_dim=cfg.embedding_dim)
    meta_config = {**model_cfg.to_dict(), "front_end": FRONT_END, "training": cfg.model_dump(mode="json"),
                   "features": feat_cfg.model_dump(mode="json"), "sample_rate": sample_rate}
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    model = SpeakerBackEnd(model_cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss_fn = SupConLoss(temperature=cfg.temperature) if cfg.supervised else NTXentLoss(temperature=cfg.temperature)
    labels_of = _labels(songs, cfg.supervised)
    singers = [s.singer for s in songs]
    related = singers_known = None
    if not cfg.supervised:
        if any(x is not None for x in singers):
            singers_known = singers
        elif cfg.speaker_pseudo_neighbours > 0:
            related = front_end_neighbours(songs, cfg.speaker_pseudo_neighbours)
    history: list[dict[str, float]] = []
    steps = [len(part) for part in torch.arange(cfg.speaker_steps).chunk(LOGGED_EPOCHS)]
    for epoch, n_steps in enumerate(steps):
        began, losses = time.perf_counter(), []
        for _ in range(n_steps):
            picks = torch.randperm(len(songs), generator=gen)[: cfg.speaker_songs_per_step].tolist()
            crops, labels, pairs = build_step(songs, picks, labels_of, gen, related, singers_known)
            pairs = None if pairs is None else tuple(t.to(dev) for t in pairs)
            loss = loss_fn(model(*pad_partials(crops, dev)), labels.to(dev), pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "seconds": time.perf_counter() - began})
        if log is not None:
            log(history[-1])
    model = model.eval().cpu()
    version = save_version(workspace, KIND, model.state_dict(), meta_config, fingerprint,
                           metrics={"final_loss": history[-1]["loss"], "best_epoch": len(history) - 1,
                                    "epochs_run": len(history)}, audio=audio)
    return TrainResult(model, version, history[-1]["loss"], history, len(history) - 1, False)


def publish_combined(log_mel: TrainResult, speaker: TrainResult, cfg: TimbreConfig, workspace: Path,
                     audio: dict[str, Any] | None = None) -> TrainResult:
    """`timbre.front_end: log-mel+speaker`: the two trained models (each already its own version) published
    together as one timbre version, weighted by cfg.speaker_share (recsys.models.speaker_timbre.CombinedTimbre)."""
    from recsys.models.speaker_timbre import COMBINED, CombinedTimbre

    if log_mel.version.fingerprint != speaker.version.fingerprint:
        raise ValueError("the two timbre models were trained on different songs "
                         f"({log_mel.version.fingerprint} and {speaker.version.fingerprint})")
    from recsys.training.contrastive import load_timbre

    parts = {"log_mel": log_mel.version.model_config, "speaker": speaker.version.model_config}
    models = [load_timbre(workspace, r.version.version)[0] for r in (log_mel, speaker)]  # as published
    model = CombinedTimbre(models[0], models[1], cfg.speaker_share, parts["log_mel"]).eval()
    meta_config = {"front_end": COMBINED, **parts, "speaker_share": cfg.speaker_share,
                   "parts": [log_mel.version.version, speaker.version.version]}
    version = save_version(workspace, KIND, model.state_dict(), meta_config, log_mel.version.fingerprint,
                           metrics={"log_mel": log_mel.version.metrics, "speaker": speaker.version.metrics},
                           audio=audio)
    return TrainResult(model, version, log_mel.final_loss, log_mel.history, log_mel.best_epoch, log_mel.stopped_early)
