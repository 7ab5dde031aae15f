"""Timbre training variants on a produced catalog, label-free, several seeds: what closes the gap.

    python bench/study_timbre.py [--singers 24] [--songs 6] [--seconds 15] [--corpus-seed 0]
        [--seeds 0,1,2] [--variants default,ps_pos_ts_pos,...] [--out DIR] [--baselines ...]

The catalog and the scoring are bench/bench_timbre_real.py's (every song through its own
production chain, two synthesisers, covers, key- and tempo-changed copies, a clean twin;
every third singer held out; a hit is a song of the query's singer). Unlike that bench, which
runs the whole product path, this one trains the timbre encoder alone, on features computed
once and cached, so that many variants and seeds fit in one run:
each variant is a set of `timbre` settings over the defaults (VARIANTS below), trained on the
seen singers' songs (copies included, no singer labels: the product's case) for every seed.
Prints one markdown table: per system, the mean and spread over seeds of P@1, mAP, top-5
vote, clean-query P@1 and key/tempo P@1, for seen and unseen singers, as ratios to Resemblyzer.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_timbre_real import baseline_embedder, catalogs, score

from recsys.config import AugmentPolicy, Settings
from recsys.encoders import TimbreSongEncoder
from recsys.features import SongFeatures, song_features
from recsys.models.timbre import TimbreEncoder
from recsys.probes import probe_transfer
from recsys.training.contrastive import model_config_for, nearest_neighbour_matrix, train_timbre
from recsys.training.data import TrainingSong

PSEUDO_K = 3  # neighbours per song in the pseudo-singer purity column (timbre.pseudo_neighbours' sense)
FAR_PITCH_NEGATIVE = AugmentPolicy(role="negative", low=3.0, high=6.0)
CHAIN_EXTRAS = ("gain", "noise", "eq", "reverb", "chain", "key")
# Each variant: timbre settings over the defaults (recsys.config.TimbreConfig fields).
VARIANTS: dict[str, dict] = {
    "default": {},
    "ps_neg_ts_neg": {"policy": "ps_neg_ts_neg"},
    "ps_pos_ts_pos": {"policy": "ps_pos_ts_pos"},
    "ps_pos_ts_neg": {"policy": "ps_pos_ts_neg"},
    "ps_neg_ts_pos": {"policy": "ps_neg_ts_pos"},
    "ps_pos_ts_pos+chain": {"policy": "ps_pos_ts_pos", "extra_positives": CHAIN_EXTRAS},
    "ps_neg_ts_neg+chain": {"policy": "ps_neg_ts_neg", "extra_positives": CHAIN_EXTRAS},
    "ps_pos_ts_pos+chain+pseudo3": {"policy": "ps_pos_ts_pos", "extra_positives": CHAIN_EXTRAS, "pseudo_neighbours": 3},
    "ps_neg_ts_neg+chain+pseudo3": {"policy": "ps_neg_ts_neg", "extra_positives": CHAIN_EXTRAS, "pseudo_neighbours": 3},
    "own_song_validation": {"validation": "own_song"},
    # Only large formant-moving shifts (3-6 semitones) are another voice; a re-upload's +-2 is not.
    "ps_neg3-6_ts_neg+chain": {"pitch_shift": FAR_PITCH_NEGATIVE, "extra_positives": CHAIN_EXTRAS},
    "ps_neg3-6_ts_pos+chain": {"policy": "ps_neg_ts_pos", "pitch_shift": FAR_PITCH_NEGATIVE,
                               "extra_positives": CHAIN_EXTRAS},
    "ps_neg3-6_ts_pos+chain+pseudo3": {"policy": "ps_neg_ts_pos", "pitch_shift": FAR_PITCH_NEGATIVE,
                                       "extra_positives": CHAIN_EXTRAS, "pseudo_neighbours": 3},
    "ps_neg3-6_ts_pos+chain+repitch": {"policy": "ps_neg_ts_pos", "pitch_shift": FAR_PITCH_NEGATIVE,
                                       "extra_positives": CHAIN_EXTRAS + ("repitch",)},
    "ps_neg3-6_ts_neg+chain+repitch": {"pitch_shift": FAR_PITCH_NEGATIVE, "extra_positives": CHAIN_EXTRAS + ("repitch",)},
    # No pitch-shifted views at all: what the 3-6 semitone negatives cost the +-2 semitone copies.
    "ps_off_ts_pos+chain": {"policy": "ps_neg_ts_pos", "pitch_shift": AugmentPolicy(role="off"),
                            "extra_positives": CHAIN_EXTRAS},
}


def feature_cache(rows: list[dict], clean: dict[str, str], settings: Settings, out: Path) -> dict[str, SongFeatures]:
    """path -> SongFeatures (log-mel) of every produced song, copy and clean twin, cached on disk."""
    paths = [r["path"] for r in rows] + [clean[r["song_id"]] for r in rows if r["song_id"] in clean]
    key = hashlib.sha256(
        (settings.audio.model_dump_json() + settings.features.model_dump_json() + "\n".join(paths)).encode()
    ).hexdigest()[:12]
    cache = out / f"features-{key}.pt"
    if cache.is_file():
        mels = torch.load(cache)
    else:
        mels = {p: song_features(p, settings.audio, settings.features).mel for p in paths}
        torch.save(mels, cache)
    return {p: SongFeatures(m) for p, m in mels.items()}


def encoder_embedder(model: TimbreEncoder, feats: dict[str, SongFeatures], shifts: tuple[float, ...] = (),
                     chunks: str = "every"):
    """paths -> song vectors; with `shifts`, pooled over those pitch shifts as timbre.pitch_pool does
    (`chunks`: timbre.pitch_pool_chunks)."""
    settings = Settings()
    encoder = TimbreSongEncoder(model.eval(), pitch_pool=shifts, feat_cfg=settings.features,
                                sample_rate=settings.audio.sample_rate, pitch_pool_chunks=chunks)
    return lambda paths: encoder.embed_songs([feats[p] for p in paths]).cpu().numpy()


def queries_only(pooled, plain, catalog: set[str]):
    """An embedder that gives catalog songs their plain vectors and every other file its pooled one."""

    def embed(paths):
        out = plain(paths)
        outside = [k for k, p in enumerate(paths) if p not in catalog]
        if outside:
            out[outside] = pooled([paths[k] for k in outside])
        return out

    return embed


def gender_probe(embed, seen: list[dict], unseen: list[dict]) -> dict[str, float]:
    """A gender probe fitted on the seen singers' songs and scored on the unseen singers' (held out by singer)."""
    train = [r for r in seen if not r["copy_of"]]
    test = [r for r in unseen if not r["copy_of"]]
    return probe_transfer(embed([r["path"] for r in train]), [r["gender"] for r in train],
                          embed([r["path"] for r in test]), [r["gender"] for r in test])


def evaluate(embed, groups: dict[str, list[dict]], clean: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per split, the retrieval figures; the unseen split also gets the gender probe (fitted on the seen singers)."""
    out = {split: score(embed, group, clean) for split, group in groups.items()}
    seen = groups["seen"]
    related = nearest_neighbour_matrix(torch.from_numpy(embed([r["path"] for r in seen])), PSEUDO_K)
    pairs = torch.nonzero(related).tolist()
    out["seen"]["pseudo_purity"] = sum(seen[i]["singer"] == seen[j]["singer"] for i, j in pairs) / len(pairs)
    probe = gender_probe(embed, groups["seen"], groups["unseen"])
    out["unseen"] |= {"gender_accuracy": probe["accuracy"], "gender_macro_f1": probe["macro_f1"]}
    return out


def summarise(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    keys = [k for k in ("p_at_1", "map", "vote", "clean_p_at_1", "copy_p_at_1", "pitch_copy_p_at_1",
                        "tempo_copy_p_at_1", "pseudo_purity", "gender_accuracy", "gender_macro_f1") if k in runs[0]]
    return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in keys} | {
        "n": runs[0]["n"], "n_copies": runs[0]["n_copies"], "seeds": len(runs)}


def table(results: dict[tuple[str, str], dict]) -> str:
    cols = ("p_at_1", "map", "vote", "clean_p_at_1", "copy_p_at_1", "pitch_copy_p_at_1", "tempo_copy_p_at_1")
    heads = ("P@1", "mAP", "top-5 vote", "clean-query P@1", "key/tempo P@1", "of which +-2 st", "of which +-10 %")
    cols += ("pseudo_purity",)
    heads += (f"{PSEUDO_K}-NN pseudo-singer purity",)
    if any("gender_accuracy" in m for m in results.values()):
        cols += ("gender_accuracy", "gender_macro_f1")
        heads += ("gender probe acc. (unseen singers)", "gender macro-F1")
    lines = ["| singers | system | seeds | " + " | ".join(heads) + " |", "|---|---|---:|" + "---:|" * len(heads)]
    for (split, system), m in sorted(results.items(), key=lambda kv: kv[0][0] != "seen"):
        ref = results.get((split, "Resemblyzer"))
        cells = []
        for c in cols:
            if c not in m:
                cells.append("-")
                continue
            mean, sd = m[c]
            spread = f" ±{sd:.3f}" if m["seeds"] > 1 else ""
            ratio = f" ({mean / ref[c][0]:.2f}x)" if ref and c in ref and system != "Resemblyzer" and ref[c][0] > 0 else ""
            cells.append(f"{mean:.3f}{spread}{ratio}")
        lines.append(f"| {split} ({m['n']}+{m['n_copies']}) | {system} | {m['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speaker_backend_runs(train_rows: list[dict], rows: list[dict], seeds: list[int], sample_rate: int, out: Path,
                         groups: dict[str, list[dict]], clean: dict[str, str], timings: list) -> dict[str, list]:
    """Resemblyzer partials (cached on disk) -> the back end trained per seed -> each split's figures."""
    import speaker_backend as sb

    cache_file = out / "resemblyzer-partials.pt"
    cache: dict[str, torch.Tensor] = torch.load(cache_file) if cache_file.is_file() else {}
    partials = None

    def of(key: str, wave_fn) -> torch.Tensor:
        nonlocal partials
        if key not in cache:
            partials = partials or sb.Partials(sample_rate)
            cache[key] = partials(wave_fn())
        return cache[key]

    began = time.time()
    rng = np.random.default_rng(20261202)
    train = []
    for r in train_rows:
        wave = sb.read(r["path"])
        views = sb.views_of(wave, sample_rate, rng)  # drawn in a fixed order: the same views every run
        train.append({name: of(f"{r['path']}#{name}", lambda v=v: v) for name, v in views.items()})
    for r in rows:
        of(r["path"], lambda r=r: sb.read(r["path"]))
        if r["song_id"] in clean:
            of(clean[r["song_id"]], lambda r=r: sb.read(clean[r["song_id"]]))
    torch.save(cache, cache_file)
    print(f"speaker back end: partials of {len(train)} training songs x 4 views and {len(rows)} files "
          f"({time.time() - began:.0f} s)", file=sys.stderr)
    runs: dict[str, list] = {split: [] for split in groups}
    for seed in seeds:
        began = time.time()
        model = sb.train_backend(train, seed, log=lambda m: print(m, file=sys.stderr))
        timings.append(("speaker back end", seed, time.time() - began, -1, sb.STEPS))
        embed = sb.backend_embedder(model, lambda p: cache[p])
        for split, found in evaluate(embed, groups, clean).items():
            runs[split].append(found)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--singers", type=int, default=24)
    p.add_argument("--songs", type=int, default=6)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="default")
    p.add_argument("--epochs", type=int, default=None, help="override timbre.epochs")
    p.add_argument("--patience", type=int, default=None, help="override timbre.patience")
    p.add_argument("--keep", choices=("best", "last"), default=None,
                   help="override timbre.keep (last + a large patience: a fixed schedule)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench_out/study_timbre"))
    p.add_argument("--baselines", default="mfcc_stats,resemblyzer")
    p.add_argument("--pitch-pool", type=float, nargs="*", default=[],
                   help="also score each trained model with its vectors pooled over these pitch shifts "
                        "(semitones, e.g. -2 -1 0 1 2)")
    p.add_argument("--pool-queries-only", action="store_true",
                   help="with --pitch-pool: pool only the vectors of files outside the catalog (copies, clean twins), "
                        "as a search-time option would; catalog songs keep their plain vectors")
    p.add_argument("--pool-chunks", default="every",
                   help="with --pitch-pool: comma-separated timbre.pitch_pool_chunks modes to score "
                        "(every: each chunk at every shift; rotate: chunk j at the j-th shift)")
    p.add_argument("--speaker-backend", action="store_true",
                   help="also Resemblyzer's partials as the front end of a contrastive back end trained "
                        "label-free per seed (bench/speaker_backend.py)")
    args = p.parse_args()
    for name in filter(None, args.variants.split(",")):
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    for mode in filter(None, args.pool_chunks.split(",")):
        if mode not in ("every", "rotate"):
            p.error(f"--pool-chunks: unknown mode {mode!r}; valid: every, rotate")
    seeds = [int(s) for s in args.seeds.split(",")]
    ns = argparse.Namespace(singers=args.singers, songs=args.songs, seconds=args.seconds, seed=args.corpus_seed,
                            workers=args.workers)
    tag = f"s{args.singers}x{args.songs}x{args.seconds:g}_seed{args.corpus_seed}"
    out = args.out / tag
    t0 = time.time()
    rows, clean = catalogs(out, ns)
    settings = Settings()
    feats = feature_cache(rows, clean, settings, out)
    print(f"catalog {tag}: {len(rows)} files, corpus + features {time.time() - t0:.0f} s", file=sys.stderr)
    singers = sorted({r["singer"] for r in rows})
    unseen = set(singers[2::3])
    groups = {"seen": [r for r in rows if r["singer"] not in unseen],
              "unseen": [r for r in rows if r["singer"] in unseen]}
    train_rows = groups["seen"]  # copies included: the catalog the product trains on
    songs = [TrainingSong(k, feats[r["path"]], None, hashlib.sha256(r["path"].encode()).hexdigest())
             for k, r in enumerate(train_rows)]

    results: dict[tuple[str, str], dict] = {}
    fit = [r["path"] for r in train_rows if not r["copy_of"]]
    names = {"mfcc_stats": "MFCC statistics", "resemblyzer": "Resemblyzer"}
    for name in filter(None, args.baselines.split(",")):
        try:
            embed = baseline_embedder(name, fit, settings.audio.sample_rate)
        except ImportError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        for split, found in evaluate(embed, groups, clean).items():
            results[(split, names.get(name, name))] = summarise([found])
    untrained = {split: [] for split in groups}
    for seed in seeds:
        torch.manual_seed(seed)
        model = TimbreEncoder(model_config_for(settings.timbre.model_copy(update={"seed": seed}), settings.features))
        for split, found in evaluate(encoder_embedder(model, feats), groups, clean).items():
            untrained[split].append(found)
    for split in groups:
        results[(split, "untrained encoder")] = summarise(untrained[split])

    timings = []
    if args.speaker_backend:
        for split, runs in speaker_backend_runs(train_rows, rows, seeds, settings.audio.sample_rate, out,
                                                groups, clean, timings).items():
            results[(split, "Resemblyzer front end + contrastive back end")] = summarise(runs)
    pooled_shifts = tuple(args.pitch_pool)
    pool_modes = [m for m in args.pool_chunks.split(",") if m] if pooled_shifts else []
    catalog_paths = {r["path"] for r in rows if not r["copy_of"]}
    for variant in filter(None, args.variants.split(",")):
        runs = {split: [] for split in groups}
        pooled = {(mode, split): [] for mode in pool_modes for split in groups}
        for seed in seeds:
            update = {**VARIANTS[variant], "seed": seed}
            if args.epochs is not None:
                update["epochs"] = args.epochs
            if args.patience is not None:
                update["patience"] = args.patience
            if args.keep is not None:
                update["keep"] = args.keep
            cfg = settings.timbre.model_copy(update=update)
            began = time.time()
            with tempfile.TemporaryDirectory() as ws:
                result = train_timbre(songs, cfg, settings.features, settings.audio.sample_rate, Path(ws),
                                      device="cpu", resume=False)
            timings.append((variant, seed, time.time() - began, result.best_epoch, len(result.history)))
            print(f"{variant} seed {seed}: {timings[-1][2]:.0f} s, best epoch {result.best_epoch} of "
                  f"{len(result.history)}", file=sys.stderr)
            for split, found in evaluate(encoder_embedder(result.model, feats), groups, clean).items():
                runs[split].append(found)
            for mode in pool_modes:
                embed = encoder_embedder(result.model, feats, pooled_shifts, mode)
                if args.pool_queries_only:
                    embed = queries_only(embed, encoder_embedder(result.model, feats), catalog_paths)
                for split, found in evaluate(embed, groups, clean).items():
                    pooled[(mode, split)].append(found)
        for split in groups:
            results[(split, f"trained: {variant}")] = summarise(runs[split])
            for mode in pool_modes:
                shifts = ", ".join(f"{s:+g}" for s in pooled_shifts)
                where = "queries" if args.pool_queries_only else "vectors"
                results[(split, f"trained: {variant}, {where} pooled over {shifts} st ({mode})")] = \
                    summarise(pooled[(mode, split)])

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"catalog {tag}; {len(songs)} training songs, label-free; seeds {seeds}; commit {commit}; "
          f"{platform.node()} {platform.processor() or platform.machine()} {torch.get_num_threads()} threads; "
          f"total {time.time() - t0:.0f} s")
    for variant, seed, secs, best, epochs in timings:
        print(f"- {variant} seed {seed}: {secs:.0f} s, best epoch {best} of {epochs}")
    print(table(results))


if __name__ == "__main__":
    main()
