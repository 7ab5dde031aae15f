"""A small catalog whose manifest has a metadata column the explorer's code never names: `label`.

6 synthetic singers (the demo's voices) x 2 songs x 5 s. Each singer's songs carry one
record label, except singer_05's second song, so a label filter selects songs, not only singers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from recsys.corpus import generate_corpus

LABELS = ("Blue Note", "Motown", "Sub Pop")
ODD_SONG = ("singer_05", "singer_05_song_1", "Motown")  # (singer, manifest song_id, its label)


def label_of(singer: str, song_id: str) -> str:
    if (singer, song_id) == ODD_SONG[:2]:
        return ODD_SONG[2]
    return LABELS[int(singer.rsplit("_", 1)[1]) % len(LABELS)]


def labelled_catalog(out: Path) -> Path:
    """Generate the catalog under `out`; returns its manifest, with a `label` column added."""
    manifest = generate_corpus(out, n_singers=6, songs_per_singer=2, song_seconds=5.0, seed=0, workers=1)
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [*(reader.fieldnames or []), "label"]
        rows = [{**row, "label": label_of(row["singer"], row["song_id"])} for row in reader]
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def singers_with(label: str) -> set[str]:
    """The singers with at least one song of `label`."""
    return {f"singer_{i:02d}" for i in range(6) if LABELS[i % len(LABELS)] == label} | (
        {ODD_SONG[0]} if ODD_SONG[2] == label else set()
    )
