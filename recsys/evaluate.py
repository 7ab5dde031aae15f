"""The evaluation run: train on a split by song, score every vector and baseline on the held-out songs.

`evaluate(manifest, settings, workspace)` reads a labelled catalog (a manifest with a
`singer` column and, optionally, a `melody_id` metadata column), holds out songs per
singer (recsys.evaluation.split_by_song, deterministic), trains the timbre encoder
and the TCAE on the training songs only (or loads models that a previous run trained
on the same songs with the same settings), and scores, for each system:

* the project's vectors: ``timbre``, ``melody`` and ``fused`` (fusion weights from settings);
* the same architectures with seeded random weights: ``timbre (untrained)``, ...;
* baselines (recsys.baselines): ``mfcc_stats``, ``resemblyzer``, ``chroma_stats_keyinv``.

Every metric is measured with the held-out songs as queries and the training songs
(the catalog the models were trained on) as the gallery; see METRIC_KEYS. The library
returns an EvaluationReport; the CLI prints it (`format_report`) or its JSON (`as_dict`).

The two training studies (pair policies, issue 3; melody variants, issue 4) are here
too, as `pair_policy_study` and `melody_variant_study`, on the same kind of split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.augment import pitch_shift_wave, time_stretch_wave
from recsys.config import AudioConfig, FeatureConfig, Settings
from recsys.embedding import Weights, fuse
from recsys.evaluation import cross_retrieval_metrics, format_table, identification_metrics, split_by_song
from recsys.training.data import SongFeatures

K = 10  # mAP@K
VOTE_K = 5  # majority vote over the VOTE_K nearest songs
TEST_FRACTION = 0.25  # 2 of 8 songs per singer held out on the demo catalog
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

Progress = Callable[[str, int, int], None]  # (stage, done, total)


# --------------------------------------------------------------------------- the catalog


@dataclass
class LabelledSong:
    """One catalog song as the evaluation needs it."""

    song_id: int  # row number in the manifest
    path: Path
    singer: str
    melody_id: str | None
    content_hash: str
    wave: torch.Tensor  # (N,) voiced, normalised audio at the working rate (recsys.audio.voiced_audio)
    mel: torch.Tensor  # (n_mels, T) its log-mel

    def features(self) -> SongFeatures:
        meta = {"melody": self.melody_id} if self.melody_id is not None else {}
        return SongFeatures(self.song_id, self.mel, self.singer, self.content_hash, meta)


def load_labelled_catalog(
    manifest: str | Path,
    audio_cfg: AudioConfig,
    feat_cfg: FeatureConfig,
    progress: Progress | None = None,
    separator: Any = None,
    separation: str = "none",
) -> list[LabelledSong]:
    """Decode every song of a manifest (CSV or <singer>/<song> folder) that has a singer label.

    An evaluation needs a clean catalog: a bad row, an unreadable file or a song
    without a singer is an error naming it (fix or drop it from the manifest).
    `separator` (recsys.separation) suppresses accompaniment first; `separation`, its
    method's name, tags the content hash as Recommender.training_songs does, so models
    trained on separated audio get versions of their own.
    """
    from recsys.audio import AudioError, content_hash, voiced_audio
    from recsys.features import log_mel
    from recsys.manifest import ManifestProblem, iter_manifest

    items = list(iter_manifest(manifest))
    songs: list[LabelledSong] = []
    for i, item in enumerate(items):
        if isinstance(item, ManifestProblem):
            raise ValueError(  # noqa: TRY004 - a bad manifest row, not a programming error
                f"{manifest}: {item.message} ({item.cause}); evaluation needs every row usable"
            )
        if item.singer is None:
            raise ValueError(
                f"{manifest}: {item.path} has no singer; evaluation needs a `singer` column (or a "
                f"<singer>/<song> folder) for every song"
            )
        try:
            wave = voiced_audio(item.path, audio_cfg, separator)
        except AudioError as e:
            raise ValueError(f"{manifest}: cannot use {item.path}: {e}") from e
        songs.append(
            LabelledSong(
                song_id=i,
                path=item.path,
                singer=item.singer,
                melody_id=item.metadata.get("melody_id"),
                content_hash=content_hash(item.path) + ("" if separation == "none" else f"+{separation}"),
                wave=wave,
                mel=log_mel(wave, feat_cfg, audio_cfg.sample_rate),
            )
        )
        if progress is not None:
            progress("decode", i + 1, len(items))
    if len(songs) < 4:
        raise ValueError(f"{manifest}: {len(songs)} songs; an evaluation needs at least 4 (2 singers x 2 songs)")
    return songs


def split_songs(
    singers: Sequence[str], test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) by song: every singer with >= 2 songs has songs on both sides.

    recsys.evaluation.split_by_song, checked: at least one held-out song.
    """
    train_idx, test_idx = split_by_song(np.asarray(singers), test_fraction, seed)
    if test_idx.size == 0:
        raise ValueError("no singer has 2 or more songs: nothing can be held out for evaluation")
    return train_idx, test_idx


# --------------------------------------------------------------------------- models


def _jsonish(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _reusable(meta: Any, fingerprint: str, expected: dict[str, Any]) -> bool:
    """A published version was trained on these songs with this config."""
    if meta is None or meta.fingerprint != fingerprint:
        return False
    return all(_jsonish(meta.model_config.get(k)) == _jsonish(v) for k, v in expected.items())


@dataclass
class ModelInfo:
    kind: str  # timbre or melody
    version: str
    trained: bool  # False: loaded from a previous run on the same songs and settings
    seconds: float  # training wall time (0 when loaded)
    epochs: int | None = None
    best_epoch: int | None = None
    final_loss: float | None = None
    seconds_per_epoch: float | None = None


def train_or_load(
    train_songs: list[SongFeatures],
    settings: Settings,
    workspace: Path,
    retrain: bool = False,
    log: Callable[[str, dict], None] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, ModelInfo]]:
    """Timbre encoder and TCAE trained on `train_songs` only, saved under `workspace`.

    A model published there from the same songs (catalog fingerprint) and the same
    settings is loaded instead of retrained, unless `retrain`. `log(kind, epoch record)`.
    """
    from recsys.models.tcae import TCAEConfig
    from recsys.training.checkpoint import catalog_fingerprint, latest_version
    from recsys.training.contrastive import load_timbre, model_config_for, train_timbre
    from recsys.training.tcae import load_melody, train_melody

    fingerprint = catalog_fingerprint([(str(s.song_id), s.content_hash) for s in train_songs])
    feat, sr = settings.features, settings.audio.sample_rate
    expected = {
        "timbre": {
            **model_config_for(settings.timbre, feat).to_dict(),
            "training": settings.timbre.model_dump(mode="json"),
            "features": feat.model_dump(mode="json"),
            "sample_rate": sr,
        },
        "melody": {
            **TCAEConfig.from_settings(settings.melody, feat, sr).to_dict(),
            "training": settings.melody.model_dump(mode="json"),
        },
    }
    trainers = {
        "timbre": lambda lg: train_timbre(train_songs, settings.timbre, feat, sr, workspace,
                                          device=settings.device, log=lg),
        "melody": lambda lg: train_melody(train_songs, settings.melody, feat, sr, workspace,
                                          device=settings.device, log=lg),
    }
    loaders = {"timbre": load_timbre, "melody": load_melody}
    models: dict[str, torch.nn.Module] = {}
    info: dict[str, ModelInfo] = {}
    for kind in ("timbre", "melody"):
        if not retrain and _reusable(latest_version(workspace, kind), fingerprint, expected[kind]):
            model, meta = loaders[kind](workspace)
            m = meta.metrics
            info[kind] = ModelInfo(kind, meta.version, False, 0.0, m.get("epochs_run"), m.get("best_epoch"),
                                   m.get("final_loss"))
        else:
            began = time.perf_counter()
            result = trainers[kind](None if log is None else (lambda record, kind=kind: log(kind, record)))
            seconds = time.perf_counter() - began
            model = result.model
            info[kind] = ModelInfo(
                kind, result.version.version, True, seconds, len(result.history), result.best_epoch,
                result.final_loss, float(np.mean([h["seconds"] for h in result.history])),
            )
        models[kind] = model.eval()
    return models["timbre"], models["melody"], info


def untrained_encoders(settings: Settings, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The project's two architectures with seeded random weights, eval mode, on CPU."""
    from recsys.models.tcae import TCAE, TCAEConfig
    from recsys.models.timbre import TimbreEncoder
    from recsys.training.contrastive import model_config_for

    feat, sr = settings.features, settings.audio.sample_rate
    torch.manual_seed(seed)
    timbre = TimbreEncoder(model_config_for(settings.timbre, feat)).eval()
    torch.manual_seed(seed + 1)
    melody = TCAE(TCAEConfig.from_settings(settings.melody, feat, sr)).eval()
    return timbre, melody


# --------------------------------------------------------------------------- embedding


SongEmbed = Callable[[torch.Tensor, torch.Tensor], np.ndarray]  # (wave (N,), mel (n_mels, T)) -> (d,)


def _encoder_embed(model: torch.nn.Module) -> SongEmbed:
    """The encoder as the product runs it: a melody model reading the waveform pitch gets it from `wave`."""
    from recsys.pitch import wave_pitch

    def embed(wave: torch.Tensor, mel: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            if getattr(model, "needs_wave_pitch", False):
                cfg = model.cfg  # type: ignore[attr-defined]
                vec = model.embed_song(mel, pitch=wave_pitch(wave, cfg.sample_rate, cfg.hop_length))
            else:
                vec = model.embed_song(mel)
            return vec.detach().cpu().numpy().astype(np.float32)

    return embed


def _baseline_embed(baseline: Any) -> SongEmbed:
    return lambda wave, mel: baseline.embed(wave)


def perturb(wave: torch.Tensor, name: str, sample_rate: int) -> torch.Tensor:
    """(N,) -> the waveform pitch-shifted or time-stretched as PERTURBATIONS[name] says."""
    try:
        how, amount = PERTURBATIONS[name]
    except KeyError as e:
        raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}") from e
    if how == "pitch":
        return pitch_shift_wave(wave, sample_rate, amount)
    return time_stretch_wave(wave, amount)


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
    r = cross_retrieval_metrics(xq, yq, xb, yb, k=K, vote_k=VOTE_K)
    out.update(singer_p_at_1=r["p_at_1"], singer_map_at_10=r["map_at_k"], singer_vote_at_5=r["vote_acc"])
    ident = identification_metrics(xb, yb, xq, yq, classifier="centroid", topk=(1, 2, 3))
    out.update(id_top1=ident["top1"], id_top2=ident["top2"], id_top3=ident["top3"], id_macro_f1=ident["macro_f1"])

    # Melody: songs without a melody id get a label of their own, so they are never relevant.
    labels = np.array([m if m is not None else f"\0unknown-{i}" for i, m in enumerate(melodies)], dtype=object)
    known = np.array([m is not None for m in melodies[test_idx]], dtype=bool)

    def melody(xq_: np.ndarray) -> dict[str, Any]:
        if not known.any():
            return {"p_at_1": math.nan, "map_at_k": math.nan}
        return cross_retrieval_metrics(xq_[known], labels[test_idx][known], xb, labels[train_idx], k=K,
                                       vote_k=VOTE_K)

    m = melody(xq)
    out.update(melody_p_at_1=m["p_at_1"], melody_map_at_10=m["map_at_k"])
    for name, xp in queries.items():
        out[f"robust_singer_p_at_1_{name}"] = cross_retrieval_metrics(xp, yq, xb, yb, k=K, vote_k=VOTE_K)["p_at_1"]
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
    settings: dict[str, Any]  # the timbre, melody and fusion settings used
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    def row(self, system: str) -> dict[str, Any]:
        for r in self.rows:
            if r["system"] == system:
                return r
        raise KeyError(f"no system {system!r}; valid: {', '.join(r['system'] for r in self.rows)}")

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
) -> EvaluationReport:
    """Train on the training split of `manifest`'s songs, then score every system on the held-out songs.

    `workspace` holds the models trained here (models/timbre, models/melody); they
    are reused by a later run on the same songs and settings. `baselines`: names of
    recsys.baselines.BASELINES. `progress(stage, done, total)`; `log(kind, epoch record)`.
    """
    from recsys.baselines import BASELINES, MFCCStats, make_baseline
    from recsys.features import log_mel

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; valid: {', '.join(BASELINES)}")
    audio, feat, sr = settings.audio, settings.features, settings.audio.sample_rate
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    method = settings.separation.method
    separator = None
    if method != "none":
        from recsys.separation import separator_from_config

        separator = separator_from_config(settings.separation)
    songs = load_labelled_catalog(manifest, audio, feat, progress, separator, method)
    seconds["decode"] = time.perf_counter() - began
    singers = np.array([s.singer for s in songs], dtype=object)
    melodies = np.array([s.melody_id for s in songs], dtype=object)
    train_idx, test_idx = split_songs([s.singer for s in songs], test_fraction, seed)

    began = time.perf_counter()
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    timbre, melody, models = train_or_load([songs[i].features() for i in train_idx], settings, workspace,
                                           retrain=retrain, log=log)
    seconds["train"] = time.perf_counter() - began
    u_timbre, u_melody = untrained_encoders(settings, seed)

    began = time.perf_counter()
    embedders: dict[str, tuple[str, SongEmbed]] = {
        "timbre": ("trained", _encoder_embed(timbre)),
        "melody": ("trained", _encoder_embed(melody)),
        "timbre (untrained)": ("untrained", _encoder_embed(u_timbre)),
        "melody (untrained)": ("untrained", _encoder_embed(u_melody)),
    }
    device = "cpu" if settings.device == "cpu" else "auto"
    for name in baselines:
        baseline = make_baseline(name, sample_rate=sr, device=device)
        if isinstance(baseline, MFCCStats):
            baseline.fit([songs[i].wave for i in train_idx])  # standardised on the training songs only
        embedders[name] = ("baseline", _baseline_embed(baseline))

    def embed_all(waves_mels: Sequence[tuple[torch.Tensor, torch.Tensor]], stage: str) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {name: [] for name in embedders}
        for j, (wave, mel) in enumerate(waves_mels):
            for name, (_, embed) in embedders.items():
                rows[name].append(embed(wave, mel))
            if progress is not None:
                progress(stage, j + 1, len(waves_mels))
        return {name: _unit_rows(np.stack(v)) for name, v in rows.items()}

    clean = embed_all([(s.wave, s.mel) for s in songs], "embed")
    queries: dict[str, dict[str, np.ndarray]] = {}
    for pname in PERTURBATIONS:

        def perturbed(i: int, pname: str = pname) -> tuple[torch.Tensor, torch.Tensor]:
            from recsys.audio import voiced_audio

            # songs[i].wave is already separated: perturb it, then clean it up again as any query is.
            wave = voiced_audio(perturb(songs[i].wave, pname, sr), audio)
            return wave, log_mel(wave, feat, sr)

        queries[pname] = embed_all([perturbed(int(i)) for i in test_idx], f"robustness {pname}")
    seconds["embed"] = time.perf_counter() - began

    weights = Weights(settings.fusion.w_timbre, settings.fusion.w_melody)
    for tag in ("", " (untrained)"):
        for vecs in [clean, *queries.values()]:
            vecs[f"fused{tag}"] = fuse(vecs[f"timbre{tag}"], vecs[f"melody{tag}"], weights)
    kinds = {name: kind for name, (kind, _) in embedders.items()} | {"fused": "trained",
                                                                       "fused (untrained)": "untrained"}
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
            "fusion": settings.fusion.model_dump(mode="json"), "separation": method}
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


# --------------------------------------------------------------------------- studies (issues 3 and 4)


def catalog_songs(
    rows: Sequence[dict[str, Any]],
    audio_cfg: AudioConfig,
    feat_cfg: FeatureConfig,
    need_waves: bool = False,
    separator: Any = None,
    separation: str = "none",
) -> tuple[list[SongFeatures], list[torch.Tensor]]:
    """Recommender.songs() rows -> SongFeatures (metadata 'melody' from 'melody_id') and voiced waves.

    Waves are returned only with `need_waves` (else an empty list). `separator` and
    `separation` as in :func:`load_labelled_catalog` (pass Recommender.separator and
    Recommender.separation.method to follow the workspace's audio path).
    """
    from recsys.audio import voiced_audio
    from recsys.features import log_mel
    from recsys.pitch import wave_pitch

    songs, waves = [], []
    sr = audio_cfg.sample_rate
    for row in rows:
        wave = voiced_audio(row["path"], audio_cfg, separator)
        meta = dict(row.get("metadata") or {})
        if "melody_id" in meta:
            meta["melody"] = meta["melody_id"]
        digest = (row.get("content_hash") or "") + ("" if separation == "none" else f"+{separation}")
        songs.append(SongFeatures(row["id"], log_mel(wave, feat_cfg, sr), row["singer"], digest, meta,
                                  pitch=wave_pitch(wave, sr, feat_cfg.hop_length)))
        if need_waves:
            waves.append(wave)
    return songs, waves


def _split_features(
    songs: list[SongFeatures], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    if any(s.singer is None for s in songs):
        n = sum(s.singer is None for s in songs)
        raise ValueError(f"{n} catalog songs have no singer; the studies need a singer label on every song")
    train_idx, test_idx = split_songs([s.singer for s in songs], test_fraction, seed)
    return train_idx.tolist(), test_idx.tolist()


def pair_policy_study(
    songs: list[SongFeatures],
    settings: Settings,
    workspace: Path,
    policies: Sequence[str] | None = None,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """compare_pair_policies trained on the training split, scored on the held-out songs.

    Rows as compare_pair_policies returns them (policy, final_loss, epochs, p_at_1,
    map, p_at_1_<perturbation>), plus p_at_1_robust (mean over its perturbations),
    n_train and n_eval. Models go to workspace/experiments/pair-policies/<policy>.
    """
    from recsys.training.contrastive import compare_pair_policies

    train_idx, test_idx = _split_features(songs, test_fraction, seed)
    rows = compare_pair_policies(
        [songs[i] for i in train_idx], [songs[i] for i in test_idx], settings.timbre, settings.features,
        settings.audio.sample_rate, workspace, policies=policies, device=settings.device, log=log,
    )
    for row in rows:
        robust = [v for k, v in row.items() if k.startswith("p_at_1_")]
        row["p_at_1_robust"] = _mean([float(v) for v in robust])
        row.update(n_train=len(train_idx), n_eval=len(test_idx))
    return rows


MELODY_VARIANTS: dict[str, dict[str, Any]] = {
    "mel": {"input": "mel", "key_invariant": False},
    "pitch": {"input": "pitch", "key_invariant": False},
    "mel+pitch": {"input": "mel+pitch", "key_invariant": False},
    "pitch-ki": {"input": "pitch", "key_invariant": True},
    "mel+pitch-ki": {"input": "mel+pitch", "key_invariant": True},
}


def melody_variant_study(
    songs: list[SongFeatures],
    waves: list[torch.Tensor],
    settings: Settings,
    workspace: Path,
    variants: Sequence[str] = ("mel", "pitch-ki"),
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    log: Callable[[str, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """compare_melody_variants: each TCAE variant trained on the training split.

    The catalog scored is every song (P@1: the nearest other song is the same melody
    by another singer); the transposed query sets "+2" / "-2" are the held-out songs
    pitch-shifted on the waveform, their own original left out. `waves[i]` is song
    i's voiced audio. Songs need metadata['melody'] (catalog_songs maps melody_id).
    """
    from recsys.features import song_features
    from recsys.training.tcae import compare_melody_variants

    unknown = [v for v in variants if v not in MELODY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown melody variants {unknown}; valid: {', '.join(MELODY_VARIANTS)}")
    missing = [s.song_id for s in songs if "melody" not in s.metadata]
    if missing:
        raise ValueError(f"{len(missing)} songs have no melody_id metadata (e.g. song {missing[0]}); "
                         f"the melody study needs a melody_id column in the manifest")
    if len(waves) != len(songs):
        raise ValueError(f"need one wave per song, got {len(waves)} waves for {len(songs)} songs")
    train_idx, test_idx = _split_features(songs, test_fraction, seed)
    audio, feat, sr = settings.audio, settings.features, settings.audio.sample_rate
    queries: dict[str, list[SongFeatures]] = {}
    for name, semitones in (("+2", 2.0), ("-2", -2.0)):
        queries[name] = []
        for i in test_idx:
            mel, wave_pitch = song_features(pitch_shift_wave(waves[i], sr, semitones), audio, feat, pitch=True)
            queries[name].append(SongFeatures(songs[i].song_id, mel, songs[i].singer, "",
                                              {**songs[i].metadata, "source": i}, pitch=wave_pitch))
    configs = {name: settings.melody.model_copy(update=MELODY_VARIANTS[name]) for name in variants}
    return compare_melody_variants(
        [songs[i] for i in train_idx], songs, queries, configs, feat, sr, workspace, device=settings.device, log=log,
    )

