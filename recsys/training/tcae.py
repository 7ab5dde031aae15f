"""Training of the melody model: :func:`train_melody` trains the model `melody.model` names.

The pitch-equivariant TCAE (the default) trains contrastively in recsys.training.melody.
The per-frame TCAE trains here, on reconstruction: songs of any length are cut into overlapping windows of `chunk_frames` (hop
``chunk_frames - chunk_overlap``); the last window of a song is padded on the
right and masked, so no frame is dropped. The first `chunk_overlap` frames of a
window (except a song's first window) only warm up the causal context and are
left out of the loss, so every frame is scored exactly once per epoch, always
with the history it would have when the whole song is encoded. Validation
encodes whole held-out songs (right-padded batches, masked loss).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recsys.config import FeatureConfig, MelodyConfig
from recsys.evaluation import split_by_song
from recsys.models.melody import MelodyModel, MelodyModelConfig
from recsys.models.restore import restore_melody
from recsys.models.tcae import TCAE, TCAEConfig
from recsys.training.checkpoint import (
    ModelVersion,
    catalog_fingerprint,
    clear_resume,
    load_version,
    save_version,
)
from recsys.training.common import EarlyStopping, MixedPrecision, pick_device, run_epochs, seed_everything
from recsys.training.data import TrainingSong

KIND = "melody"
VALID_FRACTION = 0.15


@dataclass
class TrainResult:
    model: MelodyModel  # the best epoch's weights, eval mode, on CPU
    version: ModelVersion
    final_loss: float  # mean training loss of the last epoch run
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


def _masked_loss(
    model: TCAE, mel: torch.Tensor, valid: torch.Tensor, scored: torch.Tensor, amp: MixedPrecision | None = None
) -> torch.Tensor:
    """Reconstruction error over the scored frames; what TCAE.forward computes, with the fixed front
    end (the target) kept in float32 and only the encoder and decoder under `amp`'s autocast."""
    target, _ = model.front(mel)
    with amp.autocast() if amp is not None else contextlib.nullcontext():
        recon = model.decoder(model.encoder(target))
    err = (recon.float() - target).pow(2).mean(1)  # (B, T)
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


def meta_config_for(model_cfg: MelodyModelConfig, cfg: MelodyConfig) -> dict[str, Any]:
    """What a version records: model shape (with its feature settings) and the training settings."""
    return {**model_cfg.to_dict(), "training": cfg.model_dump(mode="json")}


def train_melody(
    songs: list[TrainingSong],
    cfg: MelodyConfig,
    feat_cfg: FeatureConfig,
    sample_rate: int,
    workspace: Path,
    device: str = "auto",
    resume: bool = True,
    progress: bool = False,
    log: Callable[[dict], None] | None = None,
    audio: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the melody model `cfg.model` names, validate each epoch on held-out songs, publish the best epoch.

    'equivariant': recsys.training.melody.train_equivariant (contrastive). 'frame': the
    per-frame TCAE on reconstruction, below. A resume point is saved after every epoch; with resume=True a run with the
    same config and songs continues from it. Batches are shuffled by a generator
    seeded with (seed, epoch), so a resumed run equals an uninterrupted one.
    `log` receives one dict per epoch. `audio` (recsys.fingerprint.audio_fingerprint
    of the training audio) is stored with the version.
    """
    if cfg.model == "equivariant":
        from recsys.training.melody import train_equivariant

        return train_equivariant(songs, cfg, feat_cfg, sample_rate, workspace, device=device, resume=resume,
                                 progress=progress, log=log, audio=audio)
    if not songs:
        raise ValueError("melody training needs at least 1 song, got none")
    for s in songs:
        if s.mel.dim() != 2 or s.mel.shape[0] != feat_cfg.n_mels:
            raise ValueError(f"song {s.song_id}: mel shape {tuple(s.mel.shape)}, expected ({feat_cfg.n_mels}, T)")
    dev = pick_device(device)
    seed_everything(cfg.seed)
    model_cfg = TCAEConfig.from_settings(cfg, feat_cfg, sample_rate)
    meta_config = meta_config_for(model_cfg, cfg)
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    train, valid = split_by_song(songs, VALID_FRACTION, cfg.seed)
    held_out = bool(valid)
    if not valid:  # too few songs to hold any out: monitor the training songs, and say so in the history
        valid = train

    model = TCAE(model_cfg).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    amp = MixedPrecision(dev)  # autocast (and a float16 loss scaler) on CUDA only
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
            loss = _masked_loss(model, batch, valid_mask, scored, amp)
            optimizer.zero_grad(set_to_none=True)
            amp.backward_step(loss, optimizer)
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
        scaler=amp.scaler,
    )
    model = model.cpu()
    history, best_state, best_epoch = loop.history, loop.best_state, loop.best_epoch
    best = history[best_epoch] if best_epoch >= 0 else history[-1]
    version = save_version(
        workspace, KIND, best_state, meta_config, fingerprint,
        metrics={"final_loss": history[-1]["loss"], "best_epoch": best_epoch, "valid_loss": best["valid_loss"],
                 "held_out": held_out, "epochs_run": len(history)},
        audio=audio,
    )
    clear_resume(workspace, KIND)
    return TrainResult(model, version, history[-1]["loss"], history, best_epoch, loop.stopped_early)


def load_melody(
    workspace: Path, version: str | None = None, expect: MelodyModelConfig | None = None
) -> tuple[MelodyModel, ModelVersion]:
    """Rebuild a published melody model (latest by default) on CPU in eval mode.

    With `expect`, every model field must match the version's, else
    CheckpointMismatchError names the differing fields.
    """
    meta, state = load_version(workspace, KIND, version, expect_config=expect.to_dict() if expect else None)
    return restore_melody(meta, state), meta
