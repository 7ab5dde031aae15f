"""The explorer's first-page maps, fitted after a job in a process of their own.

Fitting UMAP costs seconds of numba compilation on every new process plus the fit itself,
which grows with the catalog: paid inside `recsys ingest --embed`, it was most of a
small ingest's time (8 three-minute songs: 14 s of 16) and, on a large catalog, a
refit of the whole map after every daily delta. The job therefore starts
`recsys maps` detached and returns; the maps land in the workspace when it is done
(saved atomically with the vectors' fingerprint, recsys.projection), and an explorer
visited before then fits them itself, as it always could.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from recsys.config import Settings

LOG_NAME = "maps.log"


@dataclass(frozen=True)
class BackgroundMaps:
    """A started map fit: its process id and log file."""

    pid: int
    log: Path

    def as_text(self) -> str:
        return f"explorer maps: fitting in the background (pid {self.pid}); log: {self.log}"


def start_background_maps(settings: Settings, config_file: Path | None = None,
                          manifest_file: Path | None = None) -> BackgroundMaps:
    """Start `recsys maps` for this workspace and catalog, detached from this process and its terminal.

    The catalog URL travels in the environment (RECSYS_DB_URL), not on the command line,
    where `ps` would show a password.
    """
    root = Path(settings.workspace)
    log = root / "logs" / LOG_NAME
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "recsys", "--workspace", str(root), "--device", "cpu"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    if manifest_file is not None:
        args += ["--manifest", str(manifest_file)]
    env = {**os.environ, "RECSYS_DB_URL": settings.database_url}
    with open(log, "ab") as out:
        process = subprocess.Popen([*args, "maps"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, close_fds=True)
    return BackgroundMaps(process.pid, log)
