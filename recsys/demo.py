"""The demo: the whole product on the built-in synthetic catalog, as one library call.

generate -> ingest -> train (which embeds the catalog and switches to the new models) -> recommend
-> fit the explorer's maps. The caller sees each step through `show` (a header line, then the
step's result object) and decides how to print it; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.results import SearchResult, TrainingReport

if TYPE_CHECKING:
    from recsys.config import Settings

Show = Callable[[object], None]  # a header line (str) or a result with as_text()/as_dict()
StageProgress = Callable[[str, int, int], None]  # (stage, done, total)
EpochLog = Callable[[dict[str, Any]], None]

N_SINGER_QUERIES = 3  # singers whose neighbours the demo shows
K = 5  # neighbours shown per query


def _quiet(*_: object) -> None:
    return None


@dataclass(frozen=True)
class DemoPlan:
    """The size of the demo catalog (same plan, same files: the generator is deterministic)."""

    singers: int = 24
    songs: int = 8  # per singer
    seconds: float = 30.0  # per song
    seed: int = 0


def demo_plan(settings: Settings, singers: int | None = None, songs: int | None = None,
              seconds: float | None = None) -> DemoPlan:
    """The given sizes, else those of the manifest's `demo` dataset generator, else the defaults."""
    spec = settings.datasets.get("demo")
    gen = dict(spec.generator) if spec else {}
    default = DemoPlan()
    return DemoPlan(
        singers=singers or int(gen.get("n_singers", default.singers)),
        songs=songs or int(gen.get("songs_per_singer", default.songs)),
        seconds=seconds or float(gen.get("song_seconds", default.seconds)),
        seed=int(gen.get("seed", default.seed)),
    )


def capped_training(settings: Settings, timbre_epochs: int | None = None,
                    melody_epochs: int | None = None) -> Settings:
    """`settings` training at most the given epochs: the configured schedule is for idle machines."""
    t, m = settings.timbre, settings.melody
    return settings.model_copy(update={
        "timbre": t.model_copy(update={"epochs": min(t.epochs, timbre_epochs or t.epochs)}),
        "melody": m.model_copy(update={"epochs": min(m.epochs, melody_epochs or m.epochs)}),
    })


@dataclass
class DemoResult:
    """What the demo made and found."""

    workspace: Path
    manifest: Path
    ingest: Any  # recsys.ingest.IngestSummary
    training: TrainingReport  # the models, and the catalog embedded under them
    similar: list[SearchResult] = field(default_factory=list)  # neighbours of the first singers
    query: SearchResult | None = None  # one demo song as a query

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "manifest": str(self.manifest),
            "ingest": self.ingest.as_dict(),
            "training": self.training.as_dict(),
            "similar": [r.as_dict() for r in self.similar],
            "query": self.query.as_dict() if self.query is not None else None,
        }


def run_demo(settings: Settings, plan: DemoPlan, show: Show = _quiet, progress: StageProgress | None = None,
             log: EpochLog | None = None) -> DemoResult:
    """Generate the demo catalog in <workspace>/demo-corpus, then ingest, train, recommend."""
    from recsys.api import Recommender
    from recsys.corpus import generate_corpus
    from recsys.workspace import Workspace

    step = progress or _quiet
    ws = Workspace(settings)
    out = ws.root / "demo-corpus"
    show(f"[1/4] demo catalog: {plan.singers} singers x {plan.songs} songs x {plan.seconds:.0f} s -> {out}")
    manifest = generate_corpus(out, n_singers=plan.singers, songs_per_singer=plan.songs, song_seconds=plan.seconds,
                               seed=plan.seed, sample_rate=settings.audio.sample_rate,
                               progress=lambda done, total: step("generating demo catalog", done, total))
    show(f"[2/4] ingest {manifest}")
    rec = Recommender(ws)
    summary = rec.ingest(manifest)
    show(summary)
    st = rec.stats()
    show(f"catalog: {st.n_singers} singers, {st.n_songs} songs, {st.total_duration_s / 60:.1f} min of audio")

    show("[3/4] train the timbre encoder and the TCAE melody encoder, then embed the catalog")
    songs = rec.training_songs(progress=lambda done, total: step("loading catalog audio", done, total))
    show(f"training both on {len(songs)} songs ({ws.root})")
    training = TrainingReport.of(rec.train("both", songs=songs, log=log))
    show(training)

    show("[4/4] recommendations")
    weights = rec.weights_for("singer")  # who sounds like this singer, and who sings like this recording
    names = sorted({s["singer"] for s in rec.songs() if s["singer"]})[:N_SINGER_QUERIES]
    similar = [SearchResult(f"singer:{name}", weights, rec.similar_singers(name, K, weights), []) for name in names]
    for result in similar:
        show(result)
    query = rec.search(min(out.glob("*/*.wav")), K, weights, by="singer")
    show(query)
    for what in ("singers", "songs"):  # fitted now, so the explorer's first page does not wait for UMAP
        rec.catalog_map(what, "fused")
    show(f"\nexplore: recsys --workspace {ws.root} app")
    return DemoResult(ws.root, manifest, summary, training, similar, query)
