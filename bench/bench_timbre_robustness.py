"""Timbre encoders under key changes, tempo changes and noise, on singers never seen in training.

    python bench/bench_timbre_robustness.py [--singers 12] [--songs 4] [--seconds 12]
        [--train-singers 16] [--train-songs 4] [--epochs 6] [--steps 20]
        [--variants default,key] [--policies ps_neg_ts_neg,ps_pos_ts_pos]
        [--baselines mfcc_stats,resemblyzer] [--out DIR]

What the product meets in use: new recordings of singers in the catalog, sung in another
key, at another tempo, with noise. One timbre encoder per variant (extra positive
augmentations, recsys.augment.EXTRA_AUGMENTATIONS) and pair policy (--policies; default the
configured one) is trained on a cappella songs of
other singers (seed + 1000), so no evaluated voice was seen in training. The evaluation
catalog (recsys.corpus.generate_corpus, --seed) is the gallery; every song queries it
(its own clean version left out) in each condition:

- clean:        the song itself (leave-one-out);
- sung +-2:     the same take sung 2 semitones higher / lower by the same synthetic voice
                (generate_corpus(key_offset=+-2): formants stay, as when a singer changes key);
- shifted +-2:  the waveform pitch-shifted by +-2 semitones (formants move too);
- tempo 0.9/1.1: the waveform time-stretched 10 % slower / faster;
- noise 10 dB:  white noise at 10 dB SNR.

Every waveform then goes through the product path (recsys.features.song_mel). Prints a
table of singer P@1 per condition; the baselines (MFCC statistics, the pretrained
Resemblyzer speaker encoder) are scored in the same run on the same audio.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_separation_retrieval import read_manifest

from recsys.audio import voiced_audio
from recsys.augment import pitch_shift_wave, time_stretch_wave
from recsys.baselines import make_baseline
from recsys.config import load_settings
from recsys.corpus import generate_corpus
from recsys.encoders import timbre_encoder
from recsys.evaluation import format_table, retrieval_metrics
from recsys.features import SongFeatures, log_mel
from recsys.training.contrastive import load_timbre, train_timbre
from recsys.training.data import TrainingSong

VARIANTS = {
    "default": None,  # the configured extra_positives
    "gain+noise": ("gain", "noise"),  # the default before the key-change augmentation
    "key": ("gain", "noise", "key"),
    "key+room": ("gain", "noise", "eq", "reverb", "key"),
    "none": (),
}
NOISE_SNR_DB = 10.0


def load_waves(rows: list[dict[str, str]]) -> list[torch.Tensor]:
    return [torch.from_numpy(sf.read(r["path"], dtype="float32")[0]) for r in rows]


def add_noise(wave: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(wave.shape, generator=gen)
    scale = wave.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() * 10 ** (-snr_db / 20)
    return wave + scale * noise


def retrieval(xq: np.ndarray, xb: np.ndarray, labels: np.ndarray) -> dict:
    """Query i against the gallery without its own clean song (row i)."""
    return retrieval_metrics(xq, xb, labels, labels, np.arange(len(labels)), k=10, vote_k=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singers", type=int, default=12)
    ap.add_argument("--songs", type=int, default=4, help="songs per singer")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--train-singers", type=int, default=16)
    ap.add_argument("--train-songs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--patience", type=int, default=None,
                    help="early-stopping patience on the training singers' held-out songs (default: --epochs, none)")
    ap.add_argument("--variants", default="gain+noise,default", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--policies", default="", help="comma list of pair policies (default: the configured one)")
    ap.add_argument("--baselines", default="mfcc_stats,resemblyzer")
    ap.add_argument("--seed", type=int, default=0, help="evaluation catalog seed (training: seed + 1000)")
    ap.add_argument("--out", type=Path, default=Path("bench-timbre-robustness"))
    args = ap.parse_args()

    settings = load_settings(
        manifest_file=None,
        workspace=args.out / "ws",
        device="auto",
        timbre={"epochs": args.epochs, "steps_per_epoch": args.steps, "patience": args.patience or args.epochs},
    )
    sr, audio, feats = settings.audio.sample_rate, settings.audio, settings.features
    gen = {"song_seconds": args.seconds, "workers": None}
    t0 = time.perf_counter()
    clean_rows = read_manifest(
        generate_corpus(args.out / "eval", args.singers, args.songs, seed=args.seed, **gen)
    )
    sung = {
        f"sung {k:+d}": read_manifest(
            generate_corpus(
                args.out / f"eval-key{k:+d}", args.singers, args.songs, seed=args.seed, key_offset=k, **gen
            )
        )
        for k in (2, -2)
    }
    train_rows = read_manifest(
        generate_corpus(
            args.out / "train", args.train_singers, args.train_songs, seed=args.seed + 1000, **gen
        )
    )
    print(f"generated catalogs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    clean = load_waves(clean_rows)
    conditions: dict[str, list[torch.Tensor]] = {"clean": clean}
    conditions.update({name: load_waves(rows) for name, rows in sung.items()})
    conditions.update(
        {f"shifted {s:+d}": [pitch_shift_wave(w, sr, float(s)) for w in clean] for s in (2, -2)}
    )
    conditions.update({f"tempo {r:g}": [time_stretch_wave(w, r) for w in clean] for r in (0.9, 1.1)})
    conditions[f"noise {NOISE_SNR_DB:g} dB"] = [add_noise(w, NOISE_SNR_DB, i) for i, w in enumerate(clean)]
    voiced = {name: [voiced_audio(w, audio) for w in waves] for name, waves in conditions.items()}
    features = {name: [SongFeatures(log_mel(w, feats, sr)) for w in waves] for name, waves in voiced.items()}
    labels = np.array([r["singer"] for r in clean_rows])

    train_waves = [voiced_audio(w, audio) for w in load_waves(train_rows)]
    train_songs = [
        TrainingSong(i, SongFeatures(log_mel(w, feats, sr)), r["singer"], r["path"])
        for i, (r, w) in enumerate(zip(train_rows, train_waves))
    ]

    systems: dict[str, dict[str, np.ndarray]] = {}
    policies = [p.strip() for p in args.policies.split(",") if p.strip()] or [settings.timbre.policy]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant, policy in itertools.product(variants, policies):  # one encoder each
        extras = VARIANTS[variant]
        update = {"policy": policy}
        cfg = settings.timbre.model_copy(update=update if extras is None else {**update, "extra_positives": extras})
        t0 = time.perf_counter()
        ws = args.out / "ws" / f"{variant}-{policy}"
        result = train_timbre(train_songs, cfg, feats, sr, ws, device=settings.device)
        model, _ = load_timbre(ws, result.version.version)
        name = f"timbre {policy} [{variant}: {', '.join(cfg.extra_positives) or '-'}]"
        print(f"trained {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        encoder = timbre_encoder(model)
        systems[name] = {c: encoder.embed_songs(fs).cpu().numpy() for c, fs in features.items()}
    for b in [b.strip() for b in args.baselines.split(",") if b.strip()]:
        baseline = make_baseline(b, sr)
        if hasattr(baseline, "fit"):
            baseline.fit(voiced["clean"])
        systems[b] = {c: baseline.embed_many(ws) for c, ws in voiced.items()}

    table = []
    for name, vectors in systems.items():
        row: dict = {"system": name}
        for cond, xq in vectors.items():
            row[cond] = retrieval(xq.astype(np.float32), vectors["clean"].astype(np.float32), labels)[
                "p_at_1"
            ]
        row["mean (not clean)"] = float(np.mean([row[c] for c in conditions if c != "clean"]))
        table.append(row)
    print(
        f"\nsinger P@1; {args.singers} unseen singers x {args.songs} songs x {args.seconds:g} s (seed {args.seed});"
        f" encoders: {args.epochs} epochs x {args.steps} steps on {args.train_singers} x {args.train_songs}"
        f" other singers' songs; device {'cuda' if torch.cuda.is_available() else 'cpu'}\n"
    )
    print(format_table(table, [("system", "system")] + [(c, c) for c in [*conditions, "mean (not clean)"]]))


if __name__ == "__main__":
    main()
