"""Contrastive training of the pitch-equivariant TCAE (recsys.models.pitch_tcae): a melody space.

The pair machinery is the timbre encoder's (recsys.augment), with the roles a melody
needs: a view of a song, pitch-shifted by whole semitones and time-stretched as
`melody.equivariant.pitch_shift` / `time_stretch` draw them, is a positive of its song;
another song is a negative. No melody labels exist, so covers are found the way a
listener would start: each song's mutual nearest songs by the untrained vector (the
learning-free descriptor) count as its pseudo-covers (positives), and its nearest
songs are never used as negatives (they may be covers nobody labelled).

Each step: `songs_per_step` songs (half anchors, half their pseudo-covers), two views
each of `view_seconds`, batched through the model; loss = NT-Xent
(pytorch-metric-learning) over the views' song vectors, plus `reconstruction_weight`
x the autoencoder's reconstruction error. The monitor: the same loss on a fixed set of
views, drawn once with a fixed generator, so epochs are compared on the same views.
The model is fitted to the catalog it embeds (as the timbre encoder is), and no melody
labels exist to hold out by, so those fixed views are of catalog songs: the monitor
says whether the objective still improves, and keeps the best epoch's weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from recsys.augment import crop_stretch, draw_rates, draw_semitones, produce_salience, vibrato_salience
from recsys.config import EquivariantMelodyConfig, FeatureConfig, MelodyConfig
from recsys.encoders import melody_timeline
from recsys.models.melody import melody_model_config
from recsys.models.pitch_tcae import PitchTCAE, PitchTCAEConfig
from recsys.pitch import candidate_midi
from recsys.training.checkpoint import catalog_fingerprint, clear_resume, save_version
from recsys.training.common import (
    EarlyStopping,
    MixedPrecision,
    nearest_songs,
    pick_device,
    run_epochs,
    seed_everything,
)
from recsys.training.data import TrainingSong

if TYPE_CHECKING:
    from recsys.training.tcae import TrainResult  # which calls this module: imported when called

KIND = "melody"
VALID_ANCHORS = 16  # anchors of the fixed views the monitor scores each epoch

Song = tuple[torch.Tensor, torch.Tensor]  # (N_PITCH, T) waveform pitch salience, (T,) voicing weight


# --- pseudo-covers ----------------------------------------------------------------------


def pseudo_covers(vectors: torch.Tensor, mutual: int, exclude: int) -> tuple[list[list[int]], set[tuple[int, int]]]:
    """Each song's pseudo-covers (its mutual `mutual`-nearest songs; [itself] when none) and the
    (song, song) pairs never to be used as negatives (each song's `exclude` nearest, both ways)."""
    n = vectors.shape[0]
    near = nearest_songs(vectors, max(mutual, exclude)).tolist()
    top = [set(row[:mutual]) for row in near]
    partners = [[j for j in near[i][:mutual] if i in top[j]] or [i] for i in range(n)]
    kept_out = {(i, j) for i in range(n) for j in near[i][:exclude]}
    kept_out |= {(j, i) for i, j in kept_out}
    for i, group in enumerate(partners):
        kept_out |= {(i, j) for j in group} | {(j, i) for j in group}
    return partners, kept_out


# --- views ------------------------------------------------------------------------------


def shift_pitch(salience: torch.Tensor, semitones: int) -> torch.Tensor:
    """(P, T) salience -> the same sung `semitones` higher (rows moved; the rows left empty get the song's floor)."""
    if semitones == 0:
        return salience
    out = torch.full_like(salience, float(salience.min()))
    if semitones > 0:
        out[semitones:] = salience[: salience.shape[0] - semitones]
    else:
        out[:semitones] = salience[-semitones:]
    return out


def draw_views(
    songs: Sequence[Song], picks: Sequence[int], frames: int, eq: EquivariantMelodyConfig, gen: torch.Generator,
    frame_seconds: float = 0.016,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view per pick: a random crop of `frames` frames, time-stretched and pitch-shifted per the policies,
    a share `eq.vibrato` of them sung with a vibrato of their own, and a share `eq.production` through a
    production chain of their own (`frame_seconds`: the frame hop, the time scale of both) -> (B, P, frames) salience and (B, frames) voicing weights."""
    n = len(picks)
    rates = draw_rates(eq.time_stretch, n, gen) if eq.time_stretch.role == "positive" else torch.ones(n)
    shifts = draw_semitones(eq.pitch_shift, n, gen) if eq.pitch_shift.role == "positive" else torch.zeros(n)
    sal_out, w_out = [], []
    for i, song in enumerate(picks):
        sal, weight = songs[song]
        rate = float(rates[i])
        need = max(2, round(frames * rate))
        start = int(torch.randint(0, max(1, sal.shape[-1] - need + 1), (1,), generator=gen))
        view = crop_stretch(torch.cat([sal, weight[None]]), start, frames, rate)
        sal_out.append(shift_pitch(view[:-1], round(float(shifts[i]))))
        w_out.append(view[-1])
    sal_views = torch.stack(sal_out)
    if eq.vibrato > 0:
        sung = (torch.rand(n, generator=gen) < eq.vibrato).nonzero()[:, 0]
        if len(sung):
            sal_views[sung] = vibrato_salience(sal_views[sung], gen, frame_seconds)
    if eq.production > 0:
        produced = (torch.rand(n, generator=gen) < eq.production).nonzero()[:, 0]
        if len(produced):
            sal_views[produced] = produce_salience(sal_views[produced], gen, frame_seconds, candidate_midi())
    return sal_views, torch.stack(w_out)


# --- the loss ---------------------------------------------------------------------------


class ViewLoss:
    """NT-Xent over views' song vectors (labels: the anchor song), leaving out negatives that are
    near pairs, plus the weighted reconstruction error."""

    def __init__(self, eq: EquivariantMelodyConfig, kept_out: set[tuple[int, int]]) -> None:
        from pytorch_metric_learning.losses import NTXentLoss

        self.ntxent = NTXentLoss(temperature=eq.temperature)
        self.reconstruction_weight = eq.reconstruction_weight
        self.kept_out = kept_out

    def __call__(self, model: PitchTCAE, sal: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                 amp: MixedPrecision | None = None) -> torch.Tensor:
        from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

        with amp.autocast() if amp is not None else contextlib.nullcontext():
            refined, recon, target = model(sal)
        vectors = torch.stack([model.song_vector(r, w) for r, w in zip(refined.float(), weight)]).float()
        a1, p, a2, n = lmu.get_all_pairs_indices(labels)
        lab = labels.tolist()
        keep = torch.tensor([(lab[i], lab[j]) not in self.kept_out for i, j in zip(a2.tolist(), n.tolist())],
                            dtype=torch.bool, device=a2.device)
        loss = self.ntxent(vectors, labels, indices_tuple=(a1, p, a2[keep], n[keep]))
        return loss + self.reconstruction_weight * (recon.float() - target).pow(2).mean()


# --- training ---------------------------------------------------------------------------


def equivariant_inputs(songs: Sequence[TrainingSong]) -> list[Song]:
    """What the model reads of each song: its waveform pitch and its voicing weight (from the log-mel)
    on the song's own timeline (recsys.encoders.melody_timeline)."""
    out = []
    for s in songs:
        if s.pitch is None:
            raise ValueError(f"song {s.song_id}: the pitch-equivariant TCAE trains on the waveform pitch, which "
                             "these features lack; build them with needs={'mel', 'pitch'} "
                             "(recsys.features.song_features)")
        out.append(melody_timeline(s.features))  # on the song's own timeline, as the encoder reads it
    return out


def train_equivariant(
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
    """Train the pitch-equivariant TCAE contrastively, score each epoch on fixed views, publish the best.

    Same contract as recsys.training.tcae.train_melody (which calls this for
    ``cfg.model == 'equivariant'``): a resume point after every epoch; a resumed run
    equals an uninterrupted one; returns its TrainResult.
    """
    from recsys.training.tcae import TrainResult, meta_config_for

    if len(songs) < 2:
        raise ValueError(f"melody training needs at least 2 songs, got {len(songs)}")
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    eq = cfg.equivariant
    model_cfg = melody_model_config(cfg, feat_cfg, sample_rate)
    assert isinstance(model_cfg, PitchTCAEConfig)
    meta_config = meta_config_for(model_cfg, cfg)
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    inputs = equivariant_inputs(songs)
    model = PitchTCAE(model_cfg)
    with torch.no_grad():  # the untrained vector is the descriptor, whatever the weights
        start_vectors = torch.stack([model.song_vector(sal, w) for sal, w in inputs]).float()
    partners, kept_out = pseudo_covers(start_vectors, eq.pseudo_covers, eq.exclude_nearest)
    loss_fn = ViewLoss(eq, kept_out)
    frames = max(2, round(eq.view_seconds * sample_rate / feat_cfg.hop_length))
    # The monitor: the same loss on one fixed draw of views (a training step's structure, VALID_ANCHORS anchors).
    fixed_gen = torch.Generator().manual_seed(cfg.seed + 1)
    fixed_anchors = torch.randperm(len(inputs), generator=fixed_gen)[:VALID_ANCHORS].tolist()
    fixed_picks = [i for a in fixed_anchors for i in (a, partners[a][0])]
    frame_seconds = feat_cfg.hop_length / sample_rate
    fixed_views = draw_views(inputs, fixed_picks + fixed_picks, frames, eq, fixed_gen, frame_seconds)
    fixed_labels = torch.tensor([a for a in fixed_anchors for _ in range(2)] * 2)
    train = [(sal.to(dev), w.to(dev)) for sal, w in inputs]

    model = model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    amp = MixedPrecision(dev)
    anchors_per_step = max(1, min(eq.songs_per_step // 2, len(train)))

    def run_epoch(epoch: int) -> dict[str, Any]:
        losses = []
        for _ in tqdm(range(eq.steps_per_epoch), desc=f"melody epoch {epoch}", disable=not progress, leave=False):
            picks, labels = [], []
            for a in torch.randperm(len(train), generator=gen)[:anchors_per_step].tolist():
                group = partners[a]
                picks += [a, group[int(torch.randint(0, len(group), (1,), generator=gen))]]
                labels += [a, a]
            sal, weight = draw_views(train, picks + picks, frames, eq, gen, frame_seconds)
            loss = loss_fn(model, sal.to(dev), weight.to(dev), torch.tensor(labels + labels, device=dev), amp)
            optimizer.zero_grad(set_to_none=True)
            amp.backward_step(loss, optimizer)
            losses.append(loss.item())
        with torch.no_grad():
            valid_loss = float(loss_fn(model, fixed_views[0].to(dev), fixed_views[1].to(dev), fixed_labels.to(dev)))
        return {"loss": sum(losses) / len(losses), "valid_loss": valid_loss, "held_out": False}

    loop = run_epochs(
        kind=KIND, workspace=workspace, model=model, optimizer=optimizer,
        early=EarlyStopping(cfg.patience, mode="min"), epochs=cfg.epochs, meta_config=meta_config,
        fingerprint=fingerprint, run_epoch=run_epoch, monitor=lambda record: record["valid_loss"],
        generator=gen, resume=resume, log=log, scaler=amp.scaler,
    )
    model = model.cpu()
    history, best_epoch = loop.history, loop.best_epoch
    best = history[best_epoch] if best_epoch >= 0 else history[-1]
    version = save_version(
        workspace, KIND, loop.best_state, meta_config, fingerprint,
        metrics={"final_loss": history[-1]["loss"], "best_epoch": best_epoch, "valid_loss": best["valid_loss"],
                 "held_out": False, "epochs_run": len(history)},
        audio=audio,
    )
    clear_resume(workspace, KIND)
    return TrainResult(model, version, history[-1]["loss"], history, best_epoch, loop.stopped_early)
