"""Commands that make or use models: train, embed, reembed, probe."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys.cli.output import Lines, bar, emit, note, print_epoch
from recsys.cli.root import MapsWhen, app, computing, job_runner, maps_after_job, require_catalog, state
from recsys.errors import InvalidOptionError
from recsys.results import FilesWritten, TrainingReport

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
    """Train the melody TCAE (the pitch-equivariant model by default; melody.model)."""
    _train(ctx, "melody")


def _train(ctx: typer.Context, which: str) -> None:
    c = computing(ctx)
    require_catalog(c)
    rec = c.recommender()
    with bar("loading catalog audio") as advance:
        songs = rec.training_songs(progress=lambda done, total: advance(done=done))
    typer.echo(f"training {which} on {len(songs)} songs ({c.root})")
    results = rec.train(which, songs=songs, progress=sys.stderr.isatty(), log=print_epoch)
    emit(TrainingReport.of(results))


@app.command("embed")
def embed_cmd(
    ctx: typer.Context,
    sources: Annotated[list[Path] | None, typer.Argument(help="Manifest or audio files to embed WITHOUT adding "
                                                            "them to the catalog (needs --out).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write path, song_id, timbre, melody, fused to this .npz.")] = None,
) -> None:
    """Store every catalog song's vectors under the newest models (skipping what is there), build their index
    and serve them; or embed files into an .npz."""
    c = computing(ctx)
    if not sources:
        require_catalog(c)
        emit(c.recommender().embed_catalog(on_batch=lambda report: note(report.as_text())))
        return
    if out is None:
        raise InvalidOptionError("embedding files outside the catalog needs --out FILE.npz")
    from recsys.manifest import ManifestEntry, iter_manifest

    files = [item.path for src in sources for item in iter_manifest(src) if isinstance(item, ManifestEntry)]
    from recsys.api import save_npz

    rec = c.recommender()
    paths, vectors, failed = rec.embed_files(files)
    save_npz(out, paths, [None] * len(paths), vectors, rec.default_weights())
    emit(FilesWritten(out, len(paths)))
    for _path, message in failed:
        note(f"  failed: {message}")
    if failed and not paths:
        raise typer.Exit(1)


@app.command("reembed")
def reembed_cmd(
    ctx: typer.Context,
    timbre: Annotated[str | None, typer.Option(help="Timbre model version (default: the newest published).")] = None,
    melody: Annotated[str | None, typer.Option(help="Melody model version (default: the newest published).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")] = None,
    runner: Annotated[str, typer.Option(help="Where the job runs: local (processes) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address for --runner ray.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Songs per committed batch.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    maps: Annotated[MapsWhen, typer.Option(
        envvar="RECSYS_JOB_MAPS", case_sensitive=False,
        help="The new models' first-page explorer maps: fitted in a detached process (background), "
             "before returning (wait), or not at all (skip).")] = MapsWhen.background,
) -> None:
    """Embed the catalog with new model versions while the current index keeps answering, then switch to them.

    Resumable: killed midway, running it again continues; serving changes only at the end."""
    from pipelines.reembed import reembed

    c = computing(ctx)
    require_catalog(c)
    with job_runner(runner, workers, address) as jobs:
        summary = reembed(c.workspace, timbre_version=timbre, melody_version=melody, runner=jobs,
                          batch_size=batch_size, on_batch=lambda report: note(report.as_text()),
                          fit_maps=maps is MapsWhen.wait)
    emit(summary, as_json)
    if maps is MapsWhen.background and (summary.switched or summary.embedded):
        maps_after_job(c)


@app.command("maps")
def maps_cmd(ctx: typer.Context) -> None:
    """Fit and save the explorer's first-page maps of the serving models (ingest --embed and reembed start
    this in the background when they change the vectors)."""
    from recsys.projection import FIRST_PAGE_MAPS, fit_default_maps

    c = state(ctx)
    require_catalog(c)
    for fitted, (what, weighting) in zip(fit_default_maps(c.recommender()), FIRST_PAGE_MAPS, strict=True):
        typer.echo(f"map of {what} ({weighting}): {fitted.status}, {len(fitted.keys)} points")


probe_app = typer.Typer(help="Voice attribute probes: predict metadata (gender, register, language...) from timbre.",
                        no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@dataclass(frozen=True)
class ProbeTrained:
    """A probe fitted and saved, with its held-out scores."""

    probe: Any  # recsys.probes.Probe
    path: Path

    def as_dict(self) -> dict[str, Any]:
        return self.probe.to_dict() | {"path": str(self.path), "coef": None, "intercept": None}

    def as_text(self) -> str:
        p, m = self.probe, self.probe.metrics
        dropped = f"  (too rare, left out: {m['dropped_classes']})" if m["dropped_classes"] else ""
        return "\n".join([
            f"probe {p.attribute!r} (version {p.version}) for timbre model {p.timbre_version}: {self.path}",
            f"  classes: {m['class_counts']}{dropped}",
            f"  held out by {m['split']}: {m['n_test']} songs (trained on {m['n_train']})",
            (f"  accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}   majority class "
             f"{m['baseline_class']!r}: accuracy {m['baseline_accuracy']:.3f}  macro-F1 {m['baseline_macro_f1']:.3f}"),
        ])


@probe_app.command("train")
def probe_train_cmd(
    ctx: typer.Context,
    attribute: Annotated[str, typer.Argument(help="A categorical metadata column, e.g. gender or register.")],
    test_fraction: Annotated[float, typer.Option(help="Singers (or songs) held out per class.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    reg: Annotated[float, typer.Option("--c", min=0.0, help="Inverse L2 regularisation of the classifier.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the probe's metrics as JSON.")] = False,
) -> None:
    """Fit a probe for ATTRIBUTE on the timbre vectors; report held-out accuracy and macro-F1 vs majority class."""
    from recsys.probes import train_attribute_probe

    c = state(ctx)
    require_catalog(c)
    probe, path = train_attribute_probe(c.recommender(), attribute, test_fraction=test_fraction, seed=seed, c=reg)
    emit(ProbeTrained(probe, path), as_json)


@probe_app.command("predict")
def probe_predict_cmd(
    ctx: typer.Context,
    attribute: Annotated[str, typer.Argument(help="An attribute with a trained probe (`recsys probe list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Predict ATTRIBUTE for songs without it (given labels are never changed), and per singer."""
    from recsys.probes import predict_attribute

    c = state(ctx)
    require_catalog(c)
    emit(predict_attribute(c.recommender(), attribute), as_json)


@probe_app.command("list")
def probe_list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The stored probes; those of the current timbre model are marked with *."""
    from recsys.probes import list_probes
    from recsys.registry import current_pair

    c = state(ctx)
    pair = current_pair(c.root)
    rows = [{"attribute": p.attribute, "timbre_version": p.timbre_version, "version": p.version,
             "current": pair is not None and p.timbre_version == pair.timbre, "classes": p.classes,
             **{k: p.metrics.get(k) for k in ("accuracy", "macro_f1", "baseline_accuracy", "split", "n_labelled")}}
            for p in list_probes(c.root)]
    text = [f"{'*' if r['current'] else ' '} {r['attribute']:<14} timbre {r['timbre_version']}  "
            f"classes {', '.join(r['classes'])}  accuracy {r['accuracy']:.3f} (majority "
            f"{r['baseline_accuracy']:.3f}), macro-F1 {r['macro_f1']:.3f}, held out by {r['split']}" for r in rows]
    emit(Lines(text or [f"no probes in {c.root}; train one with `recsys probe train ATTRIBUTE`"], rows), as_json)
