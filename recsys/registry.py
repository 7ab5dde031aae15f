"""Trained model versions and the one pair that answers searches.

Each kind keeps its versions in ``models/<kind>/<version>/`` (recsys.training.checkpoint);
``models/<kind>/LATEST`` names the newest one trained. What serves is a single
pointer, ``models/CURRENT``, naming a (timbre, melody) pair: it is replaced in one
atomic rename, and only once every catalog song has vectors of that pair, so a
search never meets a pair whose vectors or index do not exist yet.

`load_models` is the one loader: it turns a pair into a `Models` value holding
both encoders behind the encoder contract (recsys.encoders) and their versions.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.errors import NoModelsError
from recsys.training.checkpoint import (
    META,
    ModelVersion,
    latest_version,
    load_version,
    models_dir,
    read_meta,
)

if TYPE_CHECKING:
    from recsys.encoders import SongEncoder
    from recsys.models.melody import MelodyModel
    from recsys.models.timbre import TimbreEncoder

KINDS = ("timbre", "melody")
CURRENT = "CURRENT"


@dataclass(frozen=True)
class ModelPair:
    """A timbre and a melody version; vectors, index folders and maps are keyed by `version`."""

    timbre: str
    melody: str

    @property
    def version(self) -> str:
        return f"{self.timbre}+{self.melody}"

    def of(self, kind: str) -> str:
        return self.timbre if kind == "timbre" else self.melody


def published_versions(workspace: Path, kind: str) -> list[ModelVersion]:
    """Every published version of `kind`, oldest first (by creation time)."""
    root = models_dir(workspace, kind)
    found = [read_meta(p) for p in root.iterdir() if p.is_dir() and (p / META).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda v: (v.created, v.version))


def newest_pair(workspace: Path) -> ModelPair | None:
    """The newest trained version of each kind (None while either kind has none)."""
    metas = [latest_version(workspace, kind) for kind in KINDS]
    if metas[0] is None or metas[1] is None:
        return None
    return ModelPair(metas[0].version, metas[1].version)


def current_pair(workspace: Path) -> ModelPair | None:
    """The pair that serves; a workspace whose pointer was never written (trained by an earlier
    release) serves its newest pair."""
    pointer = Path(workspace) / "models" / CURRENT
    if not pointer.is_file():
        return newest_pair(workspace)
    data = json.loads(pointer.read_text())
    return ModelPair(data["timbre"], data["melody"])


def set_current_pair(workspace: Path, pair: ModelPair) -> None:
    """Point CURRENT at `pair` in one atomic rename."""
    root = Path(workspace) / "models"
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{CURRENT}-", dir=root)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"timbre": pair.timbre, "melody": pair.melody}, handle)
        os.replace(tmp, root / CURRENT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_pair(workspace: Path, timbre: str | None = None, melody: str | None = None) -> ModelPair:
    """The pair named by the given versions, the newest published where one is None."""
    chosen = []
    for kind, wanted in (("timbre", timbre), ("melody", melody)):
        versions = [v.version for v in published_versions(workspace, kind)]
        if not versions:
            raise NoModelsError(f"no trained {kind} model in {models_dir(workspace, kind)}",
                                f"run `recsys train {kind}` first")
        if wanted is not None and wanted not in versions:
            raise NoModelsError(f"no published {kind} version {wanted!r} in {models_dir(workspace, kind)}",
                                f"valid: {', '.join(versions)}")
        newest = latest_version(workspace, kind)
        chosen.append(wanted or (newest.version if newest is not None else versions[-1]))
    return ModelPair(*chosen)


@dataclass(frozen=True)
class Models:
    """Both encoders of one pair, behind the encoder contract, with their versions."""

    timbre: SongEncoder
    melody: SongEncoder
    timbre_meta: ModelVersion
    melody_meta: ModelVersion

    @property
    def pair(self) -> ModelPair:
        return ModelPair(self.timbre_meta.version, self.melody_meta.version)

    @property
    def version(self) -> str:
        return self.pair.version

    @property
    def dims(self) -> tuple[int, int]:
        return self.timbre.dim, self.melody.dim

    @property
    def needs(self) -> frozenset[str]:
        """The features either encoder reads (recsys.features.FEATURES)."""
        return frozenset(self.timbre.needs) | frozenset(self.melody.needs)

    def to(self, device: object) -> Models:
        return Models(self.timbre.to(device), self.melody.to(device), self.timbre_meta, self.melody_meta)


def load_models(workspace: Path, pair: ModelPair | None = None) -> Models:
    """The encoders of `pair` (default: the current pair), on the CPU, in eval mode.

    Serving reads the checkpoints and the model classes only, never the trainers' modules (their
    losses import pytorch-metric-learning and scipy: seconds of start-up for the CLI and the explorer).
    """
    from recsys.encoders import melody_encoder, timbre_encoder

    pair = pair if pair is not None else current_pair(workspace)
    if pair is None:
        raise NoModelsError(f"no trained models in {Path(workspace) / 'models'}",
                            "run `recsys ingest SOURCE`, then `recsys train`")
    try:
        timbre, t_meta = load_timbre_model(workspace, pair.timbre)
        melody, m_meta = load_melody_model(workspace, pair.melody)
    except FileNotFoundError as e:
        raise NoModelsError(f"model pair {pair.version} is not on disk ({e})",
                            "run `recsys train`, or `recsys reembed` to pick a published pair") from e
    return Models(timbre_encoder(timbre, t_meta.model_config), melody_encoder(melody), t_meta, m_meta)


def load_timbre_model(workspace: Path, version: str) -> tuple[TimbreEncoder, ModelVersion]:
    """A published timbre model on the CPU in eval mode (no check against a training config)."""
    from recsys.models.restore import restore_timbre

    meta, state = load_version(workspace, "timbre", version)
    return restore_timbre(meta, state), meta


def load_melody_model(workspace: Path, version: str) -> tuple[MelodyModel, ModelVersion]:
    """A published melody model (pitch-equivariant or per-frame TCAE) on the CPU in eval mode."""
    from recsys.models.restore import restore_melody

    meta, state = load_version(workspace, "melody", version)
    return restore_melody(meta, state), meta
