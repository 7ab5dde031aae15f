"""Commands that show the product: app (the explorer) and demo (everything on the demo catalog)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated

import typer

from recsys.cli.output import StageBars, emit, note, print_epoch
from recsys.cli.root import Context, app, computing, require_catalog
from recsys.errors import MissingDependencyError, NoModelsError, RecsysError


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
    address: Annotated[str | None, typer.Option(
        help="Address to listen on, e.g. 127.0.0.1 for this machine only (default: every interface).")] = None,
) -> None:
    """Open the similarity explorer (Streamlit): the catalog map, similar singers, query by song.

    The page runs once in the server before it says it is ready, so the first visitor only lays it out."""
    if importlib.util.find_spec("streamlit") is None:
        raise MissingDependencyError("the explorer needs streamlit, which is not installed",
                                     "pip install 'streamlit>=1.38'")
    c = computing(ctx)
    require_servable(c)
    from app.server import serve

    env = dict(os.environ, RECSYS_DEVICE=c.settings.device)
    if c.settings.db_url:
        env["RECSYS_DB_URL"] = c.settings.db_url  # through the environment: no password on the command line
    explorer_args = ["--workspace", str(c.root)]
    for flag, path in (("--config", c.config_file), ("--manifest", c.manifest_file)):
        if path is not None:
            explorer_args += [flag, str(Path(path).resolve())]
    url = f"http://{address if address not in (None, '', '0.0.0.0') else 'localhost'}:{port}"

    def ready(status: str) -> None:
        warmed = "page warmed" if status == "ok" else f"warm-up run: {status}; the first visitor waits for the page"
        note(f"explorer for {c.root} ready on {url} ({warmed}; Ctrl-C to stop)")

    try:
        code = serve(explorer_args, port, env=env, on_ready=ready, address=address)
    except RuntimeError as e:  # the server neither answered nor exited
        raise RecsysError(f"the explorer did not start: {e}",
                          "check that nothing else holds the port, or pass --port") from e
    raise typer.Exit(code)


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
        min=1, help="Cap the TCAE's epochs (default: the configured schedule; about 2.5 min on 2 idle cores).")] = None,
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
