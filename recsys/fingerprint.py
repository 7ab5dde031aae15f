"""What shaped a model's training audio, in one place.

A model learns from audio after clean-up (loudness, silence and vocal-activity
removal, accompaniment suppression). Those settings are stored with the model and
folded into the content hashes its version is derived from, so a model is reused
only for audio cleaned the same way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from recsys.config import AudioConfig, SeparationConfig

# Settings that change how a file is read or how fast, not what audio the encoders hear.
_AUDIO_IGNORED = frozenset({"block_seconds", "max_file_seconds", "max_query_seconds"})
_SEPARATION_IGNORED = frozenset({"device"})


def audio_fingerprint(audio: AudioConfig, separation: SeparationConfig) -> dict[str, Any]:
    """The settings that shaped the training audio, as plain JSON-able values."""
    sep = separation.model_dump(mode="json")
    sep = {"method": "none"} if separation.method == "none" else {
        k: v for k, v in sep.items() if k not in _SEPARATION_IGNORED}
    return {
        "audio": {k: v for k, v in audio.model_dump(mode="json").items() if k not in _AUDIO_IGNORED},
        "separation": sep,
    }


def audio_tag(audio: AudioConfig, separation: SeparationConfig) -> str:
    """A short stable tag of audio_fingerprint, added to each content hash a model version is made from."""
    blob = json.dumps(audio_fingerprint(audio, separation), sort_keys=True)
    return "+audio:" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def same_audio(stored: dict[str, Any] | None, audio: AudioConfig, separation: SeparationConfig) -> bool:
    """Whether a model's stored fingerprint matches the audio settings in force (None: saved before
    fingerprints were stored; such a model matches only the default clean-up it was trained with)."""
    if stored is None:
        return audio_fingerprint(audio, separation) == audio_fingerprint(AudioConfig(), SeparationConfig())
    return stored == audio_fingerprint(audio, separation)
