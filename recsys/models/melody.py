"""Which melody model the settings name, and rebuilding one from a checkpoint's config.

Two architectures share the melody slot (MelodyConfig.model): the pitch-equivariant TCAE
(recsys.models.pitch_tcae, the default) and the per-frame TCAE (recsys.models.tcae).
Their configs are told apart by the `arch` field the equivariant one records.
"""

from __future__ import annotations

from typing import Any

from recsys.config import FeatureConfig, MelodyConfig
from recsys.models.pitch_tcae import ARCH, PitchTCAE, PitchTCAEConfig
from recsys.models.tcae import TCAE, TCAEConfig

MelodyModel = PitchTCAE | TCAE
MelodyModelConfig = PitchTCAEConfig | TCAEConfig
MAX_LAG_SECONDS = 8.0  # the song vector's longest lag: phrases, not notes


def melody_model_config(melody: MelodyConfig, features: FeatureConfig, sample_rate: int) -> MelodyModelConfig:
    """The model config `melody.model` names, for these features."""
    if melody.model == "frame":
        return TCAEConfig.from_settings(melody, features, sample_rate)
    eq = melody.equivariant
    return PitchTCAEConfig(
        sample_rate=sample_rate, hop_length=features.hop_length,
        channels=eq.channels, n_layers=eq.n_layers, pitch_kernel=eq.pitch_kernel, time_kernel=eq.time_kernel,
        frame_stride=eq.frame_stride, smooth_frames=eq.smooth_frames,
        max_lag_frames=max(1, round(MAX_LAG_SECONDS * sample_rate / features.hop_length)),
    )


def config_from_dict(data: dict[str, Any]) -> MelodyModelConfig:
    """A checkpoint's model config -> the config of its architecture (ValueError/TypeError if it fits none)."""
    if data.get("arch") == ARCH:
        return PitchTCAEConfig.from_dict(data)
    return TCAEConfig.from_dict(data)


def build_melody_model(cfg: MelodyModelConfig) -> MelodyModel:
    """A new model (random weights; the equivariant one starts as the descriptor) for `cfg`."""
    return PitchTCAE(cfg) if isinstance(cfg, PitchTCAEConfig) else TCAE(cfg)


def training_needs(melody: MelodyConfig) -> frozenset[str]:
    """The song features training the named model reads (the timbre encoder reads the log-mel only)."""
    return frozenset({"mel", "pitch"}) if melody.model == "equivariant" else frozenset({"mel"})
