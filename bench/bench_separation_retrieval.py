"""Singer retrieval on mixed songs, with and without accompaniment suppression, beside a cappella.

    python bench/bench_separation_retrieval.py [--singers 12] [--songs 4] [--seconds 12]
        [--train-singers 16] [--epochs 12] [--methods none,classical] [--vocal-activity]
        [--per-condition] [--out DIR]

Two demo catalogs from recsys.corpus.generate_corpus with the same seed, so the same
singers sing the same takes: a cappella, and with a generated accompaniment mixed
in (--accompaniment-db relative to the voice). A timbre encoder is trained on a
third, a cappella catalog of other singers (another seed), so no evaluated voice was
seen in training. Each condition embeds the evaluation songs through the product
path, recsys.features.song_mel(path, audio, features, separator), i.e. separation
before silence removal, and scores leave-one-out singer retrieval on the timbre
vectors (recsys.evaluation.retrieval_metrics: P@1, mAP@10, top-5 vote).

With --vocal-activity, each mixed condition is also scored with audio.vocal_activity on
(frames without a sung pitch dropped after separation).

With --per-condition, an encoder is also trained on the other singers' catalog
*as heard under each condition* (mixed, then separated with the
method), i.e. train and test audio go through the same path, as in a product
whose catalog is all mixed songs. Prints a table and the timings.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.config import load_settings
from recsys.corpus import generate_corpus
from recsys.encoders import timbre_encoder
from recsys.evaluation import format_table, retrieval_metrics
from recsys.features import SongFeatures, song_mel
from recsys.separation import make_separator
from recsys.training.contrastive import train_timbre
from recsys.training.data import TrainingSong


def read_manifest(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return [row | {"path": str(manifest.parent / row["path"])} for row in csv.DictReader(f)]


def mels(rows: list[dict[str, str]], settings, separator, audio=None) -> tuple[list[torch.Tensor], float]:
    """(n_mels, T) log-mel of each song through the product path; returns (mels, seconds spent)."""
    start = time.perf_counter()
    audio = audio or settings.audio
    out = [song_mel(row["path"], audio, settings.features, separator) for row in rows]
    return out, time.perf_counter() - start


def train(rows: list[dict[str, str]], song_mels: list[torch.Tensor], settings, workspace: Path):
    songs = [
        TrainingSong(i, SongFeatures(m), row["singer"], row["path"]) for i, (row, m) in enumerate(zip(rows, song_mels))
    ]
    result = train_timbre(
        songs,
        settings.timbre,
        settings.features,
        settings.audio.sample_rate,
        workspace,
        device=settings.device,
    )
    from recsys.training.contrastive import load_timbre

    model, _ = load_timbre(workspace, result.version.version)
    return model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def timbre_vectors(model, song_mels: list[torch.Tensor]) -> np.ndarray:
    """(n_songs, D) timbre vectors, as the product embeds (recsys.encoders.TimbreSongEncoder)."""
    vectors = timbre_encoder(model).embed_songs([SongFeatures(m) for m in song_mels])
    return vectors.cpu().numpy().astype(np.float32)


def leave_one_out(x: np.ndarray, labels: np.ndarray) -> dict:
    """Each song queries all the others."""
    return retrieval_metrics(x, x, labels, labels, np.arange(len(labels)), k=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singers", type=int, default=12)
    ap.add_argument("--songs", type=int, default=4, help="songs per singer")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--train-singers", type=int, default=16)
    ap.add_argument("--train-songs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--accompaniment-db", type=float, default=-6.0)
    ap.add_argument("--methods", default="none,classical", help="separation methods on the mixed catalog")
    ap.add_argument("--per-condition", action="store_true", help="also train one encoder per condition")
    ap.add_argument("--vocal-activity", action="store_true", help="also score mixed songs with vocal activity")
    ap.add_argument("--seed", type=int, default=0, help="evaluation catalog seed (training uses seed + 1000)")
    ap.add_argument("--out", type=Path, default=Path("bench-separation-retrieval"))
    args = ap.parse_args()

    settings = load_settings(
        manifest_file=None,
        workspace=args.out / "ws",
        device="auto",
        timbre={"epochs": args.epochs, "steps_per_epoch": args.steps, "patience": args.epochs},
    )
    gen = {"song_seconds": args.seconds, "workers": None}
    t0 = time.perf_counter()
    eval_clean = read_manifest(
        generate_corpus(args.out / "eval-acappella", args.singers, args.songs, seed=args.seed, **gen)
    )
    eval_mixed = read_manifest(
        generate_corpus(
            args.out / "eval-mixed",
            args.singers,
            args.songs,
            seed=args.seed,
            accompaniment=True,
            accompaniment_db=args.accompaniment_db,
            **gen,
        )
    )
    train_seed = args.seed + 1000
    train_clean = read_manifest(
        generate_corpus(
            args.out / "train-acappella", args.train_singers, args.train_songs, seed=train_seed, **gen
        )
    )
    print(f"generated catalogs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    labels = np.array([row["singer"] for row in eval_clean])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    separators = {m: (None if m == "none" else make_separator(m)) for m in methods}

    train_mels, _ = mels(train_clean, settings, None)
    t0 = time.perf_counter()
    model = train(train_clean, train_mels, settings, args.out / "ws" / "acappella")
    print(f"trained the a cappella encoder in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    conditions: list[tuple[str, list[dict[str, str]], str, bool]] = [("a cappella", eval_clean, "none", False)]
    conditions += [(f"mixed, separation {m}", eval_mixed, m, False) for m in methods]
    if args.vocal_activity:
        conditions += [(f"mixed, separation {m} + vocal activity", eval_mixed, m, True) for m in methods]
    rows = []
    eval_audio_s = len(eval_mixed) * args.seconds
    for name, catalog_rows, method, vocal in conditions:
        audio = settings.audio.model_copy(update={"vocal_activity": vocal})
        separator = separators[method] if method != "none" else None
        song_mels, spent = mels(catalog_rows, settings, separator, audio)
        metrics = leave_one_out(timbre_vectors(model, song_mels), labels)
        rows.append(
            {
                "condition": name,
                "trained on": "a cappella (other singers)",
                "p_at_1": metrics["p_at_1"],
                "map_at_k": metrics["map_at_k"],
                "vote_acc": metrics["vote_acc"],
                "x_real_time": eval_audio_s / spent,
            }
        )
        print(f"{name}: {rows[-1]}", file=sys.stderr)

    if args.per_condition:
        train_mixed = read_manifest(
            generate_corpus(
                args.out / "train-mixed",
                args.train_singers,
                args.train_songs,
                seed=train_seed,
                accompaniment=True,
                accompaniment_db=args.accompaniment_db,
                **gen,
            )
        )
        for method in methods:
            separator = separators[method] if method != "none" else None
            train_mels, _ = mels(train_mixed, settings, separator)
            model = train(train_mixed, train_mels, settings, args.out / "ws" / f"mixed-{method}")
            song_mels, spent = mels(eval_mixed, settings, separator)
            metrics = leave_one_out(timbre_vectors(model, song_mels), labels)
            rows.append(
                {
                    "condition": f"mixed, separation {method}",
                    "trained on": f"mixed, separation {method}",
                    "p_at_1": metrics["p_at_1"],
                    "map_at_k": metrics["map_at_k"],
                    "vote_acc": metrics["vote_acc"],
                    "x_real_time": eval_audio_s / spent,
                }
            )
            print(f"per-condition {method}: {rows[-1]}", file=sys.stderr)

    print(
        f"\n{args.singers} singers x {args.songs} songs x {args.seconds:g} s; accompaniment "
        f"{args.accompaniment_db:g} dB; encoder: {args.epochs} epochs x {args.steps} steps on "
        f"{args.train_singers} x {args.train_songs} other singers' songs; device {settings.device}\n"
    )
    print(
        format_table(
            rows,
            [
                ("condition", "condition"),
                ("trained on", "encoder trained on"),
                ("p_at_1", "P@1"),
                ("map_at_k", "mAP@10"),
                ("vote_acc", "vote@5"),
                ("x_real_time", "audio path x real time"),
            ],
        )
    )


if __name__ == "__main__":
    main()
