"""The `recsys` app, its global options, and the context every command receives.

Heavy packages (torch, Ray, Streamlit, FAISS, SQLAlchemy) are imported inside the commands that
need them, so `recsys --help` answers at once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recsys.cli.errors import ErrorLayer, option_errors
from recsys.config import Settings, load_settings
from recsys.errors import (
    DeviceUnavailableError,
    EmptyCatalogError,
    InvalidOptionError,
    MissingDependencyError,
)

if TYPE_CHECKING:
    from pipelines.runners import Runner
    from recsys.api import Recommender
    from recsys.embedding import Weights
    from recsys.workspace import Workspace

app = typer.Typer(
    name="recsys",
    help="singer-recsys: learn what each voice in a catalog sounds like and recommend singers who sound alike.",
    cls=ErrorLayer,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True)
class Context:
    """The global options of one invocation, the settings they make and the workspace those name.

    Settings are read on first use, so that `recsys COMMAND --help` answers whatever the config says.
    """

    workspace_dir: Path | None = None
    db_url: str | None = None
    config_file: Path | None = None  # the --config / --manifest given, passed on to the explorer
    manifest_file: Path | None = None
    device: str | None = None
    debug: bool = False
    preset: Settings | None = None  # settings a command changed (with_settings)

    @functools.cached_property
    def settings(self) -> Settings:
        from recsys.config import DEFAULT_MANIFEST

        if self.preset is not None:
            return self.preset
        manifest = self.manifest_file
        if manifest is not None and not manifest.is_file():
            raise InvalidOptionError(f"--manifest {manifest}: no such file",
                                     "give a data manifest YAML, or leave --manifest out to use data_manifest.yaml")
        with option_errors():
            settings = load_settings(config_file=self.config_file, manifest_file=manifest or DEFAULT_MANIFEST,
                                     workspace=self.workspace_dir, db_url=self.db_url, device=self.device)
        return cpu_only(settings)

    @property
    def database_url(self) -> str | None:
        """The catalog's URL for error messages, without reading settings that were not read yet."""
        settings = self.__dict__.get("settings", self.preset)
        return settings.database_url if settings is not None else self.db_url or os.environ.get("RECSYS_DB_URL")

    @functools.cached_property
    def workspace(self) -> Workspace:
        from recsys.workspace import Workspace

        return Workspace(self.settings)

    @property
    def root(self) -> Path:
        return self.settings.workspace

    def recommender(self) -> Recommender:
        from recsys.api import Recommender

        return Recommender(self.workspace)

    def with_settings(self, settings: Settings) -> Context:
        return replace(self, preset=settings)


def cpu_only(settings: Settings) -> Settings:
    """`--device cpu` (or RECSYS_DEVICE=cpu) means no GPU at all: the FAISS index searches on the CPU too."""
    if settings.device != "cpu" or not settings.index.use_gpu:
        return settings
    from recsys.index.gpu import for_device

    return settings.model_copy(update={"index": for_device(settings.index, settings.device)})


def state(ctx: typer.Context) -> Context:
    """The invocation's context (set by the global options), its settings read."""
    c: Context = ctx.obj
    _ = c.settings  # a bad config or manifest fails here, inside the error layer
    return c


def check_device(device: str) -> None:
    """Fail in one line when CUDA is asked for on a machine without it (torch is imported only here)."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "device 'cuda' was asked for (--device, RECSYS_DEVICE or the config), but this machine has no "
            "usable CUDA device",
            "use --device auto (CUDA when present, else the CPU) or --device cpu")


def computing(ctx: typer.Context) -> Context:
    """The context of a command that computes: the device asked for must exist."""
    c = state(ctx)
    check_device(c.settings.device)
    return c


def require_catalog(c: Context) -> None:
    """Stop before anything is created when the workspace has no catalog yet."""
    if not c.workspace.catalog_exists():
        raise EmptyCatalogError(f"no catalog in {c.root}", "run `recsys ingest MANIFEST_OR_FOLDER` first")


def parse_weights(text: str | None) -> Weights | None:
    """--weights timbre=0.7,melody=0.3; None (the library's weights for the question asked) when not given."""
    if text is None:
        return None
    from recsys.embedding import Weights

    with option_errors("--weights"):
        return Weights.parse(text)


@contextmanager
def job_runner(kind: str, workers: int | None, address: str | None) -> Iterator[Runner]:
    """The batch jobs' runner (--runner local|ray), closed afterwards."""
    from pipelines.runners import make_runner

    if kind == "ray" and importlib.util.find_spec("ray") is None:
        raise MissingDependencyError("the Ray runner needs Ray Data, which is not installed",
                                     "pip install 'singer-recsys[ray]', or use --runner local")
    with option_errors("--runner"):
        runner = make_runner(kind, workers=workers, address=address)
    try:
        yield runner
    finally:
        runner.close()


@app.callback()
def main_options(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Workspace folder (catalog, models, index). Default: $RECSYS_HOME or ~/.singer-recsys."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Catalog database URL, e.g. postgresql+psycopg://user@host/db. "
                     "Default: $RECSYS_DB_URL or sqlite:///<workspace>/catalog.db."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config file overriding data_manifest.yaml's settings.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Data manifest declaring datasets and parameters.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show an error's full traceback instead of one line.")]
        = False,
) -> None:
    """Global options; every command works on one workspace."""
    ctx.obj = Context(workspace_dir=workspace, db_url=db, config_file=config, manifest_file=manifest, device=device,
                      debug=debug)


class MapsWhen(str, Enum):
    """When a job that changed the vectors fits the explorer's first-page maps (pipelines/maps.py)."""

    background = "background"
    wait = "wait"
    skip = "skip"


def maps_after_job(c: Context) -> None:
    """Start the first-page maps' fit detached, and say where its log goes."""
    from pipelines.maps import start_background_maps

    started = start_background_maps(c.settings, c.config_file, c.manifest_file)
    typer.echo(started.as_text(), err=True)
