"""Contrastive training of the timbre/style encoder.

A batch holds `chunks_per_song` chunks of each sampled song (positive-role
augmentations applied to every view) plus, per negative-role augmentation, a copy
of each song's chunks altered by one drawn amount that gets a label of its own
(a "new voice": its chunks are positives of each other, negatives of the rest).
Losses come from pytorch-metric-learning: NTXentLoss (self-supervised, labels =
songs) or SupConLoss (supervised, labels = singers). Augmentation runs on the
log-mel (recsys.augment), so the trainer needs only each TrainingSong's log-mel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.losses import NTXentLoss, SupConLoss
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from tqdm.auto import tqdm

from recsys.augment import (
    PairPolicy,
    apply_extra,
    crop_stretch,
    draw_rates,
    draw_semitones,
    mel_pitch_shift,
    resolve_policy,
)
from recsys.config import FeatureConfig, TimbreConfig
from recsys.encoders import TimbreSongEncoder
from recsys.evaluation import retrieval_metrics, split_by_song
from recsys.features import SongFeatures, seconds_per_frame
from recsys.models.restore import restore_timbre
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig
from recsys.training.checkpoint import (
    ModelVersion,
    catalog_fingerprint,
    clear_resume,
    load_version,
    save_version,
)
from recsys.training.common import (
    EarlyStopping,
    MixedPrecision,
    nearest_songs,
    pick_device,
    run_epochs,
    seed_everything,
)
from recsys.training.data import TrainingSong, canonical_order
from recsys.training.sampler import BalancedChunkSampler, ChunkRef

KIND = "timbre"
VALID_FRACTION = 0.2
IndicesTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# --- batch construction -------------------------------------------------------------------


def build_batch(
    mels: Sequence[torch.Tensor],
    refs: Sequence[ChunkRef],
    policy: PairPolicy,
    chunk_frames: int,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    generator: torch.Generator,
    singers: Sequence[str | None] | None = None,
    supervised: bool = False,
    related: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, IndicesTuple | None]:
    """Views, labels and pairs for one contrastive step.

    mels: (n_mels, T) log-mel per song; refs: (song index, start frame) chunks from
    the sampler. Returns views (N, n_mels, chunk_frames), labels (N,) and an
    indices_tuple (a1, p, a2, n) for the loss, or None when the labels say it all.
    Labels: the song index (self-supervised) or the singer's rank among sorted
    singers (supervised; an unlabelled song is a singer of its own), then one fresh
    label per (negative augmentation, song). In self-supervised mode with singer
    labels, originals of different songs by the same singer are neither positives
    nor negatives (the returned indices_tuple leaves those pairs out); `related`
    ((n_songs, k) long: each song's related songs, -1 for none, e.g. its nearest
    neighbours, its pseudo-singer; a pair is related if either lists the other) does the
    same without labels, and overrides what `singers` would say.
    """
    if supervised and singers is None:
        raise ValueError("supervised batches need singer labels (singers=None given)")
    pos, neg = policy.roles("positive"), policy.roles("negative")
    augments = {"pitch_shift": policy.pitch_shift, "time_stretch": policy.time_stretch}

    def draw(name: str, n: int) -> torch.Tensor:
        if name == "pitch_shift":
            return draw_semitones(augments[name], n, generator)
        return draw_rates(augments[name], n, generator)

    songs_in_batch = list(dict.fromkeys(song for song, _ in refs))
    if supervised:
        names = sorted({s for s in singers if s is not None})
        rank = {s: i for i, s in enumerate(names)}
        song_label = {
            i: rank[singers[i]] if singers[i] is not None else len(names) + i for i in songs_in_batch
        }
    else:
        song_label = {i: i for i in songs_in_batch}

    # Each view: (song, start, rate, semitones, label, is_original).
    n = len(refs)
    specs: list[tuple[int, int, float, float, int, bool]] = []
    values = {
        name: (draw(name, n) if name in pos else torch.full((n,), 1.0 if name == "time_stretch" else 0.0))
        for name in ("pitch_shift", "time_stretch")
    }
    for k, (song, start) in enumerate(refs):
        specs.append(
            (
                song,
                start,
                float(values["time_stretch"][k]),
                float(values["pitch_shift"][k]),
                song_label[song],
                True,
            )
        )
    next_label = max(song_label.values()) + 1 if song_label else 0
    for name in neg:
        amount = draw(name, len(songs_in_batch))
        for j, song in enumerate(songs_in_batch):
            label, next_label = next_label, next_label + 1
            for k, (s, start) in enumerate(refs):
                if s != song:
                    continue
                _, _, rate, semis, _, _ = specs[k]
                if name == "time_stretch":
                    rate = float(amount[j])
                else:
                    semis = float(amount[j])
                specs.append((song, start, rate, semis, label, False))

    views = torch.stack(
        [crop_stretch(mels[song], start, chunk_frames, rate) for song, start, rate, _, _, _ in specs]
    )
    semitones = torch.tensor([spec[3] for spec in specs], dtype=torch.float64)
    if bool((semitones != 0).any()):
        views = mel_pitch_shift(views, semitones, feat_cfg, sample_rate)
    frame_s = seconds_per_frame(feat_cfg, sample_rate)
    for name in policy.extra_positives:
        views = apply_extra(views, name, generator, frame_s, feat_cfg, sample_rate)
    labels = torch.tensor([spec[4] for spec in specs], dtype=torch.long, device=views.device)

    indices_tuple = None
    if not supervised and (related is not None or singers is not None):
        song_of = torch.tensor([spec[0] for spec in specs], device=labels.device)
        original = torch.tensor([spec[5] for spec in specs], dtype=torch.bool, device=labels.device)
        indices_tuple = pairs_without_related(labels, song_of, original, related=related, singers=singers)
    return views, labels, indices_tuple


def pairs_without_related(
    labels: torch.Tensor, song_of: torch.Tensor, original: torch.Tensor,
    related: torch.Tensor | None = None, singers: Sequence[str | None] | None = None,
) -> IndicesTuple | None:
    """The loss's (a1, p, a2, n) pairs for views with these `labels`, less the negatives that pair originals of
    two related songs (`song_of`: each view's song; `original`: not a negative augmentation): songs that
    `related` ((n_songs, k) long, -1 for none) links either way, or else that share a `singers` label.
    None when no pair is left out (the labels say it all). Only the step's pairs are looked up: no
    (n_songs, n_songs) matrix."""
    if related is None and singers is None:
        return None
    a1, p, a2, neg_idx = lmu.get_all_pairs_indices(labels)
    of_a, of_n = song_of[a2], song_of[neg_idx]
    if related is not None:
        table = related.to(labels.device)
        linked = (table[of_a] == of_n[:, None]).any(1) | (table[of_n] == of_a[:, None]).any(1)
    else:
        codes = singer_codes(singers).to(labels.device)
        linked = (codes[of_a] == codes[of_n]) & (of_a != of_n)
    skip = original[a2] & original[neg_idx] & linked
    return (a1, p, a2[~skip], neg_idx[~skip]) if bool(skip.any()) else None


def singer_codes(singers: Sequence[str | None]) -> torch.Tensor:
    """(n,) long: equal for songs of one singer label; each unlabelled song a negative code of its own."""
    names = {s: k for k, s in enumerate(sorted({s for s in singers if s is not None}))}
    return torch.tensor([names[s] if s is not None else -1 - i for i, s in enumerate(singers)], dtype=torch.long)


def same_singer_matrix(singers: Sequence[str | None]) -> torch.Tensor:
    """(n, n) bool: songs i != j share a singer label (unlabelled songs are related to none)."""
    codes = singer_codes(singers)
    return (codes[:, None] == codes[None, :]) & ~torch.eye(len(codes), dtype=torch.bool)


def nearest_neighbour_matrix(vectors: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n) bool, symmetric: j is among i's k nearest songs, or i among j's (common.nearest_songs as a
    matrix, for studies of small catalogs; the trainer keeps the (n, k) table: its pseudo-singers, each
    song's nearest songs by the model being trained, recomputed every epoch, DeepCluster-style)."""
    n = vectors.shape[0]
    out = torch.zeros(n, n, dtype=torch.bool)
    top = nearest_songs(vectors, k)
    if top.shape[1]:
        out[torch.arange(n)[:, None], top] = True
    return out | out.T


def make_loss(cfg: TimbreConfig) -> torch.nn.Module:
    """NTXentLoss (self-supervised) or SupConLoss (supervised), cosine similarity, cfg.temperature."""
    return (
        SupConLoss(temperature=cfg.temperature) if cfg.supervised else NTXentLoss(temperature=cfg.temperature)
    )


# --- retrieval metrics ----------------------------------------------------------------------


def embed_songs(model: TimbreEncoder, mels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_songs, n_mels, T_i) log-mels -> (n_songs, D) song vectors on CPU (recsys.encoders.TimbreSongEncoder)."""
    return TimbreSongEncoder(model).embed_songs([SongFeatures(m) for m in mels]).cpu()


VALIDATION_SEED_OFFSET = 7919  # the validation chains' generator: fixed per seed, apart from training's


def reproduced_halves(
    valid: Sequence[TrainingSong], feat_cfg: FeatureConfig, sample_rate: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Label-free validation pairs: each song's first half through a room and a chain of its own, and its second half.

    Only the voice links the two: the halves sing different notes and the query's chain
    (reverb, EQ, band limit, noise floor; recsys.augment) is not the song's. The same
    seed gives the same queries every epoch.
    """
    gen = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
    frame_s = seconds_per_frame(feat_cfg, sample_rate)
    queries, base = [], []
    for s in valid:
        first = s.mel[:, : s.n_frames // 2][None]
        for name in ("reverb", "chain"):
            first = apply_extra(first, name, gen, frame_s, feat_cfg, sample_rate)
        queries.append(first[0])
        base.append(s.mel[:, s.n_frames // 2 :])
    return queries, base


def _validate(
    model: TimbreEncoder,
    train: list[TrainingSong],
    valid: list[TrainingSong],
    label_free: tuple[list[torch.Tensor], list[torch.Tensor]] | None,
) -> dict[str, float]:
    """Same-singer retrieval of the held-out songs among all songs, or, without labels, half-to-half retrieval.

    `label_free`: (queries, base) of the held-out songs' halves (reproduced_halves, or the
    plain halves), the i-th query's answer the i-th base row.
    """
    queries = valid or train
    if label_free is None:
        base = train + valid if valid else train
        xb = embed_songs(model, [s.mel for s in base])
        xq = xb[len(train) :] if valid else xb
        exclude = [len(train) + i if valid else i for i in range(len(queries))]
        found = retrieval_metrics(xq, xb, [s.singer for s in queries], [s.singer for s in base], exclude)
    else:
        xq, xb = embed_songs(model, label_free[0]), embed_songs(model, label_free[1])
        ids = list(range(len(xq)))
        found = retrieval_metrics(xq, xb, ids, ids)
    return {k: found[k] for k in ("p_at_1", "map")}  # what the epoch log and early stopping read


def _label_free_pairs(
    queries: list[TrainingSong], cfg: TimbreConfig, feat_cfg: FeatureConfig, sample_rate: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """The label-free validation pairs of `queries` per cfg.validation, or None when every query has a singer."""
    if all(s.singer is not None for s in queries):
        return None
    if cfg.validation == "produced":
        return reproduced_halves(queries, feat_cfg, sample_rate, cfg.seed)
    return [s.mel[:, : s.n_frames // 2] for s in queries], [s.mel[:, s.n_frames // 2 :] for s in queries]


# --- training ---------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: TimbreEncoder  # the best epoch's weights, eval mode
    version: ModelVersion
    final_loss: float  # mean training loss of the last epoch run
    history: list[dict[str, float]]  # per epoch: epoch, loss, p_at_1, map, seconds
    best_epoch: int
    stopped_early: bool


def model_config_for(cfg: TimbreConfig, feat_cfg: FeatureConfig) -> TimbreModelConfig:
    return TimbreModelConfig(
        n_mels=feat_cfg.n_mels,
        channels=cfg.channels,
        embedding_dim=cfg.embedding_dim,
        projection_dim=cfg.projection_dim,
        chunk_frames=cfg.chunk_frames,
    )


def _meta_config(
    model_cfg: TimbreModelConfig, cfg: TimbreConfig, feat_cfg: FeatureConfig, sample_rate: int
) -> dict:
    """What a version records: model shape, plus the training and feature settings that made it."""
    return {
        **model_cfg.to_dict(),
        "training": cfg.model_dump(mode="json"),
        "features": feat_cfg.model_dump(mode="json"),
        "sample_rate": sample_rate,
    }


def _keeps_best(cfg: TimbreConfig, songs: Sequence[TrainingSong]) -> bool:
    """Early stopping and the best epoch (True), or the whole schedule and its last epoch (False).

    keep="auto": the best only when there are singer labels. Label-free validation cannot
    tell a better voice model from a noisier epoch: on the produced development catalog the
    epoch it picked lost .05-.08 P@1 to the schedule's last (docs/evaluation.md, issue 15).
    """
    if cfg.keep == "auto":
        return any(s.singer is not None for s in songs)
    return cfg.keep == "best"


def _monitor(metrics: dict[str, float]) -> float:
    # P@1 decides, mAP breaks ties (P@1 saturates on small validation sets).
    return metrics["p_at_1"] + 1e-3 * metrics["map"]


def train_timbre(
    songs: list[TrainingSong],
    cfg: TimbreConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    resume: bool = True,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
    audio: dict[str, Any] | None = None,
) -> TrainResult:
    """Train, validate each epoch on held-out songs, stop early, publish the best epoch as a version.

    Saves a resume point after every epoch; with resume=True a run with the same
    config and songs continues from it. `log` receives one dict per epoch (and one
    {"event": "resume_ignored", ...} when a stale resume point is skipped). `audio`
    (recsys.fingerprint.audio_fingerprint of the training audio) is stored with the version.
    """
    if len(songs) < 2:
        raise ValueError(f"contrastive training needs at least 2 songs, got {len(songs)}")
    policy = resolve_policy(cfg)
    if cfg.supervised and not any(s.singer is not None for s in songs):
        raise ValueError("timbre.supervised=True needs singer labels, but no song has one")
    for s in songs:
        if s.mel.dim() != 2 or s.mel.shape[0] != feat_cfg.n_mels:
            raise ValueError(
                f"song {s.song_id}: mel shape {tuple(s.mel.shape)}, expected ({feat_cfg.n_mels}, T)"
            )
    songs = canonical_order(songs)
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    model_cfg = model_config_for(cfg, feat_cfg)
    meta_config = _meta_config(model_cfg, cfg, feat_cfg, sample_rate)
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    train, valid = split_by_song(songs, VALID_FRACTION, cfg.seed)
    keep_best = _keeps_best(cfg, songs)

    model = TimbreEncoder(model_cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss_fn = make_loss(cfg)
    singers = [s.singer for s in train]
    labelled = any(x is not None for x in singers)
    sampler = BalancedChunkSampler(
        [s.n_frames for s in train],
        singers if labelled else None,
        cfg.songs_per_batch,
        cfg.chunks_per_song,
        cfg.chunk_frames,
        songs_per_singer=2 if cfg.supervised else 1,
        generator=gen,
    )
    mels = [s.mel.to(dev, torch.float32) for s in train]
    amp = MixedPrecision(dev)  # autocast (and a float16 loss scaler) on CUDA only
    label_free_pairs = _label_free_pairs(valid or train, cfg, feat_cfg, sample_rate)

    def run_epoch(epoch: int) -> dict[str, Any]:
        losses = []
        related = None
        if not labelled and cfg.pseudo_neighbours > 0 and epoch > 0:
            related = nearest_songs(embed_songs(model, [s.mel for s in train]), cfg.pseudo_neighbours)
        for _ in tqdm(
            range(cfg.steps_per_epoch), desc=f"timbre epoch {epoch}", disable=not progress, leave=False
        ):
            views, labels, indices = build_batch(
                mels,
                sampler.sample(),
                policy,
                cfg.chunk_frames,
                feat_cfg,
                sample_rate,
                gen,
                singers=singers if labelled else None,
                supervised=cfg.supervised,
                related=related,
            )
            with amp.autocast():
                _, projection = model(views)
            loss = loss_fn(projection.float(), labels, indices)
            optimizer.zero_grad(set_to_none=True)
            amp.backward_step(loss, optimizer)
            losses.append(loss.item())
        return {"loss": sum(losses) / len(losses), **_validate(model, train, valid, label_free_pairs)}

    loop = run_epochs(
        kind=KIND,
        workspace=workspace,
        model=model,
        optimizer=optimizer,
        early=EarlyStopping(cfg.patience if keep_best else cfg.epochs + 1, mode="max"),
        epochs=cfg.epochs,
        meta_config=meta_config,
        fingerprint=fingerprint,
        run_epoch=run_epoch,
        monitor=_monitor,
        generator=gen,
        resume=resume,
        log=log,
        scaler=amp.scaler,
        keep_best=keep_best,
    )
    history, best_state, best_epoch = loop.history, loop.best_state, loop.best_epoch
    best = history[best_epoch] if best_epoch >= 0 else history[-1]
    version = save_version(
        workspace,
        KIND,
        best_state,
        meta_config,
        fingerprint,
        metrics={
            "final_loss": history[-1]["loss"],
            "best_epoch": best_epoch,
            "p_at_1": best["p_at_1"],
            "map": best["map"],
            "epochs_run": len(history),
        },
        audio=audio,
    )
    clear_resume(workspace, KIND)
    return TrainResult(model, version, history[-1]["loss"], history, best_epoch, loop.stopped_early)


def load_timbre(
    workspace: Path,
    version: str | None = None,
    expect: TimbreModelConfig | None = None,
    feat_cfg: FeatureConfig | None = None,
    sample_rate: int | None = None,
) -> tuple[TimbreEncoder, ModelVersion]:
    """Rebuild a published encoder (latest by default) on CPU in eval mode.

    expect / feat_cfg / sample_rate, when given, must match what the version was
    trained with, else CheckpointMismatchError names the differing fields.
    """
    expect_config: dict[str, Any] = dict(expect.to_dict()) if expect is not None else {}
    if feat_cfg is not None:
        expect_config["features"] = feat_cfg.model_dump(mode="json")
    if sample_rate is not None:
        expect_config["sample_rate"] = sample_rate
    meta, state = load_version(workspace, KIND, version, expect_config=expect_config or None)
    return restore_timbre(meta, state), meta
