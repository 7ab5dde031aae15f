"""Vectors of a model pair for every catalog song, its index, then the switch to that pair.

    summary = reembed(workspace, timbre_version="3c1f...", melody_version=None)  # None: newest trained

What serves is the single pointer models/CURRENT (recsys.registry). This job

1. runs the catalog job (pipelines/job.py) over the songs that lack vectors of the
   target pair, writing them under the pair's own model-version rows and into the
   pair's own index folder (the serving pair, its vectors and its index are untouched);
2. makes that index agree with the catalog;
3. only then points CURRENT at the target pair, in one atomic rename.

A reader before step 3 gets the old pair with its index, after it the new pair with
its index. Killed at any point, a re-run continues where it stopped; serving does not
change until the switch. `recsys train` and `recsys embed` end with this job.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.job import BatchReport, Job, run_job
from pipelines.runners import Runner
from recsys import catalog
from recsys.config import Settings
from recsys.ingest import FileFailure
from recsys.manifest import ManifestEntry
from recsys.registry import current_pair, load_models, resolve_pair, set_current_pair
from recsys.workspace import Workspace


@dataclass
class ReembedSummary:
    old_version: str | None  # what served before (None: nothing served)
    new_version: str
    embedded: int = 0  # songs given vectors by this run
    already: int = 0  # songs that had vectors of the new pair before this run (a resumed run)
    missing: int = 0  # songs still without vectors of the new pair (their files failed)
    failed: Counter = field(default_factory=Counter)  # cause -> count
    failures: list[FileFailure] = field(default_factory=list)
    index_size: int = 0
    switched: bool = False  # CURRENT was moved by this run
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
            "missing": self.missing,
            "failed": dict(self.failed),
            "index_size": self.index_size,
            "switched": self.switched,
            "wall_seconds": round(self.wall_seconds, 3),
        }

    def as_text(self) -> str:
        lines = [(f"embedded {self.embedded} songs under models {self.new_version} "
                  f"({self.already} had vectors already); index holds {self.index_size} songs")]
        if self.n_failed:
            causes = ", ".join(f"{c}: {n}" for c, n in sorted(self.failed.items()))
            lines.append(f"{self.n_failed} songs could not be embedded ({causes}); `recsys catalog` lists them")
        lines.append(f"now serving {self.new_version}" if self.switched or self.old_version == self.new_version
                     else f"still serving {self.old_version}")
        return "\n".join(lines)


def reembed(
    workspace: Workspace | Settings,
    *,
    timbre_version: str | None = None,
    melody_version: str | None = None,
    runner: Runner | None = None,
    batch_size: int = 32,
    on_batch: Callable[[BatchReport], None] | None = None,
    fit_maps: bool = True,
) -> ReembedSummary:
    """Vectors and an index for the given versions (default: the newest trained), then switch serving.

    With `fit_maps`, the explorer's first-page maps of the new pair are then fitted and saved
    (recsys.projection.fit_default_maps), so its first visitor does not wait for UMAP.

    Songs whose file is gone or no longer matches its content hash are recorded as
    failures (cause 'not_found', 'changed', ...) and left out of the new index. Raises
    NoModelsError without trained models and EmptyCatalogError when no song could be embedded.
    """
    from recsys.api import Recommender
    from recsys.errors import EmptyCatalogError

    started = time.monotonic()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    old = current_pair(ws.root)
    target = resolve_pair(ws.root, timbre_version, melody_version)
    rec = Recommender(ws, load_models(ws.root, target))
    summary = ReembedSummary(old_version=old.version if old else None, new_version=target.version)
    with ws.sessions() as s:
        rows = {kind: catalog.model_version_row(s, kind, target.of(kind)) for kind in ("timbre", "melody")}
        todo = catalog.songs_missing_pair(s, rows["timbre"], rows["melody"])
        n_songs = catalog.catalog_stats(s).n_songs
        entries = [ManifestEntry(path=Path(song.path), content_hash=song.content_hash) for song in todo]
    if n_songs == 0:
        raise EmptyCatalogError("the catalog has no songs", "run `recsys ingest SOURCE` first")
    summary.already = n_songs - len(todo)
    job = Job(ws, rec.embedder, runner, batch_size, on_batch=on_batch)
    result = run_job(entries, job, f"reembed {target.version}", {"job": "reembed"})
    summary.embedded, summary.failed, summary.failures = result.embedded, result.failed, result.failures
    summary.index_size = result.index_size or 0
    summary.missing = n_songs - summary.already - summary.embedded
    if summary.index_size == 0:
        raise EmptyCatalogError(f"no song could be embedded with {target.version}; serving stays on "
                                f"{summary.old_version}", "`recsys catalog` lists the errors")
    set_current_pair(ws.root, target)  # written even when unchanged: the pointer then exists
    summary.switched = old != target
    if fit_maps:
        from recsys.projection import fit_default_maps

        fit_default_maps(rec)
    summary.wall_seconds = time.monotonic() - started
    return summary
