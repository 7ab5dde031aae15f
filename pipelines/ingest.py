"""The ingestion job: a manifest, folder or file -> registered songs (and, with `embed`, vectors and index).

    summary = run_ingest("songs/manifest.csv", workspace, embed=True, runner=LocalRunner())

The job itself is pipelines/job.py; this module chooses its entries (the manifest,
streamed) and its stages (an embedder of the serving pair when `embed`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.job import BatchReport, Job, JobSummary, run_job
from pipelines.runners import Runner
from recsys.config import Settings
from recsys.manifest import iter_manifest
from recsys.workspace import Workspace

__all__ = ["BatchReport", "JobSummary", "run_ingest"]


def run_ingest(
    source: str | Path,
    workspace: Workspace | Settings,
    *,
    embed: bool = False,
    runner: Runner | None = None,
    batch_size: int = 32,
    window: int = 512,
    dry_run: bool = False,
    index_save_every_s: float = 10.0,
    on_batch: Callable[[BatchReport], None] | None = None,
    fit_maps: bool = True,
) -> JobSummary:
    """Register (and with `embed`, embed and index) every good song of `source` exactly once.

    `source` is a manifest CSV, a <singer>/<song>.<ext> folder or an audio file; it is
    streamed `window` entries at a time. Batches of `batch_size` files are committed in
    one transaction each. With `dry_run` files are hashed and decoded but nothing is
    written. Raises ManifestError for an unusable manifest (before anything is written)
    and NoModelsError when `embed` finds no serving models. With `embed` and `fit_maps`, a
    run that embedded anything ends by fitting the explorer's first-page maps.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    items = iter_manifest(source)  # raises ManifestError before anything is written
    _check_separator(ws)
    embedder = None
    if embed:
        from recsys.api import Recommender

        embedder = Recommender(ws).embedder  # the serving pair, checked against the audio settings
    job = Job(ws, embedder, runner, batch_size, window, dry_run, index_save_every_s, on_batch)
    options = {"job": "ingest", "embed": embed, "batch_size": batch_size,
               "runner": type(runner).__name__ if runner else "LocalRunner",
               "separation": ws.separation.model_dump(mode="json")}
    summary = run_job(items, job, str(source), options)
    if embed and fit_maps and summary.embedded and not dry_run:
        from recsys.api import Recommender
        from recsys.projection import fit_default_maps

        fit_default_maps(Recommender(ws))  # the serving pair, over the vectors just written
    return summary


def _check_separator(ws: Workspace) -> None:
    """Fail now, with the separator's message, rather than once per file in the workers."""
    if ws.separation.method == "none":
        return
    from recsys.separation import separator_from_config

    try:
        separator_from_config(ws.separation)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"separation {ws.separation.method!r} cannot be used: {e}") from e
