"""Melody vectors on the demo catalog: TCAE variants against chroma baselines, plus speed.

    .venv/bin/python bench/bench_melody.py [--threads 2] [--epochs 30] [--variants mel pitch-ki ...]
        [--singers 24] [--songs 8] [--seconds 30] [--markdown docs/melody_table.md]

The catalog is recsys.corpus.generate_corpus (the demo catalog: 24 singers x 8 songs
x 30 s, about half the songs on melodies shared by 2-4 singers, each singer in their
own key and at +-6 % tempo). Query sets "+2" / "-2": every shared-melody song sung
again (a new take) 2 semitones up / down. The TCAE is unsupervised, so each variant
is trained on the catalog it serves, as the product does; labels are only used to
score.

Figures:
  P@1        nearest other song is the same melody by another singer (shared-melody songs)
  P@1 +-2    the same for the transposed takes (their own original left out), mean of +2 and -2
  valid      held-out reconstruction MSE at the best epoch (not comparable across inputs)
  train s    wall time of train_melody
  embed ms   per 30 s song, and for a 3-minute song after warm-up (best variant)
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from recsys import corpus
from recsys.config import FeatureConfig, MelodyConfig
from recsys.features import log_mel
from recsys.training.data import SongFeatures
from recsys.training.tcae import compare_melody_variants

SR = 16000
FEAT = FeatureConfig()
VARIANTS = {
    "mel": {"input": "mel"},
    "pitch": {"input": "pitch"},
    "mel+pitch": {"input": "mel+pitch"},
    "pitch-ki": {"input": "pitch", "key_invariant": True},
    "mel+pitch-ki": {"input": "mel+pitch", "key_invariant": True},
}


def demo_catalog(out: Path, n_singers: int, songs: int, seconds: float) -> tuple[list[SongFeatures], dict]:
    """Generate the demo catalog, return its songs and the +-2 semitone query sets."""
    manifest = corpus.generate_corpus(out, n_singers, songs, seconds, seed=0, sample_rate=SR, workers=2)
    with open(manifest, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    voices = {v.name: v for v in corpus.make_singers(n_singers, 0)}
    n_mel = 1 + max(int(r["melody_id"].split("_")[1]) for r in rows)
    melodies = {m.melody_id: m for m in corpus.make_melodies(n_mel, 0)}
    sung_by: dict[str, set] = {}
    for r in rows:
        sung_by.setdefault(r["melody_id"], set()).add(r["singer"])
    songs_out, queries = [], {"+2": [], "-2": []}
    for i, r in enumerate(rows):
        wave, sr = sf.read(out / r["path"], dtype="float32")
        assert sr == SR
        songs_out.append(SongFeatures(i, log_mel(torch.from_numpy(wave), FEAT, SR), r["singer"], r["song_id"],
                                      {"melody": r["melody_id"]}))
        if len(sung_by[r["melody_id"]]) < 2:
            continue
        voice = voices[r["singer"]]
        melody = melodies[r["melody_id"]]
        transpose = int(r["key_shift"]) - corpus.key_for(voice, melody) + melody.tonic_midi
        performed = replace(melody, tempo_bpm=float(r["tempo_bpm"]))
        for name, shift in (("+2", 2), ("-2", -2)):
            take = corpus.sing(voice, performed, seconds, SR, seed=10_000 + i, transpose=transpose + shift)
            queries[name].append(SongFeatures(100_000 + i, log_mel(torch.from_numpy(take), FEAT, SR), r["singer"],
                                              "", {"melody": r["melody_id"], "source": i}))
    return songs_out, queries


def _cell(row: dict, key: str, fmt: str = "{:.3f}") -> str:
    return fmt.format(row[key]) if key in row else "-"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| variant | P@1 | P@1 +2 | P@1 -2 | P@1 +-2 mean | valid | epochs | train s | embed ms/song | embed ms/3 min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["name"], _cell(r, "p_at_1"), _cell(r, "p_at_1_+2"), _cell(r, "p_at_1_-2"),
                 _cell(r, "p_at_1_transposed"), _cell(r, "valid_loss", "{:.4f}"), _cell(r, "epochs", "{}"),
                 _cell(r, "train_s", "{:.0f}"), _cell(r, "embed_ms", "{:.1f}"), _cell(r, "embed_3min_ms", "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--singers", type=int, default=24)
    ap.add_argument("--songs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--channels", type=int, default=MelodyConfig().channels)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        songs, queries = demo_catalog(Path(tmp) / "corpus", args.singers, args.songs, args.seconds)
        print(f"catalog: {len(songs)} songs, {len(queries['+2'])} queries per transposition "
              f"({time.perf_counter() - began:.0f} s to synthesise)", flush=True)
        variants = {name: MelodyConfig(**VARIANTS[name], epochs=args.epochs, channels=args.channels)
                    for name in args.variants}
        rows = compare_melody_variants(songs, songs, queries, variants, FEAT, SR, Path(tmp) / "ws",
                                       device="cpu", log=lambda name, rec: print(name, rec, flush=True))
    table = markdown(rows)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
