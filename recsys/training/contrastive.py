"""Contrastive training of the timbre/style encoder, and the pair-policy study.

A batch holds `chunks_per_song` chunks of each sampled song (positive-role
augmentations applied to every view) plus, per negative-role augmentation, a copy
of each song's chunks altered by one drawn amount that gets a label of its own
(a "new voice": its chunks are positives of each other, negatives of the rest).
Losses come from pytorch-metric-learning: NTXentLoss (self-supervised, labels =
songs) or SupConLoss (supervised, labels = singers). Augmentation runs on the
log-mel (recsys.augment), so the trainer needs only SongFeatures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.losses import NTXentLoss, SupConLoss
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from tqdm.auto import tqdm

from recsys.augment import (
    PAIR_POLICIES,
    PairPolicy,
    apply_extra,
    crop_stretch,
    draw_rates,
    draw_semitones,
    mel_pitch_shift,
    mel_time_stretch,
    resolve_policy,
)
from recsys.config import FeatureConfig, TimbreConfig
from recsys.features import seconds_per_frame
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig
from recsys.training.checkpoint import (
    CheckpointMismatchError,
    ModelVersion,
    catalog_fingerprint,
    clear_resume,
    load_version,
    save_version,
)
from recsys.training.common import EarlyStopping, pick_device, run_epochs, seed_everything
from recsys.training.data import SongFeatures, split_by_song
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
) -> tuple[torch.Tensor, torch.Tensor, IndicesTuple | None]:
    """Views, labels and pairs for one contrastive step.

    mels: (n_mels, T) log-mel per song; refs: (song index, start frame) chunks from
    the sampler. Returns views (N, n_mels, chunk_frames), labels (N,) and an
    indices_tuple (a1, p, a2, n) for the loss, or None when the labels say it all.
    Labels: the song index (self-supervised) or the singer's rank among sorted
    singers (supervised; an unlabelled song is a singer of its own), then one fresh
    label per (negative augmentation, song). In self-supervised mode with singer
    labels, originals of different songs by the same singer are neither positives
    nor negatives (the returned indices_tuple leaves those pairs out).
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
    if not supervised and singers is not None:
        singer_of = [singers[spec[0]] if spec[5] else None for spec in specs]
        a1, p, a2, neg_idx = lmu.get_all_pairs_indices(labels)
        same_singer = torch.tensor(
            [
                singer_of[i] is not None and singer_of[i] == singer_of[j]
                for i, j in zip(a2.tolist(), neg_idx.tolist())
            ],
            dtype=torch.bool,
            device=labels.device,
        )
        if bool(same_singer.any()):
            indices_tuple = (a1, p, a2[~same_singer], neg_idx[~same_singer])
    return views, labels, indices_tuple


def make_loss(cfg: TimbreConfig) -> torch.nn.Module:
    """NTXentLoss (self-supervised) or SupConLoss (supervised), cosine similarity, cfg.temperature."""
    return (
        SupConLoss(temperature=cfg.temperature) if cfg.supervised else NTXentLoss(temperature=cfg.temperature)
    )


# --- retrieval metrics ----------------------------------------------------------------------


def retrieval_metrics(
    xq: torch.Tensor,
    xb: torch.Tensor,
    yq: Sequence[Any],
    yb: Sequence[Any],
    exclude: Sequence[int] | None = None,
) -> dict[str, float]:
    """Precision@1 and mean average precision of cosine search of xq (nq, d) in xb (nb, d).

    exclude[i]: the base row query i must not match (itself, for leave-one-out).
    Queries with no relevant base row are skipped; both metrics are nan if none is left.
    """
    assert xq.dim() == 2 and xb.dim() == 2 and xq.shape[1] == xb.shape[1], (xq.shape, xb.shape)
    assert len(yq) == xq.shape[0] and len(yb) == xb.shape[0]
    ids = {y: i for i, y in enumerate(dict.fromkeys([*yq, *yb]))}
    lq = torch.tensor([ids[y] for y in yq])
    lb = torch.tensor([ids[y] for y in yb])
    sim = xq.float().cpu() @ xb.float().cpu().T  # (nq, nb)
    allowed = torch.ones_like(sim, dtype=torch.bool)
    if exclude is not None:
        allowed[torch.arange(len(yq)), torch.as_tensor(list(exclude))] = False
    sim = sim.masked_fill(~allowed, -math.inf)
    order = sim.argsort(dim=1, descending=True, stable=True)
    relevant = (lb[order] == lq[:, None]) & torch.gather(allowed, 1, order)  # (nq, nb) in rank order
    keep = relevant.any(dim=1)
    if not bool(keep.any()):
        return {"p_at_1": math.nan, "map": math.nan}
    relevant = relevant[keep].float()
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float32)
    precision = relevant.cumsum(dim=1) / ranks
    ap = (precision * relevant).sum(dim=1) / relevant.sum(dim=1)
    return {"p_at_1": float(relevant[:, 0].mean()), "map": float(ap.mean())}


def embed_songs(model: TimbreEncoder, mels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_songs, D) song embeddings on CPU."""
    return torch.stack([model.embed_song(m).cpu() for m in mels])


def _validate(model: TimbreEncoder, train: list[SongFeatures], valid: list[SongFeatures]) -> dict[str, float]:
    """Same-singer retrieval of the held-out songs among all songs, or own-song retrieval without labels.

    Without singer labels, each query is the first half of a song and the base the
    second halves of the same songs.
    """
    queries = valid or train
    if all(s.singer is not None for s in queries):
        base = train + valid if valid else train
        xb = embed_songs(model, [s.mel for s in base])
        xq = xb[len(train) :] if valid else xb
        exclude = [len(train) + i if valid else i for i in range(len(queries))]
        return retrieval_metrics(xq, xb, [s.singer for s in queries], [s.singer for s in base], exclude)
    halves = [(s.mel[:, : s.n_frames // 2], s.mel[:, s.n_frames // 2 :]) for s in queries]
    xq = embed_songs(model, [a for a, _ in halves])
    xb = embed_songs(model, [b for _, b in halves])
    ids = list(range(len(queries)))
    return retrieval_metrics(xq, xb, ids, ids)


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


def _monitor(metrics: dict[str, float]) -> float:
    # P@1 decides, mAP breaks ties (P@1 saturates on small validation sets).
    return metrics["p_at_1"] + 1e-3 * metrics["map"]


def train_timbre(
    songs: list[SongFeatures],
    cfg: TimbreConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    resume: bool = True,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train, validate each epoch on held-out songs, stop early, publish the best epoch as a version.

    Saves a resume point after every epoch; with resume=True a run with the same
    config and songs continues from it. `log` receives one dict per epoch (and one
    {"event": "resume_ignored", ...} when a stale resume point is skipped).
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
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    model_cfg = model_config_for(cfg, feat_cfg)
    meta_config = _meta_config(model_cfg, cfg, feat_cfg, sample_rate)
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    train, valid = split_by_song(songs, VALID_FRACTION, cfg.seed)

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
    autocast = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": dev.type == "cuda"}

    def run_epoch(epoch: int) -> dict[str, Any]:
        losses = []
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
            )
            with torch.autocast(**autocast):
                _, projection = model(views)
            loss = loss_fn(projection.float(), labels, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return {"loss": sum(losses) / len(losses), **_validate(model, train, valid)}

    loop = run_epochs(
        kind=KIND,
        workspace=workspace,
        model=model,
        optimizer=optimizer,
        early=EarlyStopping(cfg.patience, mode="max"),
        epochs=cfg.epochs,
        meta_config=meta_config,
        fingerprint=fingerprint,
        run_epoch=run_epoch,
        monitor=_monitor,
        generator=gen,
        resume=resume,
        log=log,
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
    names = {f.name for f in fields(TimbreModelConfig)}
    model_cfg = TimbreModelConfig.from_dict({k: v for k, v in meta.model_config.items() if k in names})
    model = TimbreEncoder(model_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"weights at {meta.path} do not fit TimbreEncoder({model_cfg})") from e
    return model.eval(), meta


# --- pair-policy study ----------------------------------------------------------------------

PITCH_QUERIES = (2.0, -2.0)  # semitones
STRETCH_QUERIES = (1.1, 0.9)  # rates: 10 % faster, 10 % slower


def compare_pair_policies(
    train_songs: list[SongFeatures],
    eval_songs: list[SongFeatures],
    cfg: TimbreConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    policies: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Train one encoder per pair policy on the same songs; evaluate same-singer retrieval.

    Each model lives in `workspace/experiments/pair-policies/<policy>` (the product's
    own timbre model is untouched). Rows: policy, version, final_loss, epochs, p_at_1,
    map on eval_songs (leave-one-out), and p_at_1 when every query is pitch-shifted
    (+-2 semitones) or time-stretched (rates 1.1, 0.9) against the unaltered songs.
    """
    if any(s.singer is None for s in eval_songs):
        raise ValueError("compare_pair_policies needs singer labels on every eval song")
    names = list(policies) if policies is not None else list(PAIR_POLICIES)
    unknown = [p for p in names if p not in PAIR_POLICIES]
    if unknown:
        raise ValueError(f"unknown pair policies {unknown}; valid: {', '.join(PAIR_POLICIES)}")
    singers = [s.singer for s in eval_songs]
    loo = list(range(len(eval_songs)))
    queries = {
        **{
            f"ps{s:+g}": [mel_pitch_shift(x.mel, s, feat_cfg, sample_rate) for x in eval_songs]
            for s in PITCH_QUERIES
        },
        **{f"ts{r:g}": [mel_time_stretch(x.mel, r) for x in eval_songs] for r in STRETCH_QUERIES},
    }
    rows = []
    for name in names:
        run_cfg = cfg.model_copy(update={"policy": name, "pitch_shift": None, "time_stretch": None})
        result = train_timbre(
            train_songs,
            run_cfg,
            feat_cfg,
            sample_rate,
            Path(workspace) / "experiments" / "pair-policies" / name,
            device=device,
            progress=progress,
            log=log,
        )
        xb = embed_songs(result.model, [s.mel for s in eval_songs])
        row: dict[str, Any] = {
            "policy": name,
            "version": result.version.version,
            "final_loss": result.final_loss,
            "epochs": len(result.history),
            **retrieval_metrics(xb, xb, singers, singers, loo),
        }
        for key, mels in queries.items():
            xq = embed_songs(result.model, mels)
            row[f"p_at_1_{key}"] = retrieval_metrics(xq, xb, singers, singers, loo)["p_at_1"]
        rows.append(row)
    return rows
