"""Training of the TCAE melody autoencoder, and the melody-variant study.

Songs of any length are cut into overlapping windows of `chunk_frames` (hop
``chunk_frames - chunk_overlap``); the last window of a song is padded on the
right and masked, so no frame is dropped. The first `chunk_overlap` frames of a
window (except a song's first window) only warm up the causal context and are
left out of the loss, so every frame is scored exactly once per epoch, always
with the history it would have when the whole song is encoded. Validation
encodes whole held-out songs (right-padded batches, masked loss).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recsys import pitch
from recsys.config import FeatureConfig, MelodyConfig
from recsys.models.tcae import TCAE, TCAEConfig, masked_pool
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

KIND = "melody"
VALID_FRACTION = 0.15


@dataclass
class TrainResult:
    model: TCAE  # the best epoch's weights, eval mode, on CPU
    version: ModelVersion
    final_loss: float  # mean training reconstruction loss of the last epoch run
    history: list[dict[str, float]]  # per epoch: epoch, loss, valid_loss, seconds
    best_epoch: int
    stopped_early: bool


# --- batches ----------------------------------------------------------------------------


def pad_batch(mels: Sequence[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, T_i) mels -> right-padded (B, n_mels, T) batch and (B, T) bool mask of real frames."""
    length = length or max(m.shape[-1] for m in mels)
    batch = mels[0].new_zeros(len(mels), mels[0].shape[0], length)
    mask = torch.zeros(len(mels), length, dtype=torch.bool, device=mels[0].device)
    for i, m in enumerate(mels):
        batch[i, :, : m.shape[-1]] = m
        mask[i, : m.shape[-1]] = True
    return batch, mask


def windows(n_frames: Sequence[int], chunk_frames: int, overlap: int) -> list[tuple[int, int]]:
    """(song index, start frame) of overlapping windows covering every frame of every song."""
    if not 0 <= overlap < chunk_frames:
        raise ValueError(f"melody.chunk_overlap ({overlap}) must be in [0, chunk_frames={chunk_frames})")
    hop = chunk_frames - overlap
    out = []
    for i, n in enumerate(n_frames):
        out.append((i, 0))
        start = hop
        while start + overlap < n:  # a window whose scored part would be empty adds nothing
            out.append((i, start))
            start += hop
    return out


def window_batch(
    mels: Sequence[torch.Tensor], refs: Sequence[tuple[int, int]], chunk_frames: int, overlap: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops -> (B, n_mels, chunk_frames) batch, (B, chunk_frames) valid mask, (B, chunk_frames) loss mask."""
    crops = [mels[i][:, s : s + chunk_frames] for i, s in refs]
    batch, valid = pad_batch(crops, chunk_frames)
    scored = valid.clone()
    for row, (_, s) in enumerate(refs):
        if s > 0:
            scored[row, :overlap] = False  # warm-up context, scored by the previous window
    return batch, valid, scored


def _masked_loss(model: TCAE, mel: torch.Tensor, valid: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    target, recon, _ = model(mel)
    err = (recon - target).pow(2).mean(1)  # (B, T)
    w = (valid & scored).to(err.dtype)
    return (err * w).sum() / w.sum().clamp_min(1.0)


@torch.no_grad()
def reconstruction_error(model: TCAE, mels: Sequence[torch.Tensor], batch_size: int = 16) -> float:
    """Mean squared reconstruction error over all real frames of whole songs."""
    model.eval()
    dev = model.front.harmonics.device
    total, frames = 0.0, 0
    for i in range(0, len(mels), batch_size):
        batch, mask = pad_batch([m.to(dev, torch.float32) for m in mels[i : i + batch_size]])
        target, recon, _ = model(batch)
        err = (recon - target).pow(2).mean(1)
        total += float((err * mask).sum())
        frames += int(mask.sum())
    return total / max(frames, 1)


# --- training ---------------------------------------------------------------------------


def _meta_config(model_cfg: TCAEConfig, cfg: MelodyConfig) -> dict[str, Any]:
    """What a version records: model shape (with its feature settings) and the training settings."""
    return {**model_cfg.to_dict(), "training": cfg.model_dump(mode="json")}


def train_melody(
    songs: list[SongFeatures],
    cfg: MelodyConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    resume: bool = True,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on reconstruction, validate each epoch on held-out songs, publish the best epoch.

    A resume point is saved after every epoch; with resume=True a run with the
    same config and songs continues from it. Batches are shuffled by a generator
    seeded with (seed, epoch), so a resumed run equals an uninterrupted one.
    `log` receives one dict per epoch.
    """
    if not songs:
        raise ValueError("melody training needs at least 1 song, got none")
    for s in songs:
        if s.mel.dim() != 2 or s.mel.shape[0] != feat_cfg.n_mels:
            raise ValueError(f"song {s.song_id}: mel shape {tuple(s.mel.shape)}, expected ({feat_cfg.n_mels}, T)")
    dev = pick_device(device)
    seed_everything(cfg.seed)
    model_cfg = TCAEConfig.from_settings(cfg, feat_cfg, sample_rate)
    meta_config = _meta_config(model_cfg, cfg)
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    train, valid = split_by_song(songs, VALID_FRACTION, cfg.seed)
    held_out = bool(valid)
    if not valid:  # too few songs to hold any out: monitor the training songs, and say so in the history
        valid = train

    model = TCAE(model_cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    mels = [s.mel.to(dev, torch.float32) for s in train]
    valid_mels = [s.mel.to(dev, torch.float32) for s in valid]
    refs = windows([m.shape[-1] for m in mels], cfg.chunk_frames, cfg.chunk_overlap)

    def run_epoch(epoch: int) -> dict[str, Any]:
        order = torch.randperm(len(refs), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        losses = []
        steps = range(0, len(refs), cfg.batch_size)
        for i in tqdm(steps, desc=f"melody epoch {epoch}", disable=not progress, leave=False):
            picked = [refs[j] for j in order[i : i + cfg.batch_size].tolist()]
            batch, valid_mask, scored = window_batch(mels, picked, cfg.chunk_frames, cfg.chunk_overlap)
            loss = _masked_loss(model, batch, valid_mask, scored)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        valid_loss = reconstruction_error(model, valid_mels, cfg.batch_size)
        return {"loss": sum(losses) / len(losses), "valid_loss": valid_loss, "held_out": held_out}

    loop = run_epochs(
        kind=KIND,
        workspace=workspace,
        model=model,
        optimizer=optimizer,
        early=EarlyStopping(cfg.patience, mode="min"),
        epochs=cfg.epochs,
        meta_config=meta_config,
        fingerprint=fingerprint,
        run_epoch=run_epoch,
        monitor=lambda record: record["valid_loss"],
        resume=resume,
        log=log,
    )
    model = model.cpu()
    history, best_state, best_epoch = loop.history, loop.best_state, loop.best_epoch
    best = history[best_epoch] if best_epoch >= 0 else history[-1]
    version = save_version(
        workspace, KIND, best_state, meta_config, fingerprint,
        metrics={"final_loss": history[-1]["loss"], "best_epoch": best_epoch, "valid_loss": best["valid_loss"],
                 "held_out": held_out, "epochs_run": len(history)},
    )
    clear_resume(workspace, KIND)
    return TrainResult(model, version, history[-1]["loss"], history, best_epoch, loop.stopped_early)


def load_melody(
    workspace: Path, version: str | None = None, expect: TCAEConfig | None = None
) -> tuple[TCAE, ModelVersion]:
    """Rebuild a published melody model (latest by default) on CPU in eval mode.

    With `expect`, every model field must match the version's, else
    CheckpointMismatchError names the differing fields.
    """
    meta, state = load_version(workspace, KIND, version, expect_config=expect.to_dict() if expect else None)
    try:
        model_cfg = TCAEConfig.from_dict(meta.model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{meta.path}: not a TCAE config: {meta.model_config}") from e
    model = TCAE(model_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointMismatchError(f"weights at {meta.path} do not fit TCAE({model_cfg})") from e
    return model.eval(), meta


# --- melody-variant study ---------------------------------------------------------------


def melody_precision_at_1(
    xb: torch.Tensor,
    melody: Sequence[str],
    singer: Sequence[str | None],
    xq: torch.Tensor | None = None,
    q_source: Sequence[int] | None = None,
) -> float:
    """Fraction of queries whose nearest catalog song is the same melody by another singer.

    xb (nb, d) unit catalog vectors. Without xq every catalog song queries the rest.
    With xq (nq, d), query i is a variant (e.g. transposed) of catalog song
    q_source[i], which is left out of its search. Cosine similarity. Queries whose
    melody no other singer sings cannot hit and are not counted (they stay in the
    catalog as distractors).
    """
    assert xb.dim() == 2 and len(melody) == len(singer) == xb.shape[0], "one melody and singer per catalog vector"
    if xq is None:
        xq, q_source = xb, list(range(xb.shape[0]))
    assert q_source is not None and len(q_source) == xq.shape[0], "one catalog source per query"
    S = xq @ xb.T  # (nq, nb)
    S[torch.arange(xq.shape[0]), torch.as_tensor(q_source)] = -float("inf")
    I = S.argmax(1).tolist()
    sung_by: dict[str, set] = {}
    for m, s in zip(melody, singer):
        sung_by.setdefault(m, set()).add(s)
    hits = [
        melody[j] == melody[src] and singer[j] != singer[src]
        for j, src in zip(I, q_source)
        if sung_by[melody[src]] - {singer[src]}
    ]
    if not hits:
        raise ValueError("no query's melody is sung by another singer: melody P@1 is undefined")
    return sum(hits) / len(hits)


def chroma_baseline(mel: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Chroma statistics (the classic baseline): (n_mels, T) -> (24,)."""
    return pitch.chroma_stats(mel, matrix)


def interval_lag_baseline(mel: torch.Tensor, matrix: torch.Tensor, lags: list[int]) -> torch.Tensor:
    """Key-invariant interval x lag statistics of the chroma, no learning: (n_mels, T) -> (12 len(lags),)."""
    return pitch.interval_lag_profile(pitch.fold_chroma(pitch.pitch_salience(mel, matrix)), lags)


def compare_melody_variants(
    train_songs: list[SongFeatures],
    eval_songs: list[SongFeatures],
    queries: dict[str, list[SongFeatures]],
    variants: dict[str, MelodyConfig],
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Train each variant and score its melody vectors next to two baselines without learning.

    eval_songs need `singer` and metadata["melody"]; each query set (e.g. "+2",
    "-2" semitones) holds re-sung variants whose metadata["source"] is the index
    in eval_songs they derive from. Rows: name, p_at_1, p_at_1_<query set>...,
    p_at_1_transposed (mean over query sets), valid_loss, epochs, train_s,
    embed_ms (mean per eval song) and, for TCAE rows, embed_3min_ms (one
    3-minute song after a warm-up, median of 3). `log(variant, epoch record)`.
    """
    for s in eval_songs:
        if s.singer is None or "melody" not in s.metadata:
            raise ValueError(f"eval song {s.song_id} needs a singer and metadata['melody']")
    melody = [s.metadata["melody"] for s in eval_songs]
    singer = [s.singer for s in eval_songs]
    rows: list[dict[str, Any]] = []

    def score(name: str, embed: Callable[[SongFeatures], torch.Tensor], extra: dict[str, Any]) -> None:
        began = time.perf_counter()
        xb = torch.stack([embed(s) for s in eval_songs])
        embed_ms = 1000 * (time.perf_counter() - began) / len(eval_songs)
        row: dict[str, Any] = {"name": name, "p_at_1": melody_precision_at_1(xb, melody, singer)}
        for qname, qsongs in queries.items():
            xq = torch.stack([embed(s) for s in qsongs])
            row[f"p_at_1_{qname}"] = melody_precision_at_1(
                xb, melody, singer, xq, [int(s.metadata["source"]) for s in qsongs]
            )
        if queries:
            row["p_at_1_transposed"] = sum(row[f"p_at_1_{q}"] for q in queries) / len(queries)
        rows.append({**row, **extra, "embed_ms": embed_ms})

    three_min = _three_minutes(eval_songs, round(180 * sample_rate / feat_cfg.hop_length))
    matrix = pitch.harmonic_matrix(feat_cfg, sample_rate)
    lags = TCAEConfig.from_settings(MelodyConfig(), feat_cfg, sample_rate).lags
    score("chroma-stats (baseline)", lambda s: chroma_baseline(s.mel, matrix), {})
    score("interval-lag (baseline)", lambda s: interval_lag_baseline(s.mel, matrix, lags), {})
    # The learning-free default vector, reading pitch from the log-mel and, where the songs carry it, the waveform.
    with_pitch = all(s.pitch is not None for s in [*eval_songs, *(q for qs in queries.values() for q in qs)])
    for source in ("mel", "waveform") if with_pitch else ("mel",):
        profile = TCAE(TCAEConfig.from_settings(MelodyConfig(pitch_source=source), feat_cfg, sample_rate)).eval()
        embed = functools.partial(_embed_profile, profile)
        score(f"voiced-interval-lag ({source} pitch)", embed, {"embed_3min_ms": _time_embed(embed, three_min)})
    for name, cfg in variants.items():
        began = time.perf_counter()
        result = train_melody(
            train_songs, cfg, feat_cfg, sample_rate, Path(workspace) / name.replace("/", "_"),
            device=device, resume=False, progress=progress,
            log=None if log is None else (lambda record, name=name: log(name, record)),
        )
        train_s = time.perf_counter() - began
        best = result.history[result.best_epoch] if result.best_epoch >= 0 else result.history[-1]
        for pool in ("stats", "stats+lag"):  # the latent poolings; interval-lag is the baseline row
            embed = functools.partial(_embed_latents, result.model,
                                      lags=result.model.cfg.lags if "lag" in pool else None)
            score(f"tcae {name} ({pool})", embed,
                  {"valid_loss": best["valid_loss"], "epochs": len(result.history), "train_s": train_s,
                   "embed_3min_ms": _time_embed(embed, three_min)})
    return rows


def _three_minutes(songs: list[SongFeatures], frames: int) -> SongFeatures:
    """The songs joined (repeated as needed) and cut to `frames` frames: a 3-minute song for timing."""
    reps = 1 + frames // sum(s.n_frames for s in songs)
    mel = torch.cat([s.mel for s in songs] * reps, dim=-1)[:, :frames]
    with_pitch = all(s.pitch is not None for s in songs)
    wave_pitch = torch.cat([s.pitch for s in songs] * reps, dim=-1)[:, :frames] if with_pitch else None  # type: ignore[misc]
    return SongFeatures(-1, mel, pitch=wave_pitch)


def _embed_profile(model: TCAE, song: SongFeatures) -> torch.Tensor:
    return model.embed_song(song.mel, pitch=song.pitch)


def _embed_latents(model: TCAE, song: SongFeatures, lags: list[int] | None) -> torch.Tensor:
    """A song -> vector pooled from the model's latents, whatever its configured pool."""
    z = model.encode_frames(song.mel).T.unsqueeze(0)  # (1, L, T)
    return masked_pool(z, torch.ones(1, z.shape[-1], dtype=torch.bool), lags)[0]


def _time_embed(embed: Callable[[SongFeatures], torch.Tensor], song: SongFeatures, repeats: int = 3) -> float:
    embed(song)  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        embed(song)
        times.append(time.perf_counter() - began)
    return 1000 * sorted(times)[len(times) // 2]
