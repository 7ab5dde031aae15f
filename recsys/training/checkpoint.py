"""Model versions on disk: weights plus the config and catalog fingerprint that made them.

Layout: ``<workspace>/models/<kind>/<version>/`` holding ``weights.pt`` (a plain
state dict, loaded with ``weights_only=True``), ``meta.json`` (kind, version,
model config, training config, catalog fingerprint, metrics) and, while training
runs, ``resume.pt`` (optimiser state and epoch). A version is published by an
atomic rename of its folder, so a crash never leaves a half-written version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

WEIGHTS = "weights.pt"
META = "meta.json"
RESUME = "resume.pt"


class CheckpointMismatchError(ValueError):
    """A checkpoint was made with a different model configuration than the one asked for."""


@dataclass
class ModelVersion:
    kind: str  # "timbre" or "melody"
    version: str
    path: Path
    model_config: dict[str, Any]
    fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    audio: dict[str, Any] | None = None  # recsys.fingerprint.audio_fingerprint of the training audio


def catalog_fingerprint(items: list[tuple[str, str]]) -> str:
    """Order-independent hash of (song key, content hash) pairs: which data a model saw."""
    digest = hashlib.sha256()
    for key, content in sorted(items):
        digest.update(f"{key}\0{content}\n".encode())
    return digest.hexdigest()[:16]


def version_name(model_config: dict[str, Any], fingerprint: str) -> str:
    """Deterministic version id: same config and data -> same version."""
    blob = json.dumps(model_config, sort_keys=True, default=str) + fingerprint
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def models_dir(workspace: Path, kind: str) -> Path:
    return Path(workspace) / "models" / kind


def save_version(
    workspace: Path,
    kind: str,
    state_dict: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    fingerprint: str,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    audio: dict[str, Any] | None = None,
) -> ModelVersion:
    """Write weights + meta to a temporary folder, then rename it into place atomically."""
    version = version or version_name(model_config, fingerprint)
    root = models_dir(workspace, kind)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    meta = {
        "kind": kind,
        "version": version,
        "model_config": model_config,
        "fingerprint": fingerprint,
        "metrics": metrics or {},
        "created": time.time(),
        "audio": audio,
    }
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / WEIGHTS)
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (root / "LATEST").write_text(version)  # the newest trained; what serves is registry.CURRENT
    return read_meta(final)


def read_meta(path: Path) -> ModelVersion:
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model version at {path} has no {META}") from e
    return ModelVersion(
        kind=meta["kind"],
        version=meta["version"],
        path=path,
        model_config=meta["model_config"],
        fingerprint=meta["fingerprint"],
        metrics=meta.get("metrics", {}),
        created=meta.get("created", 0.0),
        audio=meta.get("audio"),
    )


def latest_version(workspace: Path, kind: str) -> ModelVersion | None:
    """The most recently published version of `kind`, or None when none was trained."""
    pointer = models_dir(workspace, kind) / "LATEST"
    if not pointer.exists():
        return None
    return read_meta(models_dir(workspace, kind) / pointer.read_text().strip())


def load_version(
    workspace: Path, kind: str, version: str | None = None, expect_config: dict[str, Any] | None = None
) -> tuple[ModelVersion, dict[str, torch.Tensor]]:
    """Load (meta, state dict) of a version (latest by default), refusing a config mismatch."""
    if version is None:
        found = latest_version(workspace, kind)
        if found is None:
            raise FileNotFoundError(
                f"no trained {kind} model in {models_dir(workspace, kind)}; run `recsys train {kind}` first"
            )
        meta = found
    else:
        meta = read_meta(models_dir(workspace, kind) / version)
    if expect_config is not None:
        diff = {
            k: (meta.model_config.get(k), v)
            for k, v in expect_config.items()
            if meta.model_config.get(k) != v
        }
        if diff:
            details = ", ".join(f"{k}: checkpoint={a!r} requested={b!r}" for k, (a, b) in sorted(diff.items()))
            raise CheckpointMismatchError(f"{kind} model {meta.version} was trained with another config ({details})")
    state = torch.load(meta.path / WEIGHTS, map_location="cpu", weights_only=True)
    return meta, state


def save_resume(workspace: Path, kind: str, state: dict[str, Any]) -> Path:
    """Atomically write the in-progress training state (model, optimiser, epoch, rng)."""
    root = models_dir(workspace, kind)
    root.mkdir(parents=True, exist_ok=True)
    path = root / RESUME
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_resume(workspace: Path, kind: str) -> dict[str, Any] | None:
    path = models_dir(workspace, kind) / RESUME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def clear_resume(workspace: Path, kind: str) -> None:
    (models_dir(workspace, kind) / RESUME).unlink(missing_ok=True)
