"""Peak memory and time of embedding one long recording: the whole-file path against the streamed one.

    .venv/bin/python bench/bench_long_files.py [--minutes 120] [--threads 2] [--keep DIR]

A synthetic recording (recsys.corpus songs sung one after another with short silent
gaps, looped to --minutes) is written as a 16 kHz mono 16-bit WAV to a temporary
folder. Each measurement runs in a fresh child process, which reports its own peak
resident memory (ru_maxrss) and wall time:

    whole     the voiced waveform decoded into memory, features of the whole waveform
              (recsys.features.wave_features), every timbre chunk embedded in one go:
              the path before features were streamed
    query     recsys.embedding.Embedder.embed(path): what `recsys search FILE` and the app run
    ingest    recsys.ingest.prepare_file (features for the job's workers) + embed_prepared

Models have the default configuration's shape with seeded random weights (memory and
time do not depend on the weights). The last column is the largest difference of
either vector from the whole-file path's. Prints a plain-text table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.config import Settings
from recsys.corpus import make_melodies, make_singers, sing
from recsys.evaluation import format_table

SR = 16000
SONG_SECONDS = 40.0
GAP_SECONDS = 2.0
MODES = ("whole", "query", "ingest")


def write_recording(path: Path, minutes: float, n_songs: int = 6) -> None:
    """A long synthetic sung recording: n_songs songs with silent gaps, looped, written in blocks."""
    singers, tunes = make_singers(n_songs, seed=7), make_melodies(n_songs, seed=7)
    gap = np.zeros(int(GAP_SECONDS * SR), np.float32)
    cycle = np.concatenate(
        [np.concatenate([sing(singers[i], tunes[i], SONG_SECONDS, SR, seed=i).astype(np.float32), gap])
         for i in range(n_songs)]
    )
    total = int(minutes * 60 * SR)
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as out:
        written = 0
        while written < total:
            part = cycle[: total - written]
            out.write(part)
            written += part.size


def _models(settings: Settings):
    """Models of the configured shape, seeded random weights, behind the encoder contract."""
    from recsys.encoders import melody_encoder, timbre_encoder
    from recsys.models.melody import build_melody_model, melody_model_config
    from recsys.models.timbre import TimbreEncoder
    from recsys.registry import Models
    from recsys.training.contrastive import model_config_for

    torch.manual_seed(0)
    timbre = TimbreEncoder(model_config_for(settings.timbre, settings.features)).eval()
    torch.manual_seed(1)
    tcae = build_melody_model(melody_model_config(settings.melody, settings.features, settings.audio.sample_rate)).eval()
    return Models(timbre_encoder(timbre), melody_encoder(tcae), None, None)


def _whole(models, settings: Settings, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole-file path: voiced waveform in memory, whole-file STFTs, all timbre chunks at once."""
    import torch.nn.functional as F

    from recsys.audio import voiced_audio
    from recsys.encoders import MAX_TIMBRE_CHUNKS_PER_PASS
    from recsys.features import wave_features

    feats = wave_features(voiced_audio(path, settings.audio), models.needs, settings.audio, settings.features)
    model = models.timbre.model
    with torch.no_grad():
        chunks = model.chunk_song(feats.mel)
        z = torch.cat([model.embed(part) for part in chunks.split(MAX_TIMBRE_CHUNKS_PER_PASS)])
        timbre = F.normalize(z.mean(0), dim=-1)
    melody = models.melody.embed_songs([feats])[0]
    return timbre.numpy(), melody.numpy()


def child(mode: str, path: Path, threads: int) -> dict:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(threads)
    settings = Settings()
    models = _models(settings)
    start = time.perf_counter()
    if mode == "whole":
        timbre, melody = _whole(models, settings, path)
    elif mode == "query":
        from recsys.embedding import Embedder

        v = Embedder(models, settings.audio, settings.features).embed(path)
        timbre, melody = v.timbre[0], v.melody[0]
    else:
        from recsys.embedding import Embedder
        from recsys.ingest import FileFailure, embed_prepared, prepare_file
        from recsys.manifest import ManifestEntry

        embedder = Embedder(models, settings.audio, settings.features)
        prepared = prepare_file(ManifestEntry(path.resolve()), settings.audio, settings.features, None, embedder.needs)
        if isinstance(prepared, FileFailure):
            raise SystemExit(prepared.message)
        done = embed_prepared(embedder, [prepared])[0]
        timbre, melody = done.timbre, done.melody
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "timbre": np.asarray(timbre, np.float64).tolist(),
        "melody": np.asarray(melody, np.float64).tolist(),
    }


def run_child(mode: str, path: Path, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--threads", str(threads), str(path)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--keep", type=Path, help="write the recording here (reused when present)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="recsys-bench-long-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"long_{args.minutes:g}min.wav"
        if not path.exists():
            write_recording(path, args.minutes)
        results = {mode: run_child(mode, path, args.threads) for mode in args.modes.split(",")}
    ref = results.get("whole")
    rows = []
    for mode, r in results.items():
        diff = "" if ref is None else "{:.1e}".format(max(
            float(np.abs(np.subtract(r[k], ref[k])).max()) for k in ("timbre", "melody")))
        rows.append({"path": mode, "minutes": args.minutes, "peak_rss_mb": r["peak_rss_mb"],
                     "seconds": r["seconds"], "max_diff_vs_whole": diff})
    print(format_table(rows, ["path", "minutes", "peak_rss_mb", "seconds", "max_diff_vs_whole"], float_digits=1))


if __name__ == "__main__":
    main()
