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
from recsys.models.speaker_timbre import FRONT_END as SPEAKER_FRONT_END
from recsys.models.speaker_timbre import SpeakerBackEnd, SpeakerBackEndConfig
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig
from recsys.training.checkpoint import CheckpointMismatchError, ModelVersion

M = TypeVar("M", bound=nn.Module)


def restore_timbre(meta: ModelVersion, state: dict[str, Any]) -> TimbreEncoder | SpeakerBackEnd:
    """A timbre checkpoint -> its model on the CPU in eval mode: the log-mel TimbreEncoder, or the back end
    over the speaker front end when the version records `front_end: speaker`."""
    if meta.model_config.get("front_end") == SPEAKER_FRONT_END:
        return _restored(SpeakerBackEnd(SpeakerBackEndConfig.from_dict(meta.model_config)), state, meta)
    names = {f.name for f in fields(TimbreModelConfig)}  # meta also keeps the features and sample rate
    cfg = TimbreModelConfig.from_dict({k: v for k, v in meta.model_config.items() if k in names})
    return _restored(TimbreEncoder(cfg), state, meta)


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
            f"weights at {meta.path} do not fit {type(model).__name__}({model.cfg})"
        ) from e
    return model.eval()
