"""Rebuilding published models from their checkpoints: the one place both serving and training do it.

Reads only the model classes and the checkpoint files, never the trainers' modules
(their losses import pytorch-metric-learning and scipy, seconds of start-up for a
server), so recsys.registry can load models for serving cheaply.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from torch import nn

from recsys.models.melody import MelodyModel, build_melody_model, config_from_dict
from recsys.models.speaker_timbre import COMBINED, CombinedTimbre, SpeakerBackEnd, SpeakerBackEndConfig
from recsys.models.speaker_timbre import FRONT_END as SPEAKER_FRONT_END
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig
from recsys.training.checkpoint import CheckpointMismatchError, ModelVersion

M = TypeVar("M", bound=nn.Module)


def restore_timbre(meta: ModelVersion, state: dict[str, Any]) -> TimbreEncoder | SpeakerBackEnd | CombinedTimbre:
    """A timbre checkpoint -> its model on the CPU in eval mode: the log-mel TimbreEncoder, the back end over
    the speaker front end (`front_end: speaker`), or both (`front_end: log-mel+speaker`)."""
    config = meta.model_config
    if config.get("front_end") == SPEAKER_FRONT_END:
        return _restored(SpeakerBackEnd(SpeakerBackEndConfig.from_dict(config)), state, meta)
    if config.get("front_end") == COMBINED:
        model = CombinedTimbre(_log_mel_model(config["log_mel"]), SpeakerBackEnd(SpeakerBackEndConfig.from_dict(
            config["speaker"])), config["speaker_share"], config["log_mel"])
        return _restored(model, state, meta)
    return _restored(_log_mel_model(config), state, meta)


def _log_mel_model(config: dict[str, Any]) -> TimbreEncoder:
    names = {f.name for f in fields(TimbreModelConfig)}  # meta also keeps the features and sample rate
    return TimbreEncoder(TimbreModelConfig.from_dict({k: v for k, v in config.items() if k in names}))


def restore_melody(meta: ModelVersion, state: dict[str, Any]) -> MelodyModel:
    """A melody checkpoint -> its model (pitch-equivariant or per-frame TCAE) on the CPU in eval mode."""
    try:
        cfg = config_from_dict(meta.model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{meta.path}: not a melody model config: {meta.model_config}") from e
    return _restored(build_melody_model(cfg), state, meta)


def _restored(model: M, state: dict[str, Any], meta: ModelVersion) -> M:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointMismatchError(
            f"weights at {meta.path} do not fit {type(model).__name__}({getattr(model, 'cfg', meta.model_config)})"
        ) from e
    return model.eval()
