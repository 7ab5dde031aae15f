"""The melody-variant study: TCAE variants beside learning-free melody vectors.

Melody P@1: the nearest catalog song to a query sings the same melody, by another
singer. Scored for two baselines without learning (chroma statistics, interval-lag
statistics of the chroma), the default learning-free vector (voiced interval-lag,
recsys.encoders.IntervalLagMelody, from the log-mel's pitch and, where the songs
carry it, the waveform's), and each TCAE variant trained on the training songs
(its latents pooled as mean/std, and with lag autocorrelations). Query sets such as
transposed takes test key invariance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from recsys import pitch
from recsys.augment import pitch_shift_wave
from recsys.config import MelodyConfig, Settings
from recsys.features import SongFeatures, song_features
from recsys.models.tcae import TCAE, TCAEConfig, masked_pool
from recsys.studies.catalog import MEL_AND_PITCH, TEST_FRACTION, split_training_songs
from recsys.studies.trainers import TRAINERS, Trainer
from recsys.training.data import TrainingSong

# B songs -> (B, d) unit melody vectors
Embed = Callable[[Sequence[SongFeatures]], torch.Tensor]

MELODY_VARIANTS: dict[str, dict[str, Any]] = {
    "equivariant": {"model": "equivariant"},  # the product's default: scored through its encoder
    "mel": {"model": "frame", "input": "mel", "key_invariant": False},
    "pitch": {"model": "frame", "input": "pitch", "key_invariant": False},
    "mel+pitch": {"model": "frame", "input": "mel+pitch", "key_invariant": False},
    "pitch-ki": {"model": "frame", "input": "pitch", "key_invariant": True},
    "mel+pitch-ki": {"model": "frame", "input": "mel+pitch", "key_invariant": True},
}
TRANSPOSITIONS = (("+2", 2.0), ("-2", -2.0))  # query sets of melody_variant_study: name, semitones
THREE_MINUTES_S = 180.0  # the song length embedding time is reported for


def melody_precision_at_1(
    xb: torch.Tensor,
    melody: Sequence[str],
    singer: Sequence[str | None],
    xq: torch.Tensor | None = None,
    q_source: Sequence[int] | None = None,
) -> float:
    """Fraction of queries whose nearest catalog song is the same melody by another singer.

    xb (nb, d) unit catalog vectors. Without xq every catalog song queries the rest.
    With xq (nq, d), query i is a variant (e.g. transposed) of catalog song
    q_source[i], which is left out of its search. Cosine similarity. Queries whose
    melody no other singer sings cannot hit and are not counted (they stay in the
    catalog as distractors).
    """
    assert xb.dim() == 2 and len(melody) == len(singer) == xb.shape[0], "one melody and singer per catalog vector"
    if xq is None:
        xq, q_source = xb, list(range(xb.shape[0]))
    assert q_source is not None and len(q_source) == xq.shape[0], "one catalog source per query"
    S = xq @ xb.T  # (nq, nb)
    S[torch.arange(xq.shape[0]), torch.as_tensor(q_source)] = -float("inf")
    I = S.argmax(1).tolist()
    sung_by: dict[str, set] = {}
    for m, s in zip(melody, singer):
        sung_by.setdefault(m, set()).add(s)
    hits = [
        melody[j] == melody[src] and singer[j] != singer[src]
        for j, src in zip(I, q_source)
        if sung_by[melody[src]] - {singer[src]}
    ]
    if not hits:
        raise ValueError("no query's melody is sung by another singer: melody P@1 is undefined")
    return sum(hits) / len(hits)


def chroma_baseline(mel: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Chroma statistics (the classic baseline): (n_mels, T) -> (24,)."""
    return pitch.chroma_stats(mel, matrix)


def interval_lag_baseline(mel: torch.Tensor, matrix: torch.Tensor, lags: list[int]) -> torch.Tensor:
    """Key-invariant interval x lag statistics of the chroma, no learning: (n_mels, T) -> (12 len(lags),)."""
    return pitch.interval_lag_profile(pitch.fold_chroma(pitch.pitch_salience(mel, matrix)), lags)


def _per_song(fn: Callable[[torch.Tensor], torch.Tensor]) -> Embed:
    return lambda songs: torch.stack([fn(s.mel) for s in songs])


@torch.no_grad()
def _embed_latents(model: TCAE, songs: Sequence[SongFeatures], lags: list[int] | None) -> torch.Tensor:
    """Songs -> (B, d) vectors pooled from the model's latents, whatever its configured pool."""
    out = []
    for song in songs:
        z = model.encode_frames(song.mel).T.unsqueeze(0)  # (1, L, T)
        out.append(masked_pool(z, torch.ones(1, z.shape[-1], dtype=torch.bool), lags)[0])
    return torch.stack(out)


def _three_minutes(songs: Sequence[SongFeatures], frames: int) -> SongFeatures:
    """The songs joined (repeated as needed) and cut to `frames` frames: a 3-minute song for timing."""
    reps = 1 + frames // sum(s.n_frames for s in songs)
    mel = torch.cat([s.mel for s in songs] * reps, dim=-1)[:, :frames]
    pitches = [s.pitch for s in songs]
    wave_pitch = None
    if all(p is not None for p in pitches):
        wave_pitch = torch.cat(pitches * reps, dim=-1)[:, :frames]  # type: ignore[arg-type]
    return SongFeatures(mel, wave_pitch)


def _time_embed(embed: Embed, song: SongFeatures, repeats: int = 3) -> float:
    """Milliseconds to embed `song`: the median of `repeats` runs after a warm-up."""
    embed([song])  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        embed([song])
        times.append(time.perf_counter() - began)
    return 1000 * sorted(times)[len(times) // 2]


def compare_melody_variants(
    train_songs: list[TrainingSong],
    eval_songs: list[TrainingSong],
    queries: dict[str, list[TrainingSong]],
    variants: dict[str, MelodyConfig],
    settings: Settings,
    workspace: Path,
    trainer: Trainer = TRAINERS["melody"],
    log: Callable[[str, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Train each variant (settings.melody replaced by its config) and score its melody vectors
    next to the learning-free ones.

    eval_songs need `singer` and metadata["melody"]; each query set (e.g. "+2",
    "-2" semitones) holds re-sung variants whose metadata["source"] is the index
    in eval_songs they derive from. Rows: name, p_at_1, p_at_1_<query set>...,
    p_at_1_transposed (mean over query sets), valid_loss, epochs, train_s,
    embed_ms (mean per eval song) and, for the voiced-interval-lag and TCAE rows,
    embed_3min_ms (one 3-minute song after a warm-up, median of 3). Each variant
    trains afresh in workspace/<name>. `log(variant, epoch record)`.
    """
    from recsys.encoders import IntervalLagConfig, IntervalLagMelody, PitchTCAEMelody
    from recsys.models.pitch_tcae import PitchTCAE

    for s in eval_songs:
        if s.singer is None or "melody" not in s.metadata:
            raise ValueError(f"eval song {s.song_id} needs a singer and metadata['melody']")
    feat, sr = settings.features, settings.audio.sample_rate
    melody = [s.metadata["melody"] for s in eval_songs]
    singer = [s.singer for s in eval_songs]
    catalog = [s.features for s in eval_songs]
    rows: list[dict[str, Any]] = []

    def score(name: str, embed: Embed, extra: dict[str, Any]) -> None:
        began = time.perf_counter()
        xb = embed(catalog)
        embed_ms = 1000 * (time.perf_counter() - began) / len(eval_songs)
        row: dict[str, Any] = {"name": name, "p_at_1": melody_precision_at_1(xb, melody, singer)}
        for qname, qsongs in queries.items():
            xq = embed([s.features for s in qsongs])
            row[f"p_at_1_{qname}"] = melody_precision_at_1(
                xb, melody, singer, xq, [int(s.metadata["source"]) for s in qsongs]
            )
        if queries:
            row["p_at_1_transposed"] = sum(row[f"p_at_1_{q}"] for q in queries) / len(queries)
        rows.append({**row, **extra, "embed_ms": embed_ms})

    three_min = _three_minutes(catalog, round(THREE_MINUTES_S * sr / feat.hop_length))
    matrix = pitch.harmonic_matrix(feat, sr)
    lags = TCAEConfig.from_settings(MelodyConfig(), feat, sr).lags
    score("chroma-stats (baseline)", _per_song(lambda mel: chroma_baseline(mel, matrix)), {})
    score("interval-lag (baseline)", _per_song(lambda mel: interval_lag_baseline(mel, matrix, lags)), {})
    # The learning-free default vector, reading pitch from the log-mel and, where the songs carry it, the waveform.
    with_pitch = all(s.pitch is not None for s in [*eval_songs, *(q for qs in queries.values() for q in qs)])
    for source in ("mel", "waveform") if with_pitch else ("mel",):
        profile = IntervalLagMelody(IntervalLagConfig.from_settings(MelodyConfig(pitch_source=source), feat, sr))
        score(f"voiced-interval-lag ({source} pitch)", profile.embed_songs,
              {"embed_3min_ms": _time_embed(profile.embed_songs, three_min)})
    for name, cfg in variants.items():
        began = time.perf_counter()
        result = trainer.train(
            train_songs, settings.model_copy(update={"melody": cfg}), Path(workspace) / name.replace("/", "_"),
            resume=False, log=None if log is None else (lambda record, name=name: log(name, record)),
        )
        train_s = time.perf_counter() - began
        best = result.history[result.best_epoch] if result.best_epoch >= 0 else result.history[-1]
        model: Any = result.model
        trained = {"valid_loss": best["valid_loss"], "epochs": len(result.history), "train_s": train_s}
        if isinstance(model, PitchTCAE):  # its song vector is the profile of its refined pitch, not pooled latents
            encoder = PitchTCAEMelody(model)
            score(f"tcae {name} (refined-pitch profile)", encoder.embed_songs,
                  {**trained, "embed_3min_ms": _time_embed(encoder.embed_songs, three_min)})
            continue
        for pool in ("stats", "stats+lag"):  # the latent poolings; interval-lag is the baseline row
            pool_lags = model.cfg.lags if "lag" in pool else None

            def embed(songs: Sequence[SongFeatures], model: Any = model, pool_lags: Any = pool_lags) -> torch.Tensor:
                return _embed_latents(model, songs, pool_lags)

            score(f"tcae {name} ({pool})", embed, {**trained, "embed_3min_ms": _time_embed(embed, three_min)})
    return rows


def melody_variant_study(
    songs: list[TrainingSong],
    waves: list[torch.Tensor],
    settings: Settings,
    workspace: Path,
    variants: Sequence[str] = ("equivariant", "pitch-ki"),
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    log: Callable[[str, dict], None] | None = None,
    trainer: Trainer = TRAINERS["melody"],
) -> list[dict[str, Any]]:
    """compare_melody_variants: each TCAE variant (MELODY_VARIANTS) trained on the training split.

    The catalog scored is every song (P@1: the nearest other song is the same melody
    by another singer); the transposed query sets "+2" / "-2" are the held-out songs
    pitch-shifted on the waveform, their own original left out. `waves[i]` is song
    i's voiced audio. Songs need metadata['melody'] (catalog_songs maps melody_id).
    """
    unknown = [v for v in variants if v not in MELODY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown melody variants {unknown}; valid: {', '.join(MELODY_VARIANTS)}")
    missing = [s.song_id for s in songs if "melody" not in s.metadata]
    if missing:
        raise ValueError(f"{len(missing)} songs have no melody_id metadata (e.g. song {missing[0]}); "
                         f"the melody study needs a melody_id column in the manifest")
    if len(waves) != len(songs):
        raise ValueError(f"need one wave per song, got {len(waves)} waves for {len(songs)} songs")
    train_idx, test_idx = split_training_songs(songs, test_fraction, seed)
    audio, feat, sr = settings.audio, settings.features, settings.audio.sample_rate
    queries: dict[str, list[TrainingSong]] = {}
    for name, semitones in TRANSPOSITIONS:
        queries[name] = [
            TrainingSong(songs[i].song_id, song_features(pitch_shift_wave(waves[i], sr, semitones), audio, feat,
                                                         needs=MEL_AND_PITCH),
                         songs[i].singer, "", {**songs[i].metadata, "source": i})
            for i in test_idx
        ]
    configs = {name: settings.melody.model_copy(update=MELODY_VARIANTS[name]) for name in variants}
    return compare_melody_variants([songs[i] for i in train_idx], songs, queries, configs, settings, workspace,
                                   trainer=trainer, log=log)
