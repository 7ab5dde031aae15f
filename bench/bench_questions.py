"""Does search answer the question asked? A covers catalog, every default, through the public API.

    python bench/bench_questions.py [--singers 10] [--songs 12] [--common 4] [--seconds 30]
        [--produced] [--seed 0] [--out DIR] [--timbre-epochs N]

The catalog (recsys.corpus.generate_corpus with common_melodies): every singer sings the
same `--common` melodies among their own songs (a karaoke or covers catalog). It is
ingested by path only and trained with `Recommender.train()`; then every catalog song
queries the rest (`Recommender.search_song`, its own song left out) and the table says:

- same singer on top:  the top of the singers list is the query's singer (and, second
  figure, the top of the songs list is a song of that singer);
- cover on top:        for shared-melody queries, the fraction whose top singer's best song
  or top song is the same melody by another singer (the fused ranking's old failure);
- same melody found:   for shared-melody queries, the first song by another singer is the
  same melody.

Rows: the three questions (`by="singer"`, the default; `"song"`; `"melody"`), the timbre
vector alone and the raw (uncalibrated) 0.7 / 0.3 fusion the product shipped before.
Issue 16's targets: default singer figures >= timbre alone's, cover on top < 5 %, and the
melody question's same-melody figure >= .95.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.api import Recommender
from recsys.config import load_settings
from recsys.corpus import generate_corpus
from recsys.embedding import Weights


def rows_of(rec: Recommender, truth: dict[int, tuple[str, str]]) -> list[dict]:
    singers_of: dict[str, set[str]] = {}
    for singer, melody in truth.values():
        singers_of.setdefault(melody, set()).add(singer)
    shared = {i for i, (_, m) in truth.items() if len(singers_of[m]) > 1}
    raw = Recommender(rec.settings.model_copy(update={"fusion": rec.settings.fusion.model_copy(
        update={"calibration": "none"})}))
    rankings = {
        "singer (default)": lambda i: rec.search_song(i, k=20),
        "song": lambda i: rec.search_song(i, k=20, by="song"),
        "melody": lambda i: rec.search_song(i, k=20, by="melody"),
        "timbre vector alone": lambda i: rec.search_song(i, k=20, weights=Weights(1.0, 0.0)),
        "raw cosines 0.7 / 0.3 (before)": lambda i: raw.search_song(i, k=20, weights=Weights(0.7, 0.3)),
    }
    rows = []
    for name, search in rankings.items():
        top_singer = top_song_singer = covers = melody_found = 0
        for song_id, (singer, melody) in truth.items():
            result = search(song_id)
            top_singer += result.singers[0].singer == singer
            top_song_singer += truth[result.songs[0].song_id][0] == singer
            if song_id in shared:
                tops = truth[result.songs[0].song_id], truth[result.singers[0].best_song_id]
                covers += any(s != singer and m == melody for s, m in tops)
                others = [h for h in result.songs if truth[h.song_id][0] != singer]
                melody_found += bool(others) and truth[others[0].song_id][1] == melody
        n, ns = len(truth), max(len(shared), 1)
        rows.append({"name": name, "singer_top": top_singer / n, "song_top_singer": top_song_singer / n,
                     "cover_on_top": covers / ns, "melody_found": melody_found / ns, "queries": n, "shared": ns})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [("| ranking | top singer is the query's singer | top song is by the query's singer | "
              "cover on top (shared-melody queries) | same melody by another singer first |"),
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['singer_top']:.3f} | {r['song_top_singer']:.3f} | "
                     f"{100 * r['cover_on_top']:.1f} % | {r['melody_found']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--singers", type=int, default=10)
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--common", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--produced", action="store_true", help="every song through its own production chain")
    ap.add_argument("--timbre-epochs", type=int, default=None, help="cap the timbre schedule (default: the config's)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-questions"))
    args = ap.parse_args()

    began = time.perf_counter()
    manifest = generate_corpus(args.out / "corpus", n_singers=args.singers, songs_per_singer=args.songs,
                               song_seconds=args.seconds, seed=args.seed, common_melodies=args.common,
                               produced=args.produced)
    overrides = {"timbre": {"epochs": args.timbre_epochs}} if args.timbre_epochs else {}
    settings = load_settings(manifest_file=None, workspace=args.out / "ws", device="cpu", **overrides)
    rec = Recommender(settings)
    phases = {"generate": time.perf_counter() - began}
    mark = time.perf_counter()
    rec.ingest(manifest)
    phases["ingest"], mark = time.perf_counter() - mark, time.perf_counter()
    rec.train()  # both encoders, then the catalog embedded under the new pair and its index
    phases["train + embed"], mark = time.perf_counter() - mark, time.perf_counter()
    with open(manifest, encoding="utf-8") as f:
        melody_of = {str((manifest.parent / row["path"]).resolve()): row["melody_id"] for row in csv.DictReader(f)}
    truth = {song["id"]: (song["singer"], melody_of[song["path"]]) for song in rec.songs()}
    rows = rows_of(rec, truth)
    phases["queries"] = time.perf_counter() - mark
    print(f"# {args.singers} singers x {args.songs} songs x {args.seconds:g} s, {args.common} melodies sung by "
          f"every singer{', produced' if args.produced else ''}; {rows[0]['queries']} queries, "
          f"{rows[0]['shared']} shared-melody; {platform.processor() or platform.machine()}, "
          f"{time.perf_counter() - began:.0f} s")
    print(markdown(rows))
    print("seconds: " + ", ".join(f"{name} {secs:.0f}" for name, secs in phases.items()))


if __name__ == "__main__":
    main()
