"""The `recsys` command line: a thin layer over the library.

Heavy packages (torch, Ray, Streamlit, FAISS) are imported inside the commands
that need them, so `recsys --help` answers at once.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from recsys.config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(
    name="recsys",
    help="singer-recsys: learn what each voice in a catalog sounds like and recommend singers who sound alike.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class Context:
    settings: Settings
    config_file: Path | None = None  # the --config / --manifest given, passed on to the explorer
    manifest_file: Path | None = None

    def sessions(self) -> "sessionmaker[Session]":
        """Open (creating and migrating if needed) the workspace's catalog."""
        from recsys import catalog

        self.settings.workspace.mkdir(parents=True, exist_ok=True)
        return catalog.open_catalog(self.settings.database_url)

    def catalog_exists(self) -> bool:
        if self.settings.db_url:
            return True
        return (self.settings.workspace / "catalog.db").exists()


def _ctx(ctx: typer.Context) -> Context:
    return ctx.obj


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.callback()
def main_options(
    ctx: typer.Context,
    workspace: Annotated[
        Optional[Path],
        typer.Option(help="Workspace folder (catalog, models, index). Default: $RECSYS_HOME or ~/.singer-recsys."),
    ] = None,
    db: Annotated[
        Optional[str],
        typer.Option("--db", help="Catalog database URL, e.g. postgresql+psycopg://user@host/db. "
                     "Default: $RECSYS_DB_URL or sqlite:///<workspace>/catalog.db."),
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option(help="YAML config file overriding data_manifest.yaml's settings.")
    ] = None,
    manifest: Annotated[
        Optional[Path], typer.Option(help="Data manifest declaring datasets and parameters.")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Global options; every command works on one workspace."""
    from recsys.config import DEFAULT_MANIFEST

    try:
        settings = load_settings(
            config_file=config,
            manifest_file=manifest or DEFAULT_MANIFEST,
            workspace=workspace,
            db_url=db,
            device=device,
        )
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    ctx.obj = Context(settings=settings, config_file=config, manifest_file=manifest)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective configuration (after manifest, config file, environment and flags)."""
    import yaml

    data = _ctx(ctx).settings.model_dump(mode="json")
    typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@app.command("demo-corpus")
def demo_corpus(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder to write the WAVs and manifest.csv into.")],
    singers: Annotated[int, typer.Option(min=2, help="Number of synthetic singers.")] = 24,
    songs: Annotated[int, typer.Option(min=1, help="Songs per singer.")] = 8,
    seconds: Annotated[float, typer.Option(min=1.0, help="Length of each song.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Same seed, same catalog (byte-identical).")] = 0,
    accompaniment: Annotated[bool, typer.Option(help="Mix a synthetic accompaniment under the voice.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: all cores).")] = None,
) -> None:
    """Generate the deterministic synthetic demo catalog (no downloads)."""
    manifest = _generate_corpus(
        out, singers, songs, seconds, seed, accompaniment, workers, _ctx(ctx).settings.audio.sample_rate
    )
    typer.echo(f"wrote {singers * songs} songs by {singers} singers; manifest: {manifest}")


def _generate_corpus(
    out: Path, singers: int, songs: int, seconds: float, seed: int, accompaniment: bool,
    workers: int | None, sample_rate: int,
) -> Path:
    from recsys.corpus import generate_corpus
    from recsys.progress import progress_bar

    with progress_bar("generating demo catalog", total=singers * songs) as advance:
        return generate_corpus(
            out,
            n_singers=singers,
            songs_per_singer=songs,
            song_seconds=seconds,
            seed=seed,
            sample_rate=sample_rate,
            accompaniment=accompaniment,
            workers=workers,
            progress=lambda done, total: advance(done=done),
        )


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Manifest CSV (with a `path` column), a <singer>/<song>.<ext> "
                                           "folder, or one audio file.")],
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: all cores).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate the manifest and files without writing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    separate: Annotated[Optional[str], typer.Option(
        help="Accompaniment suppression: none (a cappella), classical (REPET-SIM) or neural (local weights). "
             "Remembered by the catalog: training, embedding and search then use it too. "
             "Default: separation.method if configured, else the catalog's last choice, else none.")] = None,
    separation_weights: Annotated[Optional[Path], typer.Option(
        help="Weights file for --separate neural (TorchScript, .pt2, or a state dict with "
             "separation.architecture); never downloaded.")] = None,
    embed: Annotated[bool, typer.Option(help="Also compute vectors with the trained models and update the index "
                                        "(the batch job: resumable, batched, parallel).")] = False,
    runner: Annotated[str, typer.Option(help="Where the job runs: local (processes) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --runner ray "
                                                   "(default: the running Ray, else a new local one).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Files per committed batch.")] = 32,
) -> None:
    """Decode, validate and register a catalog's songs (idempotent: re-running changes nothing).

    With --embed (or --runner ray) this is the batch job of pipelines/ingest.py: songs are
    embedded and indexed too, one committed batch at a time; killed at any moment, a re-run
    finishes the work. Progress lines go to stderr."""
    c = _with_separation(_ctx(ctx), separate, separation_weights)
    if embed or runner != "local":
        summary = _run_ingest_job(c, source, workers, dry_run, embed, runner, address, batch_size)
    else:
        summary = _run_ingest(c, source, workers, dry_run)
    if as_json:
        _print_json(summary.as_dict() | {"failures": [f.__dict__ for f in summary.failures]})
    else:
        _print_ingest_summary(summary)
    if summary.ingested == 0 and summary.skipped == 0 and summary.n_failed > 0:
        raise typer.Exit(1)


def _with_separation(c: Context, method: str | None, weights: Path | None) -> Context:
    """The context with --separate / --separation-weights applied to settings.separation."""
    from recsys.config import SeparationConfig

    if method is None and weights is None:
        return c
    update = {k: v for k, v in (("method", method), ("weights", weights)) if v is not None}
    try:
        separation = SeparationConfig(**(c.settings.separation.model_dump() | update))
    except ValueError as e:
        _fail(f"bad separation options: {e}", 2)
    return Context(settings=c.settings.model_copy(update={"separation": separation}))


def _run_ingest(c: Context, source: Path, workers: int | None, dry_run: bool):
    from recsys.api import effective_separation
    from recsys.ingest import ingest as run_ingest
    from recsys.manifest import ManifestError
    from recsys.progress import progress_bar

    sessions = c.sessions() if (not dry_run or c.catalog_exists()) else None
    separation = effective_separation(c.settings, sessions)
    if separation.method != "none":
        from recsys.separation import separator_from_config

        try:
            separator_from_config(separation)  # e.g. 'neural' without weights: say so before any file is read
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e), 2)
    try:
        with progress_bar(f"ingesting {source.name}") as advance:
            return run_ingest(source, sessions, c.settings.audio, workers=workers, dry_run=dry_run,
                              progress=lambda _path: advance(), separation=separation)
    except ManifestError as e:
        _fail(str(e), 2)


def _run_ingest_job(c: Context, source: Path, workers: int | None, dry_run: bool, embed: bool, runner: str,
                    address: str | None, batch_size: int):
    from pipelines.ingest import MissingModelsError, format_report, run_ingest
    from pipelines.runners import make_runner
    from recsys.manifest import ManifestError

    try:
        job_runner = make_runner(runner, workers=workers, address=address)
    except ValueError as e:
        _fail(str(e), 2)
    try:
        return run_ingest(source, c.settings, embed=embed, runner=job_runner, batch_size=batch_size,
                          dry_run=dry_run, on_batch=lambda report: typer.echo(format_report(report), err=True))
    except ManifestError as e:
        _fail(str(e), 2)
    except (MissingModelsError, RuntimeError) as e:  # no models; Ray missing or unreachable
        _fail(str(e))
    except ValueError as e:  # bad options, e.g. a separation that cannot be built
        _fail(str(e), 2)
    finally:
        job_runner.close()


def _print_ingest_summary(summary) -> None:
    verb = "would ingest" if summary.dry_run else "ingested"
    typer.echo(f"{verb} {summary.ingested} songs, skipped {summary.skipped} already present, "
               f"failed {summary.n_failed}")
    for cause, n in sorted(summary.failed.items()):
        typer.echo(f"  {cause}: {n}")
    for failure in summary.failures[:20]:
        typer.echo(f"  - {failure.message}")
    if len(summary.failures) > 20:
        typer.echo(f"  ... and {len(summary.failures) - 20} more (recsys catalog --errors)")
    if getattr(summary, "model_version", None):
        verb = "would embed under" if summary.dry_run else f"embedded {summary.embedded} songs under"
        typer.echo(f"{verb} model version {summary.model_version}; "
                   f"{summary.audio_seconds:.0f} s of audio in {summary.wall_seconds:.1f} s "
                   f"({summary.realtime_factor:.0f}x real time)")
        if summary.index_size is not None:
            state = "rebuilt to match the catalog" if summary.index_rebuilt else "agrees with the catalog"
            typer.echo(f"index: {summary.index_size} songs, {state}")


@app.command("catalog")
def catalog_cmd(
    ctx: typer.Context,
    errors: Annotated[int, typer.Option(help="Show this many recent ingest errors.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Counts, durations, recent ingest runs and their errors."""
    from recsys import catalog

    c = _ctx(ctx)
    if not c.catalog_exists():
        _fail(f"no catalog in {c.settings.workspace}; run `recsys ingest MANIFEST` first")
    with c.sessions()() as s:
        stats = catalog.catalog_stats(s)
        runs = catalog.recent_runs(s, limit=5)
        recent_errors = catalog.recent_errors(s, limit=errors)
        data = {
            "workspace": str(c.settings.workspace),
            "database": _redact(c.settings.database_url),
            "stats": stats.__dict__,
            "runs": [
                {"id": r.id, "source": r.source, "status": r.status, "started": r.started_at,
                 "finished": r.finished_at, "counts": r.counts}
                for r in runs
            ],
            "errors": [{"run": e.run_id, "path": e.path, "cause": e.cause, "message": e.message}
                       for e in recent_errors],
        }
    if as_json:
        _print_json(data)
        return
    st = stats
    typer.echo(f"catalog {data['database']}")
    typer.echo(f"  singers: {st.n_singers}   songs: {st.n_songs}   audio: {st.total_duration_s / 60:.1f} min")
    typer.echo(f"  songs by status: {dict(st.songs_by_status)}")
    typer.echo(f"  ingest runs: {st.n_runs}   errors: {st.n_errors} {dict(st.errors_by_cause)}")
    for r in data["runs"]:
        typer.echo(f"  run {r['id']} [{r['status']}] {r['source']}: {r['counts']}")
    for e in data["errors"]:
        typer.echo(f"  error ({e['cause']}): {e['message']}")


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _recommender(c: Context):
    from recsys.api import Recommender

    return Recommender(c.settings)


def _parse_weights(text: str | None, c: Context):
    from recsys.embedding import Weights

    if text is None:
        return Weights(c.settings.fusion.w_timbre, c.settings.fusion.w_melody)
    try:
        return Weights.parse(text)
    except ValueError as e:
        _fail(str(e), 2)


def _print_epoch(row: dict) -> None:
    if "epoch" in row:
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
        typer.echo("  " + " ".join(parts), err=True)


train_app = typer.Typer(help="Train the encoders on the workspace's catalog.", no_args_is_help=False)
app.add_typer(train_app, name="train")


@train_app.callback(invoke_without_command=True)
def train(ctx: typer.Context) -> None:
    """Train both encoders in turn (timbre, then melody); `train timbre` / `train melody` train one."""
    if ctx.invoked_subcommand is None:
        _train(ctx, "both")


@train_app.command("timbre")
def train_timbre_cmd(ctx: typer.Context) -> None:
    """Train the contrastive timbre/style encoder with the configured pair policy."""
    _train(ctx, "timbre")


@train_app.command("melody")
def train_melody_cmd(ctx: typer.Context) -> None:
    """Train the TCAE melody autoencoder."""
    _train(ctx, "melody")


def _train(ctx: typer.Context, which: str) -> None:
    from recsys.progress import progress_bar

    c = _ctx(ctx)
    rec = _recommender(c)
    with progress_bar("loading catalog audio") as advance:
        songs = rec.training_songs(progress=lambda done, total: advance(done=done))
    typer.echo(f"training {which} on {len(songs)} songs ({c.settings.workspace})")
    try:
        results = rec.train(which, songs=songs, progress=sys.stderr.isatty(), log=_print_epoch)
    except ValueError as e:
        _fail(str(e))
    for kind, result in results.items():
        typer.echo(f"{kind}: model version {result.version.version} (best epoch {result.best_epoch}, "
                   f"{len(result.history)} epochs{', stopped early' if result.stopped_early else ''})")


@app.command("embed")
def embed_cmd(
    ctx: typer.Context,
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Manifest or audio files to embed WITHOUT adding "
                                                            "them to the catalog (needs --out).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write path, song_id, timbre, melody, fused to this .npz.")] = None,
) -> None:
    """Store every catalog song's vectors (skipping what is there), or embed files into an .npz."""
    from recsys.progress import progress_bar

    c = _ctx(ctx)
    rec = _recommender(c)
    if not sources:
        errors: list[str] = []
        with progress_bar("embedding catalog") as advance:
            added = rec.embed_catalog(progress=lambda done, total: advance(done=done),
                                      on_error=lambda sid, path, e: errors.append(str(e)))
        typer.echo(f"embedded {added} songs under model version {rec.model_version}")
        for e in errors:
            typer.echo(f"  failed: {e}")
        index = rec.rebuild_index()
        typer.echo(f"index: {len(index)} songs ({index.kind}) in {rec.index_dir}")
        return
    if out is None:
        _fail("embedding files outside the catalog needs --out FILE.npz", 2)
    from recsys.api import save_npz
    from recsys.manifest import ManifestEntry, iter_manifest

    files: list[Path] = []
    for src in sources:
        files.extend(item.path for item in iter_manifest(src) if isinstance(item, ManifestEntry))
    paths, vectors, failed = rec.embed_files(files)
    save_npz(out, paths, [None] * len(paths), vectors, rec.default_weights())
    typer.echo(f"wrote {len(paths)} rows to {out}")
    for path, message in failed:
        typer.echo(f"  failed: {message}", err=True)
    if failed and not paths:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Destination .npz file.")],
) -> None:
    """Write every catalog song's vectors (path, song_id, timbre, melody, fused) to an .npz."""
    from recsys.api import save_npz

    rec = _recommender(_ctx(ctx))
    ids, vectors = rec.catalog_vectors()
    meta = {row["id"]: row for row in rec.songs()}
    save_npz(out, [meta[int(i)]["path"] for i in ids], [int(i) for i in ids], vectors, rec.default_weights())
    typer.echo(f"wrote {len(ids)} songs to {out}")


index_app = typer.Typer(help="The FAISS index (a cache derived from the catalog).", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("rebuild")
def index_rebuild(ctx: typer.Context) -> None:
    """Rebuild the song index from the catalog's vectors."""
    rec = _recommender(_ctx(ctx))
    index = rec.rebuild_index()
    typer.echo(f"rebuilt index: {len(index)} songs, {index.kind}, in {rec.index_dir}")


@index_app.command("check")
def index_check(ctx: typer.Context) -> None:
    """Load the index, rebuilding it if it is missing, stale or corrupt."""
    rec = _recommender(_ctx(ctx))
    index, rebuilt = rec.load_index()
    typer.echo(f"index {'rebuilt' if rebuilt else 'ok'}: {len(index)} songs, {index.kind}, in {rec.index_dir}")


def _print_result(result, as_json: bool) -> None:
    if as_json:
        _print_json(result.as_dict())
        return
    w = result.weights
    typer.echo(f"query: {result.query}  (weights timbre={w.timbre:g}, melody={w.melody:g})")
    if result.singers:
        typer.echo("singers:")
        for rank, h in enumerate(result.singers, 1):
            typer.echo(f"  {rank:2d}. {h.singer:<24} score {h.score:.3f}  (timbre {h.timbre:.3f}, "
                       f"melody {h.melody:.3f}; {h.n_songs} songs)")
    if result.songs:
        typer.echo("songs:")
        for rank, h in enumerate(result.songs, 1):
            typer.echo(f"  {rank:2d}. {h.title or h.song_id} by {h.singer:<20} score {h.score:.3f}  "
                       f"(timbre {h.timbre:.3f}, melody {h.melody:.3f})")


@app.command("similar-singers")
def similar_singers(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A singer in the catalog.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many singers.")] = 10,
    weights: Annotated[Optional[str], typer.Option(help="e.g. timbre=0.7,melody=0.3")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Singers who sound most like NAME, with the timbre/melody split of each score."""
    from recsys.api import SearchResult

    c = _ctx(ctx)
    rec = _recommender(c)
    w = _parse_weights(weights, c)
    try:
        hits = rec.similar_singers(name, k, w)
    except KeyError as e:
        _fail(e.args[0])
    _print_result(SearchResult(f"singer:{name}", w, hits, []), as_json)


@app.command("search")
def search_cmd(
    ctx: typer.Context,
    audio: Annotated[Path, typer.Argument(help="An audio file (wav, flac, ogg, mp3), in the catalog or not.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many results.")] = 10,
    by: Annotated[str, typer.Option(help="singer, song or both.")] = "both",
    weights: Annotated[Optional[str], typer.Option(help="e.g. timbre=0.7,melody=0.3")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Query by song: who sings like this recording, and which songs are closest."""
    from recsys.audio import AudioError

    c = _ctx(ctx)
    if by not in ("singer", "song", "both"):
        _fail(f"--by must be singer, song or both, not {by!r}", 2)
    rec = _recommender(c)
    try:
        result = rec.search(audio, k, _parse_weights(weights, c), by)  # type: ignore[arg-type]
    except AudioError as e:
        _fail(str(e))
    _print_result(result, as_json)


@app.command()
def demo(
    ctx: typer.Context,
    seconds: Annotated[Optional[float], typer.Option(help="Override the demo songs' length.")] = None,
    singers: Annotated[Optional[int], typer.Option(help="Override the number of demo singers.")] = None,
    songs: Annotated[Optional[int], typer.Option(help="Override songs per singer.")] = None,
    timbre_epochs: Annotated[Optional[int], typer.Option(
        min=1, help="Cap the timbre encoder's epochs (default: the configured schedule, early stopping included; "
                    "about 1.6 min on 2 idle cores).")] = None,
    melody_epochs: Annotated[Optional[int], typer.Option(
        min=1, help="Cap the TCAE's epochs (default: the configured schedule; about 3.6 min on 2 idle cores).")] = None,
) -> None:
    """Run the whole product on the built-in demo catalog: generate, ingest, train, embed, recommend."""
    c = _ctx(ctx)
    # The demo trains as configured (docs/benchmarks.md: minutes on 2 idle cores); the caps are for
    # shared machines, where torch's threads slow training down many times.
    s = c.settings
    c.settings = s.model_copy(update={
        "timbre": s.timbre.model_copy(update={"epochs": min(s.timbre.epochs, timbre_epochs or s.timbre.epochs)}),
        "melody": s.melody.model_copy(update={"epochs": min(s.melody.epochs, melody_epochs or s.melody.epochs)}),
    })
    spec = c.settings.datasets.get("demo")
    gen = dict(spec.generator) if spec else {}
    n_singers = singers or int(gen.get("n_singers", 24))
    n_songs = songs or int(gen.get("songs_per_singer", 8))
    song_s = seconds or float(gen.get("song_seconds", 30.0))
    seed = int(gen.get("seed", 0))
    out = c.settings.workspace / "demo-corpus"
    typer.echo(f"[1/5] demo catalog: {n_singers} singers x {n_songs} songs x {song_s:.0f} s -> {out}")
    manifest = _generate_corpus(out, n_singers, n_songs, song_s, seed, False, None, c.settings.audio.sample_rate)
    typer.echo(f"[2/5] ingest {manifest}")
    summary = _run_ingest(c, manifest, None, False)
    _print_ingest_summary(summary)
    rec = _recommender(c)
    st = rec.stats()
    typer.echo(f"catalog: {st.n_singers} singers, {st.n_songs} songs, {st.total_duration_s / 60:.1f} min of audio")
    typer.echo("[3/5] train the timbre encoder and the TCAE melody encoder")
    _train(ctx, "both")
    typer.echo("[4/5] embed the catalog and build the index")
    embed_cmd(ctx, None, None)
    typer.echo("[5/5] recommendations")
    rec = _recommender(c)
    weights = rec.default_weights()
    from recsys.api import SearchResult

    for name in sorted(rec.searcher.singers)[:3]:
        _print_result(SearchResult(f"singer:{name}", weights, rec.similar_singers(name, 5, weights), []), False)
    query = sorted(out.glob("*/*.wav"))[0]
    _print_result(rec.search(query, 5, weights), False)
    # Fit the explorer's default maps now, so that its first page load does not wait for UMAP.
    for what in ("singers", "songs"):
        rec.catalog_map(what, "fused")
    typer.echo(f"\nexplore: recsys --workspace {c.settings.workspace} app")


def _stage_progress(stage: str, done: int, total: int) -> None:
    if done == total:
        typer.echo(f"  {stage}: {total} done", err=True)


def _print_kind_epoch(kind: str, row: dict) -> None:
    if "epoch" in row:
        typer.echo(f"  [{kind}]", err=True, nl=False)
        _print_epoch(row)


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    manifest: Annotated[Path, typer.Argument(help="Labelled catalog: a manifest CSV with a `singer` column "
                                             "(and optionally `melody_id`), or a <singer>/<song> folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    out_workspace: Annotated[Optional[Path], typer.Option(
        help="Where the evaluation's models go (default: <workspace>/evaluation); models trained there on the "
             "same songs and settings are reused.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the untrained encoders.")] = 0,
    baselines: Annotated[str, typer.Option(help="Comma-separated baselines, or 'none'.")] =
        "mfcc_stats,resemblyzer,chroma_stats_keyinv",
    retrain: Annotated[bool, typer.Option(help="Train even when matching models exist.")] = False,
) -> None:
    """Train on a split by song, then score timbre / melody / fused vectors and baselines on held-out songs."""
    from recsys.evaluate import evaluate, format_report

    c = _ctx(ctx)
    names = [] if baselines.strip() == "none" else [b.strip() for b in baselines.split(",") if b.strip()]
    workspace = out_workspace or c.settings.workspace / "evaluation"
    typer.echo(f"evaluating {manifest} (models in {workspace})", err=True)
    try:
        report = evaluate(manifest, c.settings, workspace, test_fraction=test_fraction, seed=seed,
                          baselines=names, retrain=retrain, progress=_stage_progress, log=_print_kind_epoch)
    except (ValueError, ImportError) as e:
        _fail(str(e))
    if as_json:
        _print_json(report.as_dict())
    else:
        typer.echo(format_report(report))


experiment_app = typer.Typer(help="Training studies on the workspace's catalog, on a held-out split by song.",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _study_songs(c: Context, need_waves: bool):
    from recsys.evaluate import catalog_songs

    if not c.catalog_exists():
        _fail(f"no catalog in {c.settings.workspace}; run `recsys ingest MANIFEST` first")
    rec = _recommender(c)
    rows = rec.songs()
    if not rows:
        _fail(f"the catalog in {c.settings.workspace} has no songs; run `recsys ingest MANIFEST` first")
    typer.echo(f"loading {len(rows)} catalog songs", err=True)
    return catalog_songs(rows, c.settings.audio, c.settings.features, need_waves=need_waves,
                         separator=rec.separator, separation=rec.separation.method)


@experiment_app.command("pair-policies")
def pair_policies_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    policy: Annotated[Optional[list[str]], typer.Option(help="A pair policy to train (repeatable; default all).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override timbre.epochs.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Train one timbre encoder per pair policy on the training songs; score held-out retrieval and robustness."""
    from recsys.evaluate import pair_policy_study
    from recsys.evaluation import format_table

    c = _ctx(ctx)
    settings = c.settings
    if epochs is not None:
        settings = settings.model_copy(update={"timbre": settings.timbre.model_copy(update={"epochs": epochs})})
    songs, _ = _study_songs(c, need_waves=False)
    try:
        rows = pair_policy_study(songs, settings, settings.workspace, policies=policy, test_fraction=test_fraction,
                                 seed=seed, log=_print_epoch)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        _print_json(rows)
        return
    typer.echo(format_table(rows, [
        ("policy", "policy"), ("final_loss", "final loss"), ("epochs", "epochs"), ("p_at_1", "P@1"),
        ("map", "mAP"), ("p_at_1_ps+2", "P@1 ps+2"), ("p_at_1_ps-2", "P@1 ps-2"), ("p_at_1_ts1.1", "P@1 ts1.1"),
        ("p_at_1_ts0.9", "P@1 ts0.9"), ("p_at_1_robust", "P@1 robust"),
    ]))


@experiment_app.command("melody-variants")
def melody_variants_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    variant: Annotated[Optional[list[str]], typer.Option(
        help="A TCAE variant: mel, pitch, mel+pitch, pitch-ki, mel+pitch-ki (repeatable; default mel, pitch-ki).")]
        = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override melody.epochs.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Train TCAE variants on the training songs; melody P@1 on the catalog and on transposed held-out songs."""
    from recsys.evaluate import melody_variant_study
    from recsys.evaluation import format_table

    c = _ctx(ctx)
    settings = c.settings
    if epochs is not None:
        settings = settings.model_copy(update={"melody": settings.melody.model_copy(update={"epochs": epochs})})
    songs, waves = _study_songs(c, need_waves=True)
    try:
        rows = melody_variant_study(songs, waves, settings, settings.workspace / "experiments" / "melody-variants",
                                    variants=variant or ("mel", "pitch-ki"), test_fraction=test_fraction, seed=seed,
                                    log=lambda name, row: _print_kind_epoch(name, row))
    except ValueError as e:
        _fail(str(e))
    if as_json:
        _print_json(rows)
        return
    typer.echo(format_table(rows, [
        ("name", "variant"), ("p_at_1", "P@1"), ("p_at_1_+2", "P@1 +2"), ("p_at_1_-2", "P@1 -2"),
        ("p_at_1_transposed", "P@1 +-2"), ("valid_loss", "valid"), ("epochs", "epochs"), ("train_s", "train s"),
        ("embed_ms", "ms/song"), ("embed_3min_ms", "ms/3 min"),
    ], float_digits=3))


probe_app = typer.Typer(help="Voice attribute probes: predict metadata (gender, register, language...) from timbre.",
                        no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@probe_app.command("train")
def probe_train_cmd(
    ctx: typer.Context,
    attribute: Annotated[str, typer.Argument(help="A categorical metadata column, e.g. gender or register.")],
    test_fraction: Annotated[float, typer.Option(help="Singers (or songs) held out per class.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    c: Annotated[float, typer.Option("--c", min=0.0, help="Inverse L2 regularisation of the classifier.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the probe's metrics as JSON.")] = False,
) -> None:
    """Fit a probe for ATTRIBUTE on the timbre vectors; report held-out accuracy and macro-F1 vs majority class."""
    from recsys.probes import train_attribute_probe

    rec = _recommender(_ctx(ctx))
    try:
        probe, path = train_attribute_probe(rec, attribute, test_fraction=test_fraction, seed=seed, c=c)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    m = probe.metrics
    if as_json:
        _print_json(probe.to_dict() | {"path": str(path), "coef": None, "intercept": None})
        return
    typer.echo(f"probe {attribute!r} (version {probe.version}) for timbre model {probe.timbre_version}: {path}")
    typer.echo(f"  classes: {m['class_counts']}" + (f"  (too rare, left out: {m['dropped_classes']})"
                                                     if m["dropped_classes"] else ""))
    typer.echo(f"  held out by {m['split']}: {m['n_test']} songs (trained on {m['n_train']})")
    typer.echo(f"  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}   majority class "
               f"{m['baseline_class']!r}: accuracy {m['baseline_accuracy']:.3f}  macro-F1 {m['baseline_macro_f1']:.3f}")


@probe_app.command("predict")
def probe_predict_cmd(
    ctx: typer.Context,
    attribute: Annotated[str, typer.Argument(help="An attribute with a trained probe (`recsys probe list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Predict ATTRIBUTE for songs without it (given labels are never changed), and per singer."""
    from recsys.probes import predict_attribute

    rec = _recommender(_ctx(ctx))
    try:
        summary = predict_attribute(rec, attribute)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        _print_json(summary.as_dict())
        return
    typer.echo(f"{attribute}: predicted {summary.n_predicted} songs, kept {summary.n_given} given labels, "
               f"{summary.n_not_embedded} songs not embedded (probe {summary.probe_version})")
    for name, p in summary.singers.items():
        typer.echo(f"  {name:<24} {p['value']:<12} confidence {p['confidence']:.2f} ({p['n_songs']} songs)")


@probe_app.command("list")
def probe_list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The stored probes; those of the current timbre model are marked with *."""
    from recsys.probes import list_probes
    from recsys.training.checkpoint import latest_version

    c = _ctx(ctx)
    try:
        probes = list_probes(c.settings.workspace)
    except ValueError as e:
        _fail(str(e))
    current = latest_version(c.settings.workspace, "timbre")
    rows = [{"attribute": p.attribute, "timbre_version": p.timbre_version, "version": p.version,
             "current": current is not None and p.timbre_version == current.version, "classes": p.classes,
             **{k: p.metrics.get(k) for k in ("accuracy", "macro_f1", "baseline_accuracy", "split", "n_labelled")}}
            for p in probes]
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo(f"no probes in {c.settings.workspace}; train one with `recsys probe train ATTRIBUTE`")
    for r in rows:
        typer.echo(f"{'*' if r['current'] else ' '} {r['attribute']:<14} timbre {r['timbre_version']}  "
                   f"classes {', '.join(r['classes'])}  accuracy {r['accuracy']:.3f} (majority "
                   f"{r['baseline_accuracy']:.3f}), macro-F1 {r['macro_f1']:.3f}, held out by {r['split']}")


@app.command("reembed")
def reembed_cmd(
    ctx: typer.Context,
    timbre: Annotated[Optional[str], typer.Option(help="Timbre model version (default: the newest published).")] = None,
    melody: Annotated[Optional[str], typer.Option(help="Melody model version (default: the newest published).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: all cores).")] = None,
    runner: Annotated[str, typer.Option(help="Where the job runs: local (processes) or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --runner ray.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Songs per committed batch.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Embed the catalog with new model versions while the current index keeps answering, then switch to them.

    Resumable: killed midway, running it again continues; serving changes only at the end."""
    from pipelines.ingest import MissingModelsError, format_report
    from pipelines.reembed import reembed
    from pipelines.runners import make_runner

    c = _ctx(ctx)
    try:
        job_runner = make_runner(runner, workers=workers, address=address)
    except ValueError as e:
        _fail(str(e), 2)
    try:
        summary = reembed(c.settings, timbre_version=timbre, melody_version=melody, runner=job_runner,
                          batch_size=batch_size, on_batch=lambda report: typer.echo(format_report(report), err=True))
    except (FileNotFoundError, MissingModelsError) as e:
        _fail(str(e))
    except ValueError as e:
        _fail(str(e), 2)
    finally:
        job_runner.close()
    if as_json:
        _print_json(summary.as_dict())
        return
    typer.echo(f"embedded {summary.embedded} songs under {summary.new_version} "
               f"({summary.already} had vectors already), failed {summary.n_failed}")
    for f in summary.failures[:20]:
        typer.echo(f"  - {f.message}")
    if summary.switched:
        typer.echo(f"index: {summary.index_size} songs; serving switched from {summary.old_version} "
                   f"to {summary.new_version}")
    else:
        typer.echo(f"index: {summary.index_size} songs; {summary.new_version} was already serving")


@app.command("app")
def app_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve the explorer on.")] = 8501,
) -> None:
    """Open the similarity explorer (Streamlit): the catalog map, similar singers, query by song."""
    import importlib.util
    import os
    import subprocess

    from recsys.config import PROJECT_ROOT

    if importlib.util.find_spec("streamlit") is None:
        _fail("the explorer needs streamlit: pip install 'streamlit>=1.38'")
    c = _ctx(ctx)
    script = PROJECT_ROOT / "app" / "explorer.py"
    env = dict(os.environ, RECSYS_DEVICE=c.settings.device)
    if c.settings.db_url:
        env["RECSYS_DB_URL"] = c.settings.db_url  # through the environment: no password on the command line
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--", "--workspace", str(c.settings.workspace)]
    for flag, path in (("--config", c.config_file), ("--manifest", c.manifest_file)):
        if path is not None:
            cmd += [flag, str(Path(path).resolve())]
    typer.echo(f"explorer for {c.settings.workspace} on http://localhost:{port} (Ctrl-C to stop)", err=True)
    raise typer.Exit(subprocess.call(cmd, env=env))


def main() -> None:
    app(prog_name="recsys")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
