"""Timbre retrieval on a produced catalog, label-free, every default: the product's case.

    python bench/bench_timbre_real.py [--small] [--singers 30] [--songs 8] [--seconds 30]
        [--seed 0] [--workers N] [--out DIR] [--baselines mfcc_stats,resemblyzer] [--retrain]
        [--front-ends log-mel,speaker] [--shares 0,0.2,0.5,1]

The catalog (recsys.corpus.generate_corpus) has every song through its own production
chain (EQ, band limit, room, noise at 20-40 dB SNR, level), two synthesisers, covers, and
key- (+-2 semitones, formants moving) and tempo-changed (+-10 %) copies; a clean twin (the
same takes without production) is generated beside it. Every third singer is held out.

The product's path: the other singers' songs (copies included) are ingested by path only,
with no singer column, into a fresh workspace, and `Recommender.train()` runs with every
default (a workspace trained on the same files is reused; --retrain). Then, for the singers the model trained on ("seen": leave-one-out over the
catalog it trained on) and for the held-out singers ("unseen"), the gallery is their
produced songs and the queries are

- produced:   each gallery song, itself left out (P@1, mAP, top-5 vote);
- clean:      the unproduced twin of each song, its produced version left out (P@1): a
              vector that encodes the chain instead of the voice loses here;
- key/tempo:  the copies, their original left out (P@1).

A hit is a song of the query's singer (recsys.evaluation.retrieval_metrics). The same
audio is scored by MFCC statistics, Resemblyzer (the `speaker` extra, when installed) and
the untrained encoder (the default architecture at its initial weights); with
`--front-ends log-mel,speaker` the product is also trained, in a workspace of its own, with
`timbre.front_end: speaker` (Resemblyzer's partials under a back end trained on the catalog), so
the two front ends are scored side by side; with log-mel+speaker, `--shares` adds rows of its two trained
parts re-weighted to other speaker shares (0: the log-mel part alone, 1: the speaker part alone), so
the share is read off without training again. Ratios are to Resemblyzer. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.api import Recommender
from recsys.baselines import make_baseline
from recsys.corpus import generate_corpus
from recsys.encoders import timbre_encoder
from recsys.errors import ModelMismatchError
from recsys.evaluation import retrieval_metrics
from recsys.features import song_features
from recsys.models.timbre import TimbreEncoder
from recsys.probes import probe_transfer
from recsys.training.contrastive import model_config_for

Embed = Callable[[list[str]], np.ndarray]
CONDITIONS = ("produced", "clean", "key/tempo")


def catalogs(out: Path, args: argparse.Namespace) -> tuple[list[dict], dict[str, str]]:
    """The produced catalog's rows (absolute paths) and song_id -> path of the clean twin."""
    common = {"n_singers": args.singers, "songs_per_singer": args.songs, "song_seconds": args.seconds,
              "seed": args.seed, "workers": args.workers, "common_melodies": min(2, args.songs),
              "voice_models": ("rosenberg_cascade", "lf_parallel")}
    produced = generate_corpus(out / "produced", produced=True, copies=True, **common)
    clean = generate_corpus(out / "clean", **common)

    def rows(manifest: Path) -> list[dict]:
        with open(manifest, newline="", encoding="utf-8") as f:
            return [dict(r, path=str(manifest.parent / r["path"])) for r in csv.DictReader(f)]

    return rows(produced), {r["song_id"]: r["path"] for r in rows(clean)}


def workspace_name(front_end: str) -> str:
    """One workspace per front end, whichever comes first: a reused workspace holds that front end's model."""
    return "workspace" if front_end == "log-mel" else f"workspace-{front_end}"


def train_product(ws: Path, rows: list[dict], retrain: bool, front_end: str = "log-mel") -> Recommender:
    """Ingest by path only (no labels) and train with every default but `front_end`; a workspace already
    trained on the same files is reused unless `retrain`."""
    overrides = {} if front_end == "log-mel" else {"timbre": {"front_end": front_end}}
    listing = "path\n" + "".join(f"{r['path']}\n" for r in rows)
    manifest = ws / "paths.csv"
    trained = (ws / "models" / "CURRENT").is_file() and manifest.is_file()
    if not retrain and trained and manifest.read_text(encoding="utf-8") == listing:
        rec = Recommender.open(workspace=ws, **overrides)
        try:
            _ = rec.models  # trained for today's audio settings?
            return rec
        except ModelMismatchError as e:
            print(f"retraining: {e}", file=sys.stderr)
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    manifest.write_text(listing, encoding="utf-8")
    rec = Recommender.open(workspace=ws, **overrides)
    rec.ingest(manifest, workers=1)
    rec.train()
    return rec


def product_embedder(rec: Recommender) -> Embed:
    """Catalog songs: their stored vectors (what search uses); other files: Recommender.embed_files."""
    ids, vectors = rec.catalog_vectors()
    by_path = {row["path"]: row["id"] for row in rec.songs()}
    row_of = {int(i): k for k, i in enumerate(ids)}

    def embed(paths: list[str]) -> np.ndarray:
        out = np.zeros((len(paths), vectors.timbre.shape[1]), np.float32)
        missing = [k for k, p in enumerate(paths) if by_path.get(p) not in row_of]
        for k, p in enumerate(paths):
            if k not in missing:
                out[k] = vectors.timbre[row_of[by_path[p]]]
        if missing:
            _, other, failed = rec.embed_files([paths[k] for k in missing])
            assert not failed, failed
            out[missing] = other.timbre
        return out

    return embed


def file_embedder(rec: Recommender, model: TimbreEncoder) -> Embed:
    """`model`'s plain vector (timbre.pitch_pool off) of every file, from its features."""
    s = rec.settings
    encoder = timbre_encoder(model.eval())

    def embed(paths: list[str]) -> np.ndarray:
        feats = [song_features(p, s.audio, s.features) for p in paths]
        return encoder.embed_songs(feats).cpu().numpy()

    return embed


def untrained_embedder(rec: Recommender) -> Embed:
    s = rec.settings
    torch.manual_seed(s.timbre.seed)
    return file_embedder(rec, TimbreEncoder(model_config_for(s.timbre, s.features)))


def baseline_embedder(name: str, fit_paths: list[str], sample_rate: int) -> Embed:
    model = make_baseline(name, sample_rate=sample_rate, device="cpu")

    def read(p: str) -> np.ndarray:
        return sf.read(p, dtype="float32")[0]

    if hasattr(model, "fit"):
        model.fit([read(p) for p in fit_paths])
    return lambda paths: model.embed_many([read(p) for p in paths])


def memoised(embed: Embed) -> Embed:
    """`embed` computed once per path (the gallery is read by the retrieval scores and by the probe)."""
    done: dict[str, np.ndarray] = {}

    def cached(paths: list[str]) -> np.ndarray:
        todo = [p for p in dict.fromkeys(paths) if p not in done]
        if todo:
            done.update(zip(todo, embed(todo)))
        return np.stack([done[p] for p in paths]) if paths else np.zeros((0, 0), np.float32)

    return cached


def reweighted(embed: Embed, rec: Recommender, share: float) -> Embed:
    """A log-mel+speaker vector with another speaker share: each part is a unit vector scaled by the square
    root of its share (recsys.encoders.CombinedTimbreEncoder), so rescaling the parts re-weights the cosine.
    Share 0 is the log-mel part alone, 1 the speaker part alone, with no training."""
    log_mel_dim, trained = rec.models.timbre.parts[0].dim, rec.models.timbre.model.share

    def embed_at(paths: list[str]) -> np.ndarray:
        v = embed(paths)
        a, b = v[:, :log_mel_dim] / np.sqrt(1 - trained), v[:, log_mel_dim:] / np.sqrt(trained)
        return np.concatenate([np.sqrt(1 - share) * a, np.sqrt(share) * b], axis=1).astype(np.float32)

    return embed_at


def gender_probe(embed: Embed, seen: list[dict], unseen: list[dict]) -> dict[str, float]:
    """A gender probe fitted on the seen singers' produced songs, scored on the unseen singers' (held
    out by singer): the voice attribute a space that learned the voice carries (issue 15, item 7)."""
    train, test = ([r for r in rows if not r["copy_of"]] for rows in (seen, unseen))
    return probe_transfer(embed([r["path"] for r in train]), [r["gender"] for r in train],
                          embed([r["path"] for r in test]), [r["gender"] for r in test])


def score(embed: Embed, rows: list[dict], clean: dict[str, str]) -> dict[str, float]:
    """The three query conditions over one group of singers' songs."""
    gallery = [r for r in rows if not r["copy_of"]]
    copies = [r for r in rows if r["copy_of"]]
    xb = embed([r["path"] for r in gallery])
    yb = np.array([r["singer"] for r in gallery])
    position = {r["song_id"]: k for k, r in enumerate(gallery)}
    loo = retrieval_metrics(xb, xb, yb, yb, np.arange(len(yb)), k=10, vote_k=5)
    xc = embed([clean[r["song_id"]] for r in gallery])
    cl = retrieval_metrics(xc, xb, yb, yb, np.arange(len(yb)), k=10, vote_k=5)
    xk = embed([r["path"] for r in copies])
    copy_singers = np.array([r["singer"] for r in copies])
    left_out = np.array([position[r["copy_of"]] for r in copies])
    kt = retrieval_metrics(xk, xb, copy_singers, yb, left_out, k=10, vote_k=5)
    kinds = np.array([r.get("copy_kind", "") for r in copies])
    by_kind = {f"{kind}_copy_p_at_1": retrieval_metrics(xk[kinds == kind], xb, copy_singers[kinds == kind], yb,
                                                        left_out[kinds == kind], k=10, vote_k=5)["p_at_1"]
               for kind in ("pitch", "tempo") if (kinds == kind).any()}
    return {"p_at_1": loo["p_at_1"], "map": loo["map"], "vote": loo["vote_acc"], "clean_p_at_1": cl["p_at_1"],
            "copy_p_at_1": kt["p_at_1"], **by_kind, "n": len(gallery), "n_copies": len(copies)}


def table(results: dict[tuple[str, str], dict[str, float]]) -> str:
    cols = ("p_at_1", "map", "vote", "clean_p_at_1", "copy_p_at_1", "pitch_copy_p_at_1", "tempo_copy_p_at_1",
            "gender_accuracy")
    heads = ("P@1", "mAP", "top-5 vote", "clean-query P@1", "key/tempo P@1", "of which +-2 st", "of which +-10 %",
             "gender probe (unseen singers)")
    lines = ["| singers | system | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for (split, system), m in results.items():
        ref = results.get((split, "Resemblyzer"))
        cells = []
        for c in cols:
            if c not in m:
                cells.append("-")
                continue
            ratio = (f" ({m[c] / ref[c]:.2f}x)" if ref is not None and system != "Resemblyzer" and ref.get(c, 0) > 0
                     else "")
            cells.append(f"{m[c]:.3f}{ratio}")
        lines.append(f"| {split} ({m['n']} songs, {m['n_copies']} copies) | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="12 singers x 4 songs x 12 s")
    p.add_argument("--singers", type=int, default=30)
    p.add_argument("--songs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench_out/timbre_real"))
    p.add_argument("--baselines", default="mfcc_stats,resemblyzer")
    p.add_argument("--retrain", action="store_true", help="train again even if the workspace is trained")
    p.add_argument("--front-ends", default="log-mel", help="timbre.front_end values to train and score, "
                   "e.g. log-mel,speaker (the first is the default row)")
    p.add_argument("--shares", default="", help="log-mel+speaker: also score these speaker shares, e.g. "
                   "0,0.2,0.5,1 (the trained parts re-weighted; 0 is the log-mel part alone, 1 the speaker part)")
    args = p.parse_args()
    if args.small:
        args.singers, args.songs, args.seconds = 12, 4, 12.0
    tag = f"s{args.singers}x{args.songs}x{args.seconds:g}_seed{args.seed}"
    out = args.out.resolve() / tag  # absolute: the manifest it writes is read from its own folder
    t0 = time.time()
    rows, clean = catalogs(out, args)
    t_corpus = time.time() - t0
    singers = sorted({r["singer"] for r in rows})
    unseen = set(singers[2::3])
    groups = {"seen": [r for r in rows if r["singer"] not in unseen], "unseen": [r for r in rows if r["singer"] in unseen]}

    front_ends = [f for f in args.front_ends.split(",") if f]
    t0 = time.time()
    rec = train_product(out / workspace_name(front_ends[0]), groups["seen"], args.retrain, front_ends[0])
    t_train = time.time() - t0
    others = {}
    for front_end in front_ends[1:]:
        began = time.time()
        others[front_end] = train_product(out / workspace_name(front_end), groups["seen"], args.retrain, front_end)
        print(f"front end {front_end}: trained in {time.time() - began:.0f} s", file=sys.stderr)

    fit = [r["path"] for r in groups["seen"] if not r["copy_of"]]
    systems: dict[str, Embed] = {}
    names = {"mfcc_stats": "MFCC statistics", "resemblyzer": "Resemblyzer"}
    for name in filter(None, args.baselines.split(",")):
        try:
            systems[names.get(name, name)] = baseline_embedder(name, fit, rec.settings.audio.sample_rate)
        except ImportError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
    systems["untrained encoder"] = untrained_embedder(rec)
    trained = {f"trained encoder (default, label-free{'' if front_ends[0] == 'log-mel' else ', ' + front_ends[0]})": rec,
               **{f"trained encoder, timbre.front_end {fe} (label-free)": other for fe, other in others.items()}}
    for system, product in trained.items():
        systems[system] = embed = memoised(product_embedder(product))
        if product.settings.timbre.front_end == "log-mel+speaker":
            for share in (float(x) for x in args.shares.split(",") if x):
                systems[f"the same, speaker_share {share:g} (re-weighted)"] = reweighted(embed, product, share)
    if getattr(rec.models.timbre, "pitch_pool", ()):
        systems["same model, plain vector (pitch_pool off)"] = file_embedder(rec, rec.models.timbre.model)  # what pooling adds

    systems = {name: memoised(embed) for name, embed in systems.items()}
    results = {}
    for split, group in groups.items():
        for system, embed in systems.items():
            results[(split, system)] = score(embed, group, clean)
    for system, embed in systems.items():
        results[("unseen", system)]["gender_accuracy"] = gender_probe(embed, groups["seen"], groups["unseen"])["accuracy"]
    print(f"catalog {tag}: {len(rows)} files ({t_corpus:.0f} s), training {t_train:.0f} s, "
          f"total {time.time() - t0 + t_corpus:.0f} s; model {rec.model_version}; "
          f"{platform.node()} {torch.get_num_threads()} threads")
    print(table(results))


if __name__ == "__main__":
    main()
