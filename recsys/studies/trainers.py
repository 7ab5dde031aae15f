"""How the studies reach the trainers: a small interface, so that tests can hand in tiny ones.

A :class:`Trainer` trains one kind of model ("timbre" or "melody") on a list of
TrainingSong into a workspace, publishes it as a version (recsys.training.checkpoint)
and reloads published versions; `config(settings)` says what a version trained under
those settings records, which is what deciding to reuse a version compares.
:data:`TRAINERS` holds the product's two trainers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from recsys.config import Settings
from recsys.fingerprint import audio_fingerprint, same_audio
from recsys.training.checkpoint import ModelVersion, catalog_fingerprint, latest_version
from recsys.training.data import TrainingSong

EpochLog = Callable[[dict[str, Any]], None]  # one record per epoch (epoch, loss, metrics, seconds)
KINDS = ("timbre", "melody")


@dataclass
class Trained:
    """A published model, as a trainer returns it or a study reloads it."""

    model: nn.Module  # eval mode, on the CPU
    version: ModelVersion
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch run; empty when loaded
    best_epoch: int = -1  # index in history of the epoch published (-1: none improved, or loaded)
    final_loss: float | None = None  # mean training loss of the last epoch run


class Trainer(Protocol):
    """Trains, publishes and reloads one kind of model."""

    kind: str  # "timbre" or "melody": its folder under <workspace>/models/

    def config(self, settings: Settings) -> dict[str, Any]:
        """The model_config a version trained under `settings` records."""
        ...

    def train(
        self,
        songs: list[TrainingSong],
        settings: Settings,
        workspace: Path,
        *,
        resume: bool = True,
        log: EpochLog | None = None,
    ) -> Trained:
        """Train on `songs` with `settings` (device and seeds included), publish under `workspace`."""
        ...

    def load(self, workspace: Path, version: str) -> Trained:
        """A version published under `workspace`, in eval mode on the CPU."""
        ...


def _trained(result: Any) -> Trained:
    """A trainer's TrainResult (recsys.training.contrastive / tcae) as a Trained."""
    return Trained(result.model.eval(), result.version, list(result.history), result.best_epoch, result.final_loss)


def _loaded(model: nn.Module, meta: ModelVersion) -> Trained:
    return Trained(model.eval(), meta, [], int(meta.metrics.get("best_epoch", -1)), meta.metrics.get("final_loss"))


class TimbreTrainer:
    """recsys.training.contrastive: the contrastive timbre encoder."""

    kind = "timbre"

    def config(self, settings: Settings) -> dict[str, Any]:
        from recsys.training.contrastive import model_config_for

        feat = settings.features
        return {
            **model_config_for(settings.timbre, feat).to_dict(),
            "training": settings.timbre.model_dump(mode="json"),
            "features": feat.model_dump(mode="json"),
            "sample_rate": settings.audio.sample_rate,
        }

    def train(self, songs: list[TrainingSong], settings: Settings, workspace: Path, *, resume: bool = True,
              log: EpochLog | None = None) -> Trained:
        from recsys.training.contrastive import train_timbre

        if settings.timbre.front_end != "log-mel":
            from recsys.errors import InvalidOptionError

            raise InvalidOptionError(
                f"timbre.front_end {settings.timbre.front_end!r}: the studies train the log-mel encoder only",
                "compare the front ends with `python bench/bench_timbre_real.py --front-ends log-mel,speaker`, "
                "or set timbre.front_end: log-mel for the study")
        return _trained(train_timbre(
            songs, settings.timbre, settings.features, settings.audio.sample_rate, workspace,
            device=settings.device, resume=resume, log=log,
            audio=audio_fingerprint(settings.audio, settings.separation),
        ))

    def load(self, workspace: Path, version: str) -> Trained:
        from recsys.training.contrastive import load_timbre

        return _loaded(*load_timbre(workspace, version))


class MelodyTrainer:
    """recsys.training.tcae: the melody model (the pitch-equivariant TCAE by default)."""

    kind = "melody"

    def config(self, settings: Settings) -> dict[str, Any]:
        from recsys.models.melody import melody_model_config
        from recsys.training.tcae import meta_config_for

        return meta_config_for(
            melody_model_config(settings.melody, settings.features, settings.audio.sample_rate), settings.melody)

    def train(self, songs: list[TrainingSong], settings: Settings, workspace: Path, *, resume: bool = True,
              log: EpochLog | None = None) -> Trained:
        from recsys.training.tcae import train_melody

        return _trained(train_melody(
            songs, settings.melody, settings.features, settings.audio.sample_rate, workspace,
            device=settings.device, resume=resume, log=log,
            audio=audio_fingerprint(settings.audio, settings.separation),
        ))

    def load(self, workspace: Path, version: str) -> Trained:
        from recsys.training.tcae import load_melody

        return _loaded(*load_melody(workspace, version))


TRAINERS: dict[str, Trainer] = {"timbre": TimbreTrainer(), "melody": MelodyTrainer()}


# --------------------------------------------------------------------------- reuse


def _jsonish(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def reusable(meta: ModelVersion | None, fingerprint: str, expected: dict[str, Any], settings: Settings) -> bool:
    """Whether a published version was trained on these songs, with this config, on audio cleaned this way.

    The content hashes behind `fingerprint` already carry the audio tag; the stored audio
    fingerprint is checked too, so a version is never reused for differently cleaned audio.
    """
    if meta is None or meta.fingerprint != fingerprint:
        return False
    if not same_audio(meta.audio, settings.audio, settings.separation):
        return False
    return all(_jsonish(meta.model_config.get(k)) == _jsonish(v) for k, v in expected.items())


@dataclass
class ModelInfo:
    """Where a study's model came from."""

    kind: str  # timbre or melody
    version: str
    trained: bool  # False: loaded from a previous run on the same songs and settings
    seconds: float  # training wall time (0 when loaded)
    epochs: int | None = None
    best_epoch: int | None = None
    final_loss: float | None = None
    seconds_per_epoch: float | None = None


def train_or_load(
    songs: list[TrainingSong],
    settings: Settings,
    workspace: Path,
    trainers: Mapping[str, Trainer] = TRAINERS,
    kinds: Sequence[str] = KINDS,
    retrain: bool = False,
    log: Callable[[str, dict], None] | None = None,
) -> tuple[dict[str, nn.Module], dict[str, ModelInfo]]:
    """One model per kind trained on `songs` only, published under `workspace`.

    The newest version there is loaded instead when it was trained on the same songs
    with the same settings and audio clean-up (:func:`reusable`), unless `retrain`.
    `log(kind, epoch record)`. Returns ({kind: model in eval mode}, {kind: ModelInfo}).
    """
    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in songs])
    models: dict[str, nn.Module] = {}
    info: dict[str, ModelInfo] = {}
    for kind in kinds:
        trainer = trainers[kind]
        meta = latest_version(workspace, trainer.kind)
        if not retrain and meta is not None and reusable(meta, fingerprint, trainer.config(settings), settings):
            done = trainer.load(workspace, meta.version)
            m = meta.metrics
            info[kind] = ModelInfo(kind, meta.version, False, 0.0, m.get("epochs_run"), m.get("best_epoch"),
                                   m.get("final_loss"))
        else:
            began = time.perf_counter()
            done = trainer.train(songs, settings, workspace,
                                 log=None if log is None else (lambda record, kind=kind: log(kind, record)))
            seconds = time.perf_counter() - began
            per_epoch = [h["seconds"] for h in done.history if "seconds" in h]
            info[kind] = ModelInfo(kind, done.version.version, True, seconds, len(done.history), done.best_epoch,
                                   done.final_loss, float(np.mean(per_epoch)) if per_epoch else None)
        models[kind] = done.model.eval()
    return models, info


def untrained_encoders(settings: Settings, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The product's two architectures with seeded random weights, eval mode, on the CPU."""
    import torch

    from recsys.models.melody import build_melody_model, melody_model_config
    from recsys.models.timbre import TimbreEncoder
    from recsys.training.contrastive import model_config_for

    feat, sr = settings.features, settings.audio.sample_rate
    torch.manual_seed(seed)
    timbre = TimbreEncoder(model_config_for(settings.timbre, feat)).eval()
    torch.manual_seed(seed + 1)
    melody = build_melody_model(melody_model_config(settings.melody, feat, sr)).eval()
    return timbre, melody
