"""The `recsys` command line: a thin layer over the library, one module per command group.

    root     the app, global options (--workspace, --db, --config, --manifest, --device, --debug)
    errors   the one error layer: known failures become one line and an exit status
    output   text or JSON rendering of results, progress on stderr
    catalog  config, demo-corpus, ingest, catalog, export
    models   train, embed, reembed, probe
    search   search, similar-singers, index
    studies  evaluate, experiment
    serve    app, demo
"""

from __future__ import annotations

from recsys.cli import catalog, models, search, serve, studies  # noqa: F401  (each registers its commands)
from recsys.cli.root import app


def main() -> None:
    """The console script `recsys`."""
    app(prog_name="recsys")


__all__ = ["app", "main"]
