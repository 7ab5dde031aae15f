"""Re-embed the catalog under new model versions while the old index keeps answering, then switch.

    summary = reembed(settings, timbre_version="3c1f...", melody_version=None)  # None: newest published

Serving follows the models' LATEST pointers (Recommender loads the versions they name,
and the index in index/<timbre version>+<melody version>/). This job

1. computes the new versions' vectors for every song that lacks them, a committed batch
   at a time, under the new versions' own model_version rows (the old rows, and so the
   old index and searches, are untouched);
2. builds the new index folder from those vectors and saves it;
3. only then moves the LATEST pointers to the new versions with os.replace.

A reader before step 3 gets the old models with the old index, after it the new with
the new. Killed at any point, a re-run continues where it stopped (the songs that still
lack vectors); serving does not change until the switch. The two pointers are two files:
a Recommender created in the microseconds between the two renames would see a mixed pair
whose index does not exist, and fail rather than answer wrongly. Running Recommenders
keep the models they loaded until they are created again.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ingest import MAX_KEPT_FAILURES, BatchReport, JobSummary, load_embedder
from pipelines.runners import LocalRunner, Runner, Stages
from recsys import catalog
from recsys.config import Settings
from recsys.ingest import EmbeddedSong, FileFailure, commit_batch
from recsys.manifest import ManifestEntry
from recsys.training.checkpoint import META, ModelVersion, latest_version, models_dir

KINDS = ("timbre", "melody")


@dataclass
class ReembedSummary:
    old_version: str | None  # what served before (None: no models were serving)
    new_version: str
    embedded: int = 0  # songs given vectors by this run
    already: int = 0  # songs that had vectors of the new version before this run (a resumed run)
    failed: Counter = field(default_factory=Counter)  # cause -> count
    failures: list[FileFailure] = field(default_factory=list)
    index_size: int = 0
    switched: bool = False  # the LATEST pointers were moved by this run
    wall_seconds: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "embedded": self.embedded,
            "already": self.already,
            "failed": dict(self.failed),
            "index_size": self.index_size,
            "switched": self.switched,
            "wall_seconds": round(self.wall_seconds, 3),
        }


def published_versions(workspace: Path, kind: str) -> list[ModelVersion]:
    """Every published version of `kind`, oldest first (by their creation time)."""
    from recsys.training.checkpoint import _read_meta

    root = models_dir(workspace, kind)
    found = [_read_meta(p) for p in root.iterdir() if p.is_dir() and (p / META).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda v: (v.created, v.version))


def _target(workspace: Path, kind: str, version: str | None) -> str:
    versions = [v.version for v in published_versions(workspace, kind)]
    if not versions:
        raise FileNotFoundError(
            f"no trained {kind} model in {models_dir(workspace, kind)}; run `recsys train {kind}` first"
        )
    if version is None:
        return versions[-1]
    if version not in versions:
        raise ValueError(f"no published {kind} version {version!r} in {models_dir(workspace, kind)}; "
                         f"valid: {', '.join(versions)}")
    return version


def pinned_recommender(settings: Settings, timbre_version: str, melody_version: str) -> Any:
    """A Recommender on given model versions instead of the LATEST ones (its index dir, rows, vectors)."""
    from recsys.api import Recommender
    from recsys.embedding import Embedder
    from recsys.training.contrastive import load_timbre
    from recsys.training.tcae import load_melody

    rec = Recommender(settings)
    timbre, t_meta = load_timbre(settings.workspace, timbre_version)
    melody, m_meta = load_melody(settings.workspace, melody_version)
    embedder = Embedder(timbre, melody, settings.audio, settings.features, rec.separator)
    embedder.versions = (t_meta, m_meta)  # type: ignore[attr-defined]
    rec.__dict__["embedder"] = embedder  # the cached property, pinned
    return rec


def switch_serving(workspace: Path, versions: dict[str, str]) -> None:
    """Point LATEST of each kind at `versions[kind]`, each pointer replaced atomically."""
    for kind in ("melody", "timbre"):  # adjacent renames; see the module docstring
        root = models_dir(workspace, kind)
        fd, tmp = tempfile.mkstemp(prefix=".LATEST-", dir=root)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(versions[kind])
            os.replace(tmp, root / "LATEST")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def reembed(
    settings: Settings,
    *,
    timbre_version: str | None = None,
    melody_version: str | None = None,
    runner: Runner | None = None,
    batch_size: int = 32,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> ReembedSummary:
    """Vectors and an index for the given versions (default: the newest published), then switch serving.

    Songs whose file is gone or no longer matches its content hash are recorded as
    failures (cause 'not_found', 'changed', ...) and left out of the new index.
    """
    started = time.monotonic()
    ws = settings.workspace
    serving = [latest_version(ws, kind) for kind in KINDS]
    old = "+".join(v.version for v in serving) if None not in serving else None  # type: ignore[union-attr]
    target = {"timbre": _target(ws, "timbre", timbre_version), "melody": _target(ws, "melody", melody_version)}
    rec = pinned_recommender(settings, target["timbre"], target["melody"])
    embedder = load_embedder(rec)
    summary = ReembedSummary(old_version=old, new_version=rec.model_version)
    with catalog.session_scope(rec.sessions) as s:
        rows = rec._model_rows(s)
        run_id = catalog.start_run(s, f"reembed {rec.model_version}", {"job": "pipelines.reembed"}).id
        todo = [(song.id, song.path, song.content_hash)
                for song in catalog.songs_missing_embeddings(s, rows["fused"], "fused")]
        summary.already = catalog.catalog_stats(s).n_songs - len(todo)
    by_path: dict[str, dict[str, int]] = defaultdict(dict)  # path -> {content hash: song id}
    for song_id, path, digest in todo:
        by_path[str(Path(path))][digest] = song_id
    entries = [ManifestEntry(path=Path(p)) for p in by_path]
    stages = Stages(settings.audio, settings.features, embedder, batch_size, rec.separation)
    runner_ = runner if runner is not None else LocalRunner()
    from recsys.embedding import Weights

    weights = Weights(settings.fusion.w_timbre, settings.fusion.w_melody)
    progress = JobSummary(run_id=run_id)
    try:
        for n, results in enumerate(runner_.process(entries, stages), 1):
            good: list[EmbeddedSong] = []
            failures: list[FileFailure] = []
            for r in results:
                if isinstance(r, FileFailure):
                    failures.append(r)
                elif r.song.content_hash in by_path[str(r.song.entry.path)]:
                    good.append(r)
                else:
                    failures.append(FileFailure(str(r.song.entry.path), "changed",
                                                f"{r.song.entry.path}: the file changed since it was ingested "
                                                f"(its content hash is no longer the catalog's); ingest it again"))
            vectors = (np.stack([r.timbre for r in good]), np.stack([r.melody for r in good])) if good else None
            with catalog.session_scope(rec.sessions) as s:
                result = commit_batch(s, s.get(catalog.IngestRun, run_id), [r.song for r in good], failures,
                                      vectors, rows, weights)
            summary.embedded += result.embedded
            for f in failures:
                summary.failed[f.cause] += 1
                if len(summary.failures) < MAX_KEPT_FAILURES:
                    summary.failures.append(f)
            progress.audio_seconds += sum(r.song.duration_s for r in good)
            if on_batch is not None:
                progress.embedded, progress.batches = summary.embedded, n
                progress.failed = summary.failed
                progress.wall_seconds = time.monotonic() - started
                on_batch(BatchReport(n, len(results), progress))
    finally:
        if runner is None:
            runner_.close()
    ids, _ = rec.catalog_vectors()
    if len(ids) == 0:
        raise ValueError(f"no song could be embedded with {rec.model_version}; serving stays on {old}")
    summary.index_size = len(rec.rebuild_index())  # index/<new version>/, saved atomically
    if old != rec.model_version:
        switch_serving(ws, target)
        summary.switched = True
    summary.wall_seconds = time.monotonic() - started
    with catalog.session_scope(rec.sessions) as s:
        catalog.finish_run(s, s.get(catalog.IngestRun, run_id), summary.as_dict())
    return summary
