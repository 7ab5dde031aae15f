"""Running the catalog job from tests with a database URL and plain audio settings."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipelines.ingest import JobSummary, run_ingest
from pipelines.runners import LocalRunner
from recsys.config import AudioConfig, SeparationConfig, load_settings


def ingest(
    source: Path,
    db_url: str | None,
    audio: AudioConfig,
    workers: int = 1,
    batch_size: int = 32,
    dry_run: bool = False,
    separation: SeparationConfig | None = None,
    workspace: Path | None = None,
) -> JobSummary:
    """Register `source` into the catalog at `db_url` (None: the workspace's own SQLite file)."""
    extra = {"separation": separation.model_dump()} if separation is not None else {}
    settings = load_settings(manifest_file=None, workspace=workspace or Path(tempfile.mkdtemp()),
                             db_url=db_url, audio=audio.model_dump(), **extra)
    runner = LocalRunner(workers)
    try:
        return run_ingest(source, settings, runner=runner, batch_size=batch_size, dry_run=dry_run)
    finally:
        runner.close()
