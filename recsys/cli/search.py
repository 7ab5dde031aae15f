"""Commands that answer queries: search, similar-singers, and the index they read (index rebuild|check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recsys.cli.output import emit
from recsys.cli.root import app, computing, parse_weights, require_catalog
from recsys.errors import InvalidOptionError
from recsys.results import IndexReport, SearchResult

BY = ("singer", "song", "melody")  # the questions of recsys.fusion (not imported: it loads torch)


@app.command("similar-singers")
def similar_singers(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A singer in the catalog.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many singers.")] = 10,
    weights: Annotated[str | None, typer.Option(help="Explicit weights instead of the 'singer' question's, "
                                                "e.g. timbre=0.7,melody=0.3")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Singers who sound most like NAME, with the timbre/melody split of each score."""
    c = computing(ctx)
    w = parse_weights(weights)
    require_catalog(c)
    rec = c.recommender()
    hits = rec.similar_singers(name, k, w)
    emit(SearchResult(f"singer:{name}", w or rec.weights_for("singer"), hits, []), as_json)


@app.command("search")
def search_cmd(
    ctx: typer.Context,
    audio: Annotated[Path, typer.Argument(help="An audio file (wav, flac, ogg, mp3), in the catalog or not.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many results.")] = 10,
    by: Annotated[str, typer.Option(help="The question: singer (who sings like this), song (similar songs) or "
                                    "melody (the same melody); each has its configured weights.")] = "singer",
    weights: Annotated[str | None, typer.Option(help="Explicit weights instead of the question's, "
                                                "e.g. timbre=0.7,melody=0.3")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Query by song: who sings like this recording, and which songs are closest."""
    c = computing(ctx)
    if by not in BY:
        raise InvalidOptionError(f"--by must be {', '.join(BY[:-1])} or {BY[-1]}, not {by!r}")
    if not audio.is_file():
        raise InvalidOptionError(f"{audio}: no such audio file", "give a wav, flac, ogg or mp3 file to search by")
    w = parse_weights(weights)
    require_catalog(c)
    emit(c.recommender().search(audio, k, w, by), as_json)  # type: ignore[arg-type]


index_app = typer.Typer(help="The FAISS index (a cache derived from the catalog).", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("rebuild")
def index_rebuild(ctx: typer.Context) -> None:
    """Rebuild the song index from the catalog's vectors."""
    c = computing(ctx)
    require_catalog(c)
    rec = c.recommender()
    index = rec.rebuild_index()
    emit(IndexReport(len(index), index.kind, c.workspace.index_dir(rec.model_version), "rebuilt"))


@index_app.command("check")
def index_check(ctx: typer.Context) -> None:
    """Load the index, rebuilding it if it is missing, stale or corrupt."""
    c = computing(ctx)
    require_catalog(c)
    rec = c.recommender()
    index, rebuilt = rec.load_index()
    state = "rebuilt" if rebuilt else "ok"
    emit(IndexReport(len(index), index.kind, c.workspace.index_dir(rec.model_version), state))
