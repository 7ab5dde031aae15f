"""Commands that show the product: app (the explorer) and demo (everything on the demo catalog)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli.output import StageBars, emit, note, print_epoch
from recsys.cli.root import Context, app, computing, require_catalog
from recsys.errors import MissingDependencyError, NoModelsError


def require_servable(c: Context) -> None:
    """The explorer needs a catalog and a trained model pair: say which step is missing before starting it."""
    from recsys.registry import current_pair

    require_catalog(c)
    if current_pair(c.root) is None:
        raise NoModelsError(f"no trained models in {c.root / 'models'}",
                            "run `recsys train` (after `recsys ingest`), then `recsys app`")


@app.command("app")
def app_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve the explorer on.")] = 8501,
) -> None:
    """Open the similarity explorer (Streamlit): the catalog map, similar singers, query by song."""
    from recsys.config import PROJECT_ROOT

    if importlib.util.find_spec("streamlit") is None:
        raise MissingDependencyError("the explorer needs streamlit, which is not installed",
                                     "pip install 'streamlit>=1.38'")
    c = computing(ctx)
    require_servable(c)
    env = dict(os.environ, RECSYS_DEVICE=c.settings.device)
    if c.settings.db_url:
        env["RECSYS_DB_URL"] = c.settings.db_url  # through the environment: no password on the command line
    cmd = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app" / "explorer.py"),
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--workspace", str(c.root)]
    for flag, path in (("--config", c.config_file), ("--manifest", c.manifest_file)):
        if path is not None:
            cmd += [flag, str(Path(path).resolve())]
    note(f"explorer for {c.root} on http://localhost:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command()
def demo(
    ctx: typer.Context,
    seconds: Annotated[float | None, typer.Option(help="Override the demo songs' length.")] = None,
    singers: Annotated[int | None, typer.Option(help="Override the number of demo singers.")] = None,
    songs: Annotated[int | None, typer.Option(help="Override songs per singer.")] = None,
    timbre_epochs: Annotated[int | None, typer.Option(
        min=1, help="Cap the timbre encoder's epochs (default: the configured schedule, early stopping included; "
                    "about 1.6 min on 2 idle cores).")] = None,
    melody_epochs: Annotated[int | None, typer.Option(
        min=1, help="Cap the TCAE's epochs (default: the configured schedule; about 3.6 min on 2 idle cores).")] = None,
) -> None:
    """Run the whole product on the built-in demo catalog: generate, ingest, train, embed, recommend."""
    from recsys.demo import capped_training, demo_plan, run_demo

    settings = capped_training(computing(ctx).settings, timbre_epochs, melody_epochs)
    bars = StageBars()

    def show(result: object) -> None:
        bars.close()  # a finished stage's bar, before its result is printed
        emit(result)

    try:
        run_demo(settings, demo_plan(settings, singers, songs, seconds), show=show, progress=bars, log=print_epoch)
    finally:
        bars.close()
