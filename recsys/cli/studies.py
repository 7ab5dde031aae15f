"""Commands that measure: evaluate, and the training studies of `experiment`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli.output import Table, emit, note, print_epoch, stage_done
from recsys.cli.root import Context, app, computing, require_catalog
from recsys.errors import EmptyCatalogError

if TYPE_CHECKING:
    from recsys.config import Settings

POLICY_COLUMNS = [
    ("policy", "policy"), ("final_loss", "final loss"), ("epochs", "epochs"), ("p_at_1", "P@1"),
    ("map", "mAP"), ("p_at_1_ps+2", "P@1 ps+2"), ("p_at_1_ps-2", "P@1 ps-2"), ("p_at_1_ts1.1", "P@1 ts1.1"),
    ("p_at_1_ts0.9", "P@1 ts0.9"), ("p_at_1_robust", "P@1 robust"),
]
VARIANT_COLUMNS = [
    ("name", "variant"), ("p_at_1", "P@1"), ("p_at_1_+2", "P@1 +2"), ("p_at_1_-2", "P@1 -2"),
    ("p_at_1_transposed", "P@1 +-2"), ("valid_loss", "valid"), ("epochs", "epochs"), ("train_s", "train s"),
    ("embed_ms", "ms/song"), ("embed_3min_ms", "ms/3 min"),
]


def _kind_epoch(kind: str, row: dict[str, Any]) -> None:
    print_epoch(row, kind)


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    manifest: Annotated[Path, typer.Argument(help="Labelled catalog: a manifest CSV with a `singer` column "
                                             "(and optionally `melody_id`), or a <singer>/<song> folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    out_workspace: Annotated[Path | None, typer.Option(
        help="Where the evaluation's models go (default: <workspace>/evaluation); models trained there on the "
             "same songs and settings are reused.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the untrained encoders.")] = 0,
    baselines: Annotated[str, typer.Option(help="Comma-separated baselines, or 'none'.")] =
        "mfcc_stats,resemblyzer,chroma_stats_keyinv",
    retrain: Annotated[bool, typer.Option(help="Train even when matching models exist.")] = False,
) -> None:
    """Train on a split by song, then score timbre / melody / fused vectors and baselines on held-out songs."""
    from recsys.studies.evaluate import evaluate

    c = computing(ctx)
    names = [] if baselines.strip() == "none" else [b.strip() for b in baselines.split(",") if b.strip()]
    workspace = out_workspace or c.root / "evaluation"
    note(f"evaluating {manifest} (models in {workspace})")
    report = evaluate(manifest, c.settings, workspace, test_fraction=test_fraction, seed=seed,
                      baselines=names, retrain=retrain, progress=stage_done, log=_kind_epoch)
    emit(report, as_json)


experiment_app = typer.Typer(help="Training studies on the workspace's catalog, on a held-out split by song.",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _study_songs(c: Context, need_waves: bool) -> Any:
    """The catalog's songs as the studies read them: (songs, waves)."""
    from recsys.studies.catalog import catalog_songs

    require_catalog(c)
    rows = c.recommender().songs()
    if not rows:
        raise EmptyCatalogError(f"the catalog in {c.root} has no songs", "run `recsys ingest MANIFEST` first")
    note(f"loading {len(rows)} catalog songs")
    ws = c.workspace
    return catalog_songs(rows, c.settings.audio, c.settings.features, need_waves=need_waves,
                         separator=ws.separator, separation=ws.separation)


def _with_epochs(settings: Settings, section: str, epochs: int | None) -> Settings:
    """`settings` with `section`.epochs replaced by the --epochs option, when given."""
    if epochs is None:
        return settings
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update={"epochs": epochs})})


@experiment_app.command("pair-policies")
def pair_policies_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    policy: Annotated[list[str] | None, typer.Option(help="A pair policy to train (repeatable; default all).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override timbre.epochs.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Train one timbre encoder per pair policy on the training songs; score held-out retrieval and robustness."""
    from recsys.studies.pair_policies import pair_policy_study

    c = computing(ctx)
    settings = _with_epochs(c.settings, "timbre", epochs)
    songs, _ = _study_songs(c, need_waves=False)
    rows = pair_policy_study(songs, settings, settings.workspace, policies=policy, test_fraction=test_fraction,
                             seed=seed, log=print_epoch)
    emit(Table(rows, POLICY_COLUMNS), as_json)


@experiment_app.command("melody-variants")
def melody_variants_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    variant: Annotated[list[str] | None, typer.Option(
        help="A TCAE variant: equivariant (the default model), or a per-frame TCAE: mel, pitch, mel+pitch, pitch-ki, "
             "mel+pitch-ki (repeatable; default equivariant, pitch-ki).")]
        = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override melody.epochs.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Songs held out per singer.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Train TCAE variants on the training songs; melody P@1 on the catalog and on transposed held-out songs."""
    from recsys.studies.melody_variants import melody_variant_study

    c = computing(ctx)
    settings = _with_epochs(c.settings, "melody", epochs)
    songs, waves = _study_songs(c, need_waves=True)
    rows = melody_variant_study(songs, waves, settings, settings.workspace / "experiments" / "melody-variants",
                                variants=variant or ("equivariant", "pitch-ki"), test_fraction=test_fraction, seed=seed,
                                log=_kind_epoch)
    emit(Table(rows, VARIANT_COLUMNS), as_json)
