"""The evaluation run: train on a split by song, score every vector and baseline on the held-out songs.

`evaluate(manifest, settings, workspace)` reads a labelled catalog (a manifest with a
`singer` column and, optionally, a `melody_id` metadata column), holds out songs per
singer (recsys.studies.catalog.split_songs, deterministic), trains the timbre encoder
and the TCAE on the training songs only (or loads models that a previous run trained
on the same songs, with the same settings, on audio cleaned the same way), and
scores, for each system:

* the project's vectors: ``timbre``, ``melody`` and ``fused`` (the 'song' question's calibrated fusion);
* the same architectures with seeded random weights: ``timbre (untrained)``, ...;
* baselines (recsys.baselines): ``mfcc_stats``, ``resemblyzer``, ``chroma_stats_keyinv``.

Every metric is measured with the held-out songs as queries and the training songs
(the catalog the models were trained on) as the gallery; see METRIC_KEYS. The library
returns an EvaluationReport; front ends print it (`format_report`) or its JSON (`as_dict`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.augment import pitch_shift_wave, time_stretch_wave
from recsys.config import Settings
from recsys.embedding import Vectors
from recsys.evaluation import format_table, identification_metrics, retrieval_metrics
from recsys.features import SongFeatures, derived_times, voiced_wave_features
from recsys.fusion import Calibration, Fusion, question_weights, ranking_rows
from recsys.studies.catalog import TEST_FRACTION, LabelledSong, Progress, load_labelled_catalog, split_songs
from recsys.studies.trainers import TRAINERS, ModelInfo, Trainer, train_or_load, untrained_encoders

K = 10  # mAP@K
VOTE_K = 5  # majority vote over the VOTE_K nearest songs
EMBED_BATCH = 16  # songs embedded per call of an encoder
# Query perturbations for robustness, applied to the query's waveform (recsys.augment):
# name -> ("pitch", semitones) or ("stretch", rate); rate 1.1 plays 10 % faster.
PERTURBATIONS: dict[str, tuple[str, float]] = {
    "ps+2": ("pitch", 2.0),
    "ps-2": ("pitch", -2.0),
    "ts1.1": ("stretch", 1.1),
    "ts0.9": ("stretch", 0.9),
}
DEFAULT_BASELINES = ("mfcc_stats", "resemblyzer", "chroma_stats_keyinv")
# Every row has these keys (NaN where a metric is undefined, e.g. no melody ids), plus
# robust_singer_p_at_1_<perturbation> and robust_melody_p_at_1_<perturbation>.
METRIC_KEYS = (
    "singer_p_at_1",  # nearest training song is by the query's singer
    "singer_map_at_10",  # AP@10 against the training songs, relevant = same singer
    "singer_vote_at_5",  # majority singer of the 5 nearest training songs is right
    "id_top1",  # singer identification, centroid classifier on the training songs
    "id_top2",
    "id_top3",
    "id_macro_f1",
    "melody_p_at_1",  # nearest training song has the query's melody_id
    "melody_map_at_10",
    "robust_singer_p_at_1",  # singer P@1 of perturbed queries, mean over PERTURBATIONS
    "robust_melody_p_at_1",  # melody P@1 of perturbed queries, mean over PERTURBATIONS
)
ROW_KEYS = ("system", "kind", "dim")


# --------------------------------------------------------------------------- systems


def perturb(wave: torch.Tensor, name: str, sample_rate: int) -> torch.Tensor:
    """(N,) -> the waveform pitch-shifted or time-stretched as PERTURBATIONS[name] says."""
    try:
        how, amount = PERTURBATIONS[name]
    except KeyError as e:
        raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}") from e
    if how == "pitch":
        return pitch_shift_wave(wave, sample_rate, amount)
    return time_stretch_wave(wave, amount)


@dataclass
class _Query:
    wave: torch.Tensor  # (N,) voiced audio
    features: SongFeatures


# A system: the songs (voiced wave and features) of one batch -> (B, d) vectors.
SystemEmbed = Callable[[Sequence[_Query]], np.ndarray]


def _encoder_system(encoder: Any) -> SystemEmbed:
    """A recsys.encoders SongEncoder as a system: it reads the features."""
    return lambda batch: encoder.embed_songs([q.features for q in batch]).cpu().numpy().astype(np.float32)


def _baseline_system(baseline: Any) -> SystemEmbed:
    """A recsys.baselines WaveEmbedder as a system: it reads the voiced waveform."""
    return lambda batch: baseline.embed_many([q.wave for q in batch])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- metrics


def system_metrics(
    x: np.ndarray,
    queries: dict[str, np.ndarray],
    singers: np.ndarray,
    melodies: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
) -> dict[str, float]:
    """Every METRIC_KEYS value of one system.

    x (n, d) clean vectors of all songs; queries[perturbation] (n_test, d) vectors of
    the perturbed held-out songs, rows in test_idx order; singers (n,); melodies (n,)
    melody ids with None where unknown. Queries are the held-out songs, the gallery
    is the training songs.
    """
    xb, yb = x[train_idx], singers[train_idx]
    xq, yq = x[test_idx], singers[test_idx]
    out: dict[str, float] = {}
    r = retrieval_metrics(xq, xb, yq, yb, k=K, vote_k=VOTE_K)
    out.update(singer_p_at_1=r["p_at_1"], singer_map_at_10=r["map_at_k"], singer_vote_at_5=r["vote_acc"])
    ident = identification_metrics(xb, yb, xq, yq, classifier="centroid", topk=(1, 2, 3))
    out.update(id_top1=ident["top1"], id_top2=ident["top2"], id_top3=ident["top3"], id_macro_f1=ident["macro_f1"])

    # Melody: songs without a melody id get a label of their own, so they are never relevant.
    labels = np.array([m if m is not None else f"\0unknown-{i}" for i, m in enumerate(melodies)], dtype=object)
    known = np.array([m is not None for m in melodies[test_idx]], dtype=bool)

    def melody(xq_: np.ndarray) -> dict[str, Any]:
        if not known.any():
            return {"p_at_1": math.nan, "map_at_k": math.nan}
        return retrieval_metrics(xq_[known], xb, labels[test_idx][known], labels[train_idx], k=K, vote_k=VOTE_K)

    m = melody(xq)
    out.update(melody_p_at_1=m["p_at_1"], melody_map_at_10=m["map_at_k"])
    for name, xp in queries.items():
        out[f"robust_singer_p_at_1_{name}"] = retrieval_metrics(xp, xb, yq, yb, k=K, vote_k=VOTE_K)["p_at_1"]
        out[f"robust_melody_p_at_1_{name}"] = melody(xp)["p_at_1"]
    out["robust_singer_p_at_1"] = _mean([out[f"robust_singer_p_at_1_{n}"] for n in queries])
    out["robust_melody_p_at_1"] = _mean([out[f"robust_melody_p_at_1_{n}"] for n in queries])
    return {k: float(v) for k, v in out.items()}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------- the run


@dataclass
class EvaluationReport:
    """Result of `evaluate`: one row per system, and where the numbers came from."""

    rows: list[dict[str, Any]]  # ROW_KEYS + METRIC_KEYS + per-perturbation keys
    split: dict[str, Any]  # seed, test_fraction, counts, held-out song ids
    models: dict[str, ModelInfo]
    settings: dict[str, Any]  # the timbre, melody, fusion and separation settings used
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    def row(self, system: str) -> dict[str, Any]:
        for r in self.rows:
            if r["system"] == system:
                return r
        raise KeyError(f"no system {system!r}; valid: {', '.join(r['system'] for r in self.rows)}")

    def as_text(self) -> str:
        """The plain-text table of `format_report`."""
        return format_report(self)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN (undefined metric) becomes None."""
        return _json_safe({
            "rows": self.rows,
            "split": self.split,
            "models": {k: vars(v) for k, v in self.models.items()},
            "settings": self.settings,
            "seconds": self.seconds,
            "k": K,
            "vote_k": VOTE_K,
            "perturbations": {k: list(v) for k, v in PERTURBATIONS.items()},
        })


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _untrained(settings: Settings, seed: int) -> dict[str, Any]:
    """The untrained encoders (recsys.encoders); the trained ones share their architecture and needs."""
    from recsys.encoders import melody_encoder, timbre_encoder

    u_timbre, u_melody = untrained_encoders(settings, seed)
    return {"timbre (untrained)": timbre_encoder(u_timbre), "melody (untrained)": melody_encoder(u_melody)}


def evaluate(
    manifest: str | Path,
    settings: Settings,
    workspace: Path,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    retrain: bool = False,
    progress: Progress | None = None,
    log: Callable[[str, dict], None] | None = None,
    trainers: Mapping[str, Trainer] = TRAINERS,
) -> EvaluationReport:
    """Train on the training split of `manifest`'s songs, then score every system on the held-out songs.

    `workspace` holds the models trained here (models/timbre, models/melody); a later
    run on the same songs, settings and audio clean-up reuses them. `baselines`: names
    of recsys.baselines.BASELINES. `progress(stage, done, total)`; `log(kind, epoch
    record)`. `trainers`: {"timbre": Trainer, "melody": Trainer} (recsys.studies.trainers).
    """
    from recsys.baselines import BASELINES, MFCCStats, make_baseline

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; valid: {', '.join(BASELINES)}")
    audio, feat, sr = settings.audio, settings.features, settings.audio.sample_rate
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    separator = None
    if settings.separation.method != "none":
        from recsys.separation import separator_from_config

        separator = separator_from_config(settings.separation)
    untrained = _untrained(settings, seed)
    needs = frozenset().union(*(enc.needs for enc in untrained.values()))
    songs = load_labelled_catalog(manifest, audio, feat, progress, separator, settings.separation, needs)
    seconds["decode"] = time.perf_counter() - began
    singers = np.array([s.singer for s in songs], dtype=object)
    melodies = np.array([s.melody_id for s in songs], dtype=object)
    train_idx, test_idx = split_songs([s.singer for s in songs], test_fraction, seed)

    began = time.perf_counter()
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    trained, models = train_or_load([songs[i].training_song() for i in train_idx], settings, workspace,
                                    trainers, retrain=retrain, log=log)
    seconds["train"] = time.perf_counter() - began

    began = time.perf_counter()
    from recsys.encoders import melody_encoder, timbre_encoder

    recorded = {"training": settings.timbre.model_dump(mode="json"), "features": feat.model_dump(mode="json"),
                "sample_rate": sr}  # what the timbre version records: its pitch_pool, as search uses it
    encoders = {"timbre": timbre_encoder(trained["timbre"], recorded), "melody": melody_encoder(trained["melody"])}
    for name, enc in encoders.items():
        if not enc.needs <= needs:
            raise ValueError(f"the {name} model reads {sorted(enc.needs - needs)}, which its settings do not: "
                             f"it was not trained with the settings in force")
    from recsys.training.common import pick_device

    dev = pick_device(settings.device)  # the encoders embed on the device asked for
    systems: dict[str, tuple[str, SystemEmbed]] = {
        name: ("trained" if name in encoders else "untrained", _encoder_system(enc.to(dev)))
        for name, enc in {**encoders, **untrained}.items()}
    device = "cpu" if settings.device == "cpu" else "auto"
    for name in baselines:
        baseline = make_baseline(name, sample_rate=sr, device=device)
        if isinstance(baseline, MFCCStats):
            baseline.fit([songs[i].wave for i in train_idx])  # standardised on the training songs only
        systems[name] = ("baseline", _baseline_system(baseline))

    def embed_all(items: Sequence[_Query], stage: str) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {name: [] for name in systems}
        for start in range(0, len(items), EMBED_BATCH):
            batch = items[start : start + EMBED_BATCH]
            for name, (_, embed) in systems.items():
                rows[name].append(embed(batch))
            if progress is not None:
                progress(stage, start + len(batch), len(items))
        return {name: _unit_rows(np.concatenate(v)) for name, v in rows.items()}

    def perturbed(song: LabelledSong, pname: str) -> _Query:
        # song.wave is already separated: perturb it, then clean it up again as any query is; its frames keep
        # their place on the song's own timeline (the rests the first clean-up cut), at the copy's tempo.
        raw = perturb(song.wave, pname, sr)
        wave, feats = voiced_wave_features(raw, needs, audio, feat)
        times = derived_times(song.features, feats, song.wave.numel() / max(1, raw.numel()))
        return _Query(wave, SongFeatures(feats.mel, feats.pitch, times))

    clean = embed_all([_Query(s.wave, s.features) for s in songs], "embed")
    queries = {p: embed_all([perturbed(songs[int(i)], p) for i in test_idx], f"robustness {p}") for p in PERTURBATIONS}
    seconds["embed"] = time.perf_counter() - began

    weights = question_weights(settings.fusion, "song")
    for tag in ("", " (untrained)"):
        gallery = Vectors(clean[f"timbre{tag}"], clean[f"melody{tag}"])
        calibration = Calibration.fit(gallery) if settings.fusion.calibration == "zscore" else Calibration()
        fusion = Fusion(weights, calibration)  # what `recsys search --by song` ranks by
        for vecs in [clean, *queries.values()]:
            vecs[f"fused{tag}"] = ranking_rows(Vectors(vecs[f"timbre{tag}"], vecs[f"melody{tag}"]), fusion)
    kinds = {name: kind for name, (kind, _) in systems.items()} | {"fused": "trained", "fused (untrained)": "untrained"}
    order = ["timbre", "melody", "fused", "timbre (untrained)", "melody (untrained)", "fused (untrained)",
             *baselines]

    began = time.perf_counter()
    rows = []
    for name in order:
        metrics = system_metrics(clean[name], {p: queries[p][name] for p in PERTURBATIONS}, singers, melodies,
                                 train_idx, test_idx)
        rows.append({"system": name, "kind": kinds[name], "dim": int(clean[name].shape[1]), **metrics})
    seconds["metrics"] = time.perf_counter() - began

    split = {
        "seed": seed,
        "test_fraction": test_fraction,
        "n_songs": len(songs),
        "n_singers": len(set(singers)),
        "n_train": int(train_idx.size),
        "n_test": int(test_idx.size),
        "n_melody_queries": int(sum(m is not None for m in melodies[test_idx])),
        "test_song_ids": [songs[i].song_id for i in test_idx],
    }
    used = {"timbre": settings.timbre.model_dump(mode="json"), "melody": settings.melody.model_dump(mode="json"),
            "fusion": settings.fusion.model_dump(mode="json"), "separation": settings.separation.method}
    return EvaluationReport(rows, split, models, used, seconds)


TABLE_COLUMNS = (
    ("system", "system"),
    ("singer_p_at_1", "P@1"),
    ("singer_map_at_10", "mAP@10"),
    ("singer_vote_at_5", "vote@5"),
    ("id_top1", "id top1"),
    ("id_top2", "top2"),
    ("id_top3", "top3"),
    ("id_macro_f1", "F1"),
    ("melody_p_at_1", "mel P@1"),
    ("melody_map_at_10", "mel mAP"),
    *((f"robust_singer_p_at_1_{p}", f"P@1 {p}") for p in PERTURBATIONS),
    ("robust_melody_p_at_1", "mel P@1 pert"),
)


def format_report(report: EvaluationReport) -> str:
    """The report as a plain-text table (singer metrics, identification, melody, robustness)."""
    s = report.split
    head = (f"{s['n_songs']} songs by {s['n_singers']} singers; held out {s['n_test']} "
            f"(test_fraction {s['test_fraction']}, seed {s['seed']}), gallery {s['n_train']} training songs; "
            f"{s['n_melody_queries']} held-out songs with a melody_id")
    models = "; ".join(
        f"{m.kind} {m.version} ({'trained' if m.trained else 'loaded'}"
        + (f", {m.epochs} epochs, {m.seconds:.0f} s" if m.trained else "") + ")"
        for m in report.models.values()
    )
    return "\n".join([head, f"models: {models}", format_table(report.rows, TABLE_COLUMNS)])
