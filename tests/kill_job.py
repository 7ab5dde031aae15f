"""Run `recsys ingest --embed` in this process and SIGKILL it at a chosen point (crash-safety tests).

    python tests/kill_job.py WORKSPACE MANIFEST POINT:N WORKERS

POINT is before_commit (the runner handed over its N-th batch, not yet committed),
after_commit (the N-th batch is committed, its vectors not yet in the index) or
after_index (the index was saved for the N-th time). The failure is injected from
here, around the job's own parts: the product carries no test hook.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pipelines import job
from pipelines.ingest import run_ingest
from pipelines.runners import LocalRunner
from recsys.config import load_settings


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ws, manifest, point_n, workers = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    point, n = point_n.split(":")
    reached = {"n": 0}

    def count() -> bool:
        reached["n"] += 1
        return reached["n"] == int(n)

    class KillingRunner(LocalRunner):
        def process(self, todo, stages):
            for batch in super().process(todo, stages):
                if point == "before_commit" and count():
                    _kill()
                yield batch

    add, save = job.LiveIndex.add, job.LiveIndex.save

    def add_or_kill(self, *args):
        if point == "after_commit" and count():
            _kill()
        add(self, *args)

    def save_then_kill(self):
        dirty = self._dirty
        save(self)
        if point == "after_index" and dirty and count():
            _kill()

    job.LiveIndex.add, job.LiveIndex.save = add_or_kill, save_then_kill
    settings = load_settings(manifest_file=None, workspace=ws, device="cpu")
    run_ingest(manifest, settings, embed=True, runner=KillingRunner(workers), batch_size=2)


if __name__ == "__main__":
    main()
