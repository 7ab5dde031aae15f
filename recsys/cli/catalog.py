"""Commands about the catalog: demo-corpus, ingest, catalog, export, config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli.errors import option_errors
from recsys.cli.output import bar, emit, note
from recsys.cli.root import (
    Context,
    MapsWhen,
    app,
    computing,
    job_runner,
    maps_after_job,
    require_catalog,
    state,
)
from recsys.results import FilesWritten

if TYPE_CHECKING:
    from pipelines.job import BatchReport


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective configuration (after manifest, config file, environment and flags)."""
    import yaml

    data = state(ctx).settings.model_dump(mode="json")
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
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    produced: Annotated[bool, typer.Option(help="Give every song its own random production chain: EQ, "
                                           "band limit, room reverb, noise at 20-40 dB SNR, level.")] = False,
    common_melodies: Annotated[int, typer.Option(min=0, help="Melodies every singer sings (covers).")] = 0,
    copies: Annotated[bool, typer.Option(help="Also write key-changed (+-2 semitones) and tempo-changed "
                                         "(10 % faster or slower) copies of some songs, linked by copy_of.")] = False,
    voice_models: Annotated[str, typer.Option(help="Comma-separated synthesisers dealt out to the singers: "
                                              "rosenberg_cascade, lf_parallel.")] = "rosenberg_cascade",
) -> None:
    """Generate the deterministic synthetic demo catalog (no downloads); made again only when an option changes."""
    from recsys.corpus import VOICE_MODELS, generate_corpus

    models = tuple(m.strip() for m in voice_models.split(",") if m.strip())
    bad = [m for m in models if m not in VOICE_MODELS]
    if not models or bad:
        raise typer.BadParameter(f"unknown voice model(s) {', '.join(bad) or '(none)'}; valid: "
                                 f"{', '.join(VOICE_MODELS)}", param_hint="--voice-models")
    if common_melodies > songs:
        raise typer.BadParameter(f"{common_melodies} common melodies but only {songs} songs per singer",
                                 param_hint="--common-melodies")
    with bar("generating demo catalog", total=singers * songs) as advance:
        manifest = generate_corpus(out, n_singers=singers, songs_per_singer=songs, song_seconds=seconds, seed=seed,
                                   sample_rate=state(ctx).settings.audio.sample_rate, accompaniment=accompaniment,
                                   workers=workers, progress=lambda done, total: advance(done=done),
                                   common_melodies=common_melodies, produced=produced, copies=copies,
                                   voice_models=models)
    n_copies = 2 * singers if copies and songs > 1 else singers if copies else 0
    extra = f" and {n_copies} key/tempo copies" if n_copies else ""
    typer.echo(f"wrote {singers * songs} songs{extra} by {singers} singers; manifest: {manifest}")


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Manifest CSV (with a `path` column), a <singer>/<song>.<ext> "
                                           "folder, or one audio file.")],
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate the manifest and files without writing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    separate: Annotated[str | None, typer.Option(
        help="Accompaniment suppression: none (a cappella), classical (REPET-SIM) or neural (local weights). "
             "Remembered by the catalog: training, embedding and search then use it too. "
             "Default: separation.method if configured, else the catalog's last choice, else none.")] = None,
    separation_weights: Annotated[Path | None, typer.Option(
        help="Weights file for --separate neural (TorchScript, .pt2, or a state dict with "
             "separation.architecture); never downloaded.")] = None,
    embed: Annotated[bool, typer.Option(help="Also compute vectors with the trained models and update the index "
                                        "(the batch job: resumable, batched, parallel).")] = False,
    runner: Annotated[str, typer.Option(help="Where the job runs: local (processes) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --runner ray "
                                                   "(default: the running Ray, else a new local one).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Files per committed batch.")] = 32,
    maps: Annotated[MapsWhen, typer.Option(
        envvar="RECSYS_JOB_MAPS", case_sensitive=False,
        help="With --embed, the explorer's first-page maps after the job: fitted in a detached process "
             "(background), before returning (wait), or not at all (skip; the explorer fits them on its first "
             "visit).")] = MapsWhen.background,
) -> None:
    """Decode, validate and register a catalog's songs (idempotent: re-running changes nothing).

    One committed batch at a time (pipelines/ingest.py): killed at any moment, a re-run finishes
    the work. With --embed songs are embedded and indexed too; with --embed or --runner ray a
    progress line per batch goes to stderr."""
    from pipelines.ingest import run_ingest

    c = _with_separation(computing(ctx) if embed else state(ctx), separate, separation_weights)
    ws = c.workspace
    if ws.separation.method != "none":
        with option_errors("--separate"):
            _ = ws.separator  # e.g. 'neural' without weights: say so before any file is read
    lines = embed or runner != "local"  # the batch job reports each committed batch; plain ingest draws a bar
    with job_runner(runner, workers, address) as jobs, bar(f"ingesting {source.name}", visible=not lines) as advance:

        def on_batch(report: BatchReport) -> None:
            if lines:
                note(report.as_text())
            else:
                s = report.summary
                advance(done=s.ingested + s.skipped + s.n_failed)

        summary = run_ingest(source, ws, embed=embed, runner=jobs, batch_size=batch_size, dry_run=dry_run,
                             on_batch=on_batch, fit_maps=maps is MapsWhen.wait)
    emit(summary, as_json)
    if maps is MapsWhen.background and embed and summary.embedded and not dry_run:
        maps_after_job(c)
    if summary.ingested == 0 and summary.skipped == 0 and summary.n_failed > 0:
        raise typer.Exit(1)


def _with_separation(c: Context, method: str | None, weights: Path | None) -> Context:
    """The context with --separate / --separation-weights applied to settings.separation."""
    from recsys.config import SeparationConfig

    if method is None and weights is None:
        return c
    update = {k: v for k, v in (("method", method), ("weights", weights)) if v is not None}
    separation = SeparationConfig(**(c.settings.separation.model_dump() | update))
    return c.with_settings(c.settings.model_copy(update={"separation": separation}))


@dataclass(frozen=True)
class CatalogOverview:
    """Counts, durations, recent ingest runs and their errors."""

    workspace: Path
    database: str  # the URL without its password
    stats: Any  # recsys.catalog.CatalogStats
    runs: list[dict[str, Any]]
    errors: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"workspace": str(self.workspace), "database": self.database, "stats": vars(self.stats),
                "runs": self.runs, "errors": self.errors}

    def as_text(self) -> str:
        st = self.stats
        lines = [
            f"catalog {self.database}",
            f"  singers: {st.n_singers}   songs: {st.n_songs}   audio: {st.total_duration_s / 60:.1f} min",
            f"  songs by status: {dict(st.songs_by_status)}",
            f"  ingest runs: {st.n_runs}   errors: {st.n_errors} {dict(st.errors_by_cause)}",
        ]
        lines += [f"  run {r['id']} [{r['status']}] {r['source']}: {r['counts']}" for r in self.runs]
        lines += [f"  error ({e['cause']}): {e['message']}" for e in self.errors]
        return "\n".join(lines)


@app.command("catalog")
def catalog_cmd(
    ctx: typer.Context,
    errors: Annotated[int, typer.Option(help="Show this many recent ingest errors.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Counts, durations, recent ingest runs and their errors."""
    from sqlalchemy.engine import make_url

    from recsys import catalog

    c = state(ctx)
    require_catalog(c)
    with c.workspace.sessions() as s:
        overview = CatalogOverview(
            workspace=c.root,
            database=make_url(c.settings.database_url).render_as_string(hide_password=True),
            stats=catalog.catalog_stats(s),
            runs=[{"id": r.id, "source": r.source, "status": r.status, "started": r.started_at,
                   "finished": r.finished_at, "counts": r.counts} for r in catalog.recent_runs(s, limit=5)],
            errors=[{"run": e.run_id, "path": e.path, "cause": e.cause, "message": e.message}
                    for e in catalog.recent_errors(s, limit=errors)],
        )
    emit(overview, as_json)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Destination .npz file.")],
) -> None:
    """Write every catalog song's vectors (path, song_id, timbre, melody, fused) to an .npz."""
    from recsys.api import save_npz

    c = state(ctx)
    require_catalog(c)
    rec = c.recommender()
    ids, vectors = rec.catalog_vectors()
    meta = {row["id"]: row for row in rec.songs()}
    save_npz(out, [meta[int(i)]["path"] for i in ids], [int(i) for i in ids], vectors, rec.default_weights())
    emit(FilesWritten(out, len(ids), "songs"))
