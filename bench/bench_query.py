"""Query-by-song latency in a warm process, encoder cost per 3-minute song, training time per epoch, peak memory.

    .venv/bin/python bench/bench_query.py [--catalog 10000] [--queries 40] [--threads 2]
        [--train-steps 10] [--train-songs 24] [--skip-train]

1. Query by song (target: p50 < 200 ms for a 30 s clip). A warm process holds the
   encoders and a Searcher over --catalog songs; each query is a 30 s WAV on disk
   (synthetic singing, recsys.corpus) going through the product's path:
     decode    recsys.audio.load_audio (soundfile, mono, resample)
     features  recsys.audio.voiced_audio (silence removal, loudness) + recsys.features.log_mel
     pitch     recsys.pitch.wave_pitch (the waveform pitch the default melody vector reads;
               computed only when the melody encoder's `needs` name it)
     timbre, melody   SongEncoder.embed_songs (recsys.encoders: timbre_encoder, melody_encoder)
     search    Searcher.similar_singers + similar_songs, k = 10
   Models have the default configuration's shape with seeded random weights: the
   cost does not depend on the weights. Catalog vectors are random unit vectors.
2. Embedding one 3-minute song (target: 50 ms per encoder), on one thread: wall and
   process CPU time, median of 5 after a warm-up, and CPU / target as a ratio; the
   melody row includes the waveform pitch (recsys.pitch.wave_pitch) it reads. (With
   two threads on a busy machine, OpenMP threads spinning while they wait doubled the
   CPU time.)
3. Training time per epoch with the default model sizes, on --train-songs generated
   songs of 10 s: the timbre encoder for --train-steps steps (seconds per step, and
   projected to the configured steps_per_epoch), the TCAE for one epoch (seconds
   per minute of training audio, projected to the demo catalog's 96 minutes).
4. Peak resident memory (ru_maxrss) after each part.

Prints plain-text tables (recsys.evaluation.format_table).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from targets import check

from recsys.audio import load_audio, voiced_audio
from recsys.config import Settings
from recsys.corpus import make_melodies, make_singers, sing
from recsys.embedding import Vectors
from recsys.encoders import SongEncoder, TimbreSongEncoder, melody_encoder, timbre_encoder
from recsys.evaluation import format_table
from recsys.features import SongFeatures, log_mel
from recsys.fusion import question_weights
from recsys.models.melody import MelodyModel, build_melody_model, melody_model_config
from recsys.models.pitch_tcae import PitchTCAE
from recsys.models.timbre import TimbreEncoder
from recsys.pitch import wave_pitch
from recsys.search import Searcher
from recsys.training.contrastive import model_config_for
from recsys.training.data import TrainingSong

SR = 16000
QUERY_TARGET_MS = 200.0
EMBED_TARGET_MS = 50.0
DEMO_MINUTES = 24 * 8 * 30 / 60  # the demo catalog: 24 singers x 8 songs x 30 s


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    singers, melodies = make_singers(n, seed=1), make_melodies(n, seed=1)
    paths = []
    for i in range(n):
        path = folder / f"clip_{i}.wav"
        sf.write(str(path), sing(singers[i], melodies[i], seconds, SR, seed=i), SR, subtype="PCM_16")
        paths.append(path)
    return paths


def percentile_ms(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def untrained_models(settings: Settings, seed: int = 0) -> tuple[TimbreEncoder, MelodyModel]:
    """The two models of the configured shape with seeded random weights, eval mode, on CPU
    (an untrained model costs what a trained one does)."""
    feat = settings.features
    torch.manual_seed(seed)
    timbre = TimbreEncoder(model_config_for(settings.timbre, feat)).eval()
    torch.manual_seed(seed + 1)
    return timbre, build_melody_model(melody_model_config(settings.melody, feat, settings.audio.sample_rate)).eval()


def untrained_encoders(settings: Settings) -> tuple[SongEncoder, SongEncoder]:
    timbre, tcae = untrained_models(settings)
    return timbre_encoder(timbre), melody_encoder(tcae)


def bench_queries(settings: Settings, clips: list[Path], n_catalog: int, n_queries: int) -> list[dict]:
    timbre, melody = untrained_encoders(settings)
    needs = timbre.needs | melody.needs
    rng = np.random.default_rng(0)
    vectors = Vectors(unit(rng.standard_normal((n_catalog, timbre.dim))),
                      unit(rng.standard_normal((n_catalog, melody.dim))))
    ids = np.arange(n_catalog, dtype=np.int64)
    searcher = Searcher(ids, [f"singer_{i // 8}" for i in ids], [f"song {i}" for i in ids], vectors,
                        settings.index)
    weights = question_weights(settings.fusion, "song")  # both encoders and both searches, as `--by song`
    stages: dict[str, list[float]] = {
        s: [] for s in ("decode", "features", "pitch", "timbre", "melody", "search", "total")
    }

    def one(path: Path) -> tuple[dict[str, float], float]:
        c0 = time.process_time()
        t0 = time.perf_counter()
        wave = load_audio(path, settings.audio)
        t1 = time.perf_counter()
        voiced = voiced_audio(wave, settings.audio)
        mel = log_mel(voiced, settings.features, SR)
        t2 = time.perf_counter()
        pitch = wave_pitch(voiced, SR, settings.features.hop_length) if "pitch" in needs else None
        song = [SongFeatures(mel, pitch)]
        tp = time.perf_counter()
        t = timbre.embed_songs(song)[0].numpy()
        t3 = time.perf_counter()
        m = melody.embed_songs(song)[0].numpy()
        t4 = time.perf_counter()
        searcher.similar_singers(t, m, 10, weights)
        searcher.similar_songs(t, m, 10, weights)
        t5 = time.perf_counter()
        walls = {"decode": t1 - t0, "features": t2 - t1, "pitch": tp - t2, "timbre": t3 - tp, "melody": t4 - t3,
                 "search": t5 - t4, "total": t5 - t0}
        return walls, time.process_time() - c0

    for path in clips[:3]:  # warm-up: first calls allocate and pick kernels
        one(path)
    cpu: list[float] = []
    for q in range(n_queries):
        walls, cpu_s = one(clips[q % len(clips)])
        cpu.append(cpu_s)
        for stage, seconds in walls.items():
            stages[stage].append(seconds)
    rows = []
    for stage, values in stages.items():
        row = {"stage": stage, "p50_ms": percentile_ms(values, 50), "p99_ms": percentile_ms(values, 99)}
        if stage == "total":
            row.update(cpu_p50_ms=percentile_ms(cpu, 50), target_ms=QUERY_TARGET_MS,
                       p50_vs_target=row["p50_ms"] / QUERY_TARGET_MS)
        rows.append(row)
    return rows


def bench_embed_3min(settings: Settings, clip: Path, repeats: int = 5) -> list[dict]:
    """One thread: the CPU cost of a song, without OpenMP threads spinning on a busy machine."""
    timbre_model, tcae = untrained_models(settings)
    recorded = {"training": settings.timbre.model_dump(mode="json"),
                "features": settings.features.model_dump(mode="json"), "sample_rate": SR}  # as a version records
    timbre, melody = timbre_encoder(timbre_model, recorded), melody_encoder(tcae)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wave30 = load_audio(clip, settings.audio)
    wave = wave30.repeat(1 + 180 * SR // wave30.numel())[: 180 * SR]  # 3 minutes
    mel = log_mel(wave, settings.features, SR)  # (n_mels, T)
    hop = settings.features.hop_length

    def features() -> list[SongFeatures]:
        return [SongFeatures(mel, wave_pitch(wave, SR, hop) if "pitch" in melody.needs else None)]

    song = features()
    five = (-2, -1, 0, 1, 2)
    pooled = {n: TimbreSongEncoder(timbre_model, pitch_pool=shifts, feat_cfg=settings.features, sample_rate=SR,
                                   pitch_pool_chunks=chunks)
              for n, shifts, chunks in (("timbre, plain (pitch_pool off)", (), "every"),
                                        ("timbre, pitch_pool -2 0 2, every chunk", (-2, 0, 2), "every"),
                                        ("timbre, pitch_pool -2 -1 0 1 2, every chunk", five, "every"),
                                        ("timbre, pitch_pool -2 -1 0 1 2, rotate", five, "rotate"))}
    work = {
        "timbre (settings.timbre)": lambda: timbre.embed_songs(song),
        **{n: (lambda e=e: e.embed_songs(song)) for n, e in pooled.items()},
        "melody": lambda: melody.embed_songs(song),
        "TCAE latents alone (refine / encode_frames)": (
            (lambda: tcae.refine(song[0].pitch)) if isinstance(tcae, PitchTCAE) else (lambda: tcae.encode_frames(mel))),
        "melody + its waveform pitch": lambda: melody.embed_songs(features()),
        "feature: log-mel (for comparison)": lambda: log_mel(wave, settings.features, SR),
        **speaker_work(settings, wave, mel, timbre_model, recorded),
    }
    rows = []
    for name, embed in work.items():
        embed()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            embed()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        row = {"encoder": name, "frames": mel.shape[-1], "wall_ms": percentile_ms(wall, 50),
               "cpu_ms": percentile_ms(cpu, 50)}
        if not name.startswith("feature"):
            row.update(target_ms=EMBED_TARGET_MS, cpu_vs_target=row["cpu_ms"] / EMBED_TARGET_MS)
        rows.append(row)
    torch.set_num_threads(threads)
    return rows


def speaker_work(settings: Settings, wave: torch.Tensor, mel: torch.Tensor, timbre_model: TimbreEncoder,
                 recorded: dict) -> dict[str, Callable[[], object]]:
    """The speaker front end's rows (timbre.front_end speaker / log-mel+speaker), when resemblyzer is here."""
    try:
        from recsys.speaker import check_available, speaker_partials

        check_available()
    except Exception as e:  # noqa: BLE001 - the optional extra: its rows are simply left out
        print(f"speaker front end rows left out: {e}")
        return {}
    from recsys.encoders import CombinedTimbreEncoder
    from recsys.models.speaker_timbre import CombinedTimbre, SpeakerBackEnd, SpeakerBackEndConfig

    cap = settings.features.speaker_partials
    back_end = SpeakerBackEnd(SpeakerBackEndConfig(embedding_dim=settings.timbre.embedding_dim)).eval()
    combined = CombinedTimbreEncoder(CombinedTimbre(timbre_model, back_end, settings.timbre.speaker_share, recorded))
    return {
        f"speaker partials, features.speaker_partials {cap}": lambda: speaker_partials(wave, SR, cap),
        "speaker partials, all, half a partial apart (0)": lambda: speaker_partials(wave, SR, 0),
        "timbre, front_end log-mel+speaker (its partials included)": lambda: combined.embed_songs(
            [SongFeatures(mel, None, speaker=speaker_partials(wave, SR, cap))]),
    }


def bench_training(settings: Settings, n_songs: int, steps: int, workspace: Path) -> list[dict]:
    from recsys.training.contrastive import train_timbre
    from recsys.training.tcae import train_melody

    singers, melodies = make_singers(max(2, n_songs // 3), seed=2), make_melodies(3, seed=2)
    songs = []
    for i in range(n_songs):
        wave = torch.from_numpy(sing(singers[i // 3], melodies[i % 3], 10.0, SR, seed=i))
        songs.append(TrainingSong(i, SongFeatures(log_mel(wave, settings.features, SR),
                                                  wave_pitch(wave, SR, settings.features.hop_length)),
                                  singers[i // 3].name, f"h{i}"))
    minutes = n_songs * 10.0 / 60
    rows = []
    tcfg = settings.timbre.model_copy(update={"epochs": 1, "steps_per_epoch": steps})
    result = train_timbre(songs, tcfg, settings.features, SR, workspace / "timbre", device=settings.device,
                          resume=False)
    epoch_s = result.history[0]["seconds"]
    rows.append({"model": "timbre", "measured": f"1 epoch of {steps} steps", "seconds": epoch_s,
                 "per_unit": epoch_s / steps, "unit": "s / step",
                 "projected_epoch_s": epoch_s / steps * settings.timbre.steps_per_epoch,
                 "projected_for": f"{settings.timbre.steps_per_epoch} steps"})
    mcfg = settings.melody.model_copy(update={"epochs": 1})
    result = train_melody(songs, mcfg, settings.features, SR, workspace / "melody", device=settings.device,
                          resume=False)
    epoch_s = result.history[0]["seconds"]
    if mcfg.model == "equivariant":  # a fixed number of steps an epoch, whatever the catalog's size
        m_steps = mcfg.equivariant.steps_per_epoch
        rows.append({"model": "melody (pitch-equivariant TCAE)", "measured": f"1 epoch of {m_steps} steps",
                     "seconds": epoch_s, "per_unit": epoch_s / m_steps, "unit": "s / step",
                     "projected_epoch_s": epoch_s * settings.melody.epochs,
                     "projected_for": f"the whole schedule, {settings.melody.epochs} epochs"})
    else:
        rows.append({"model": "melody (per-frame TCAE)", "measured": f"1 epoch, {minutes:.1f} min of audio",
                     "seconds": epoch_s, "per_unit": epoch_s / minutes, "unit": "s / audio min",
                     "projected_epoch_s": epoch_s / minutes * DEMO_MINUTES, "projected_for": "demo catalog, 96 min"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=int, default=10_000, help="songs in the searched catalog")
    ap.add_argument("--queries", type=int, default=40, help="timed queries (after 3 warm-up queries)")
    ap.add_argument("--clips", type=int, default=4, help="distinct 30 s query clips, cycled")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--train-songs", type=int, default=24)
    ap.add_argument("--train-steps", type=int, default=10, help="timbre steps timed (the default epoch has 40)")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(device="cpu")

    with tempfile.TemporaryDirectory() as tmp:
        clips = write_clips(Path(tmp), args.clips, 30.0)
        rss_before = peak_rss_mb()
        queries = bench_queries(settings, clips, args.catalog, args.queries)
        print(f"\nQuery by song: 30 s clip, catalog of {args.catalog} songs, {args.queries} queries, "
              f"{args.threads} threads (target p50 < {QUERY_TARGET_MS:.0f} ms)")
        print(format_table(queries, [("stage", "stage"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                                     ("cpu_p50_ms", "CPU p50 ms"), ("target_ms", "target ms"),
                                     ("p50_vs_target", "p50 / target")], 1))
        total = next(r for r in queries if r["stage"] == "total")
        check("bench_query", "query by song, 30 s clip: p50", total["p50_ms"], QUERY_TARGET_MS, "ms", False,
              f"catalog of {args.catalog}, {args.threads} threads")
        embed = bench_embed_3min(settings, clips[0])
        print(f"\nEmbedding one 3-minute song, 1 thread (target {EMBED_TARGET_MS:.0f} ms per encoder)")
        print(format_table(embed, [("encoder", "encoder"), ("frames", "frames"), ("wall_ms", "wall ms"),
                                   ("cpu_ms", "CPU ms"), ("target_ms", "target ms"),
                                   ("cpu_vs_target", "CPU / target")], 1))
        for row in embed:
            if row["encoder"] in ("timbre (settings.timbre)", "melody + its waveform pitch"):
                check("bench_query", f"3-minute song, {row['encoder']}: CPU", row["cpu_ms"], EMBED_TARGET_MS, "ms",
                      False, "1 thread")
        memory = [{"part": "start (imports, clips)", "peak_rss_mb": rss_before},
                  {"part": "after queries and 3-minute embedding", "peak_rss_mb": peak_rss_mb()}]
        if not args.skip_train:
            training = bench_training(settings, args.train_songs, args.train_steps, Path(tmp) / "ws")
            print(f"\nTraining time per epoch (default model sizes, {args.train_songs} songs x 10 s, "
                  f"{args.threads} threads)")
            print(format_table(training, [("model", "model"), ("measured", "measured"), ("seconds", "s"),
                                          ("per_unit", "per unit"), ("unit", "unit"),
                                          ("projected_epoch_s", "projected epoch s"),
                                          ("projected_for", "projected for")], 2))
            memory.append({"part": "after training", "peak_rss_mb": peak_rss_mb()})
    print("\nPeak resident memory of this process")
    print(format_table(memory, [("part", "part"), ("peak_rss_mb", "peak RSS MB")], 0))


if __name__ == "__main__":
    main()
