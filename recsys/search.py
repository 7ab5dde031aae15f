"""Nearest songs and singers, with the timbre/melody split of every score as the explanation.

A Searcher holds the catalog's vectors (rows aligned with song ids) and a song
index of INDEX_WEIGHTS-fused vectors; any weighting is answered exactly through
`recsys.fusion.Fusion.query`, on similarities calibrated against the catalog's own
distribution of each modality (songs and singer profiles each have their own).
Singers are profiles built from their songs:

- "mean": the normalised mean of the singer's timbre and melody vectors, in an
  index of its own (one vector per singer; singers with one song work too);
- "max": multi-vector max-similarity, a singer scores as its best-matching song.

Songs without a singer label are their own anonymous profile, keyed "song:<id>".
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from recsys.config import IndexConfig
from recsys.embedding import INDEX_WEIGHTS, Vectors, Weights
from recsys.errors import UnknownSingerError
from recsys.fusion import Calibration, Fusion
from recsys.index import VectorIndex

Aggregation = Literal["mean", "max"]
AGGREGATIONS = ("mean", "max")


@dataclass(frozen=True)
class SongHit:
    song_id: int
    singer: str
    title: str | None
    score: float
    timbre: float
    melody: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SingerHit:
    singer: str
    score: float
    timbre: float
    melody: float
    n_songs: int
    best_song_id: int

    def as_dict(self) -> dict:
        return asdict(self)


def singer_key(song_id: int, singer: str | None) -> str:
    """Unlabelled songs are anonymous singers of their own."""
    return singer if singer else f"song:{song_id}"


def closest_names(name: str, names: list[str], n: int = 3) -> list[str]:
    """The names most like `name` (case-insensitive; substrings first), for a "did you mean" hint."""
    lowered = {s.lower(): s for s in names}
    contains = [s for s in names if name.lower() in s.lower()]
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return list(dict.fromkeys(contains + close))[:n]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.linalg.norm(x)), 1e-12)).astype(np.float32)


class Searcher:
    """Exact explanations over an index that may be approximate."""

    def __init__(
        self,
        ids: np.ndarray,
        singers: list[str | None],
        titles: list[str | None],
        vectors: Vectors,
        index_cfg: IndexConfig | None = None,
        index: VectorIndex | None = None,
        aggregation: Aggregation = "mean",
        calibrate: bool = True,
    ) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not (len(ids) == len(singers) == len(titles) == len(vectors)):
            raise ValueError(
                f"ids ({len(ids)}), singers ({len(singers)}), titles ({len(titles)}) and vectors "
                f"({len(vectors)}) must be aligned"
            )
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        self.ids = ids
        self.vectors = vectors
        self.titles = list(titles)
        self.singer_of = [singer_key(int(i), s) for i, s in zip(ids, singers)]
        self.row_of = {int(i): r for r, i in enumerate(ids)}
        self.aggregation = aggregation
        cfg = index_cfg or IndexConfig()
        self.index = index if index is not None else VectorIndex.build(ids, vectors.fused(INDEX_WEIGHTS), cfg)
        # Singer profiles: mean of the songs' timbre and melody vectors, each renormalised.
        groups: dict[str, list[int]] = {}
        for r, name in enumerate(self.singer_of):
            groups.setdefault(name, []).append(r)
        self.singers: list[str] = sorted(groups)
        self.singer_pos = {name: i for i, name in enumerate(self.singers)}
        self.rows_of_singer = {name: np.array(groups[name], dtype=np.int64) for name in self.singers}
        pt = np.stack([_unit(vectors.timbre[self.rows_of_singer[s]].mean(0)) for s in self.singers])
        pm = np.stack([_unit(vectors.melody[self.rows_of_singer[s]].mean(0)) for s in self.singers])
        self.profiles = Vectors(pt, pm)
        # kind=auto's rules with the songs' thresholds (exact up to exact_max, then IVF, then ivfpq), sized
        # for the singers: a kind or nlist forced for the songs is not the singers'. At a million singers
        # exact search costs about 120 ms a query (docs/scaling.md).
        self.singer_index = VectorIndex.build(
            np.arange(len(self.singers), dtype=np.int64), self.profiles.fused(INDEX_WEIGHTS),
            cfg.model_copy(update={"kind": "auto", "nlist": None}),
        )
        self.song_calibration = Calibration.fit(vectors) if calibrate else Calibration()
        self.singer_calibration = Calibration.fit(self.profiles) if calibrate else Calibration()

    def song_fusion(self, weights: Weights) -> Fusion:
        return Fusion(weights, self.song_calibration)

    def singer_fusion(self, weights: Weights) -> Fusion:
        return Fusion(weights, self.singer_calibration)

    def __len__(self) -> int:
        return len(self.ids)

    def song_vectors(self, song_id: int) -> tuple[np.ndarray, np.ndarray]:
        if song_id not in self.row_of:
            raise KeyError(f"song {song_id} is not in the catalog's vectors")
        r = self.row_of[song_id]
        return self.vectors.timbre[r], self.vectors.melody[r]

    def singer_vectors(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The singer's profile (mean of its songs) as (timbre, melody)."""
        if name not in self.rows_of_singer:
            raise UnknownSingerError(name, closest_names(name, self.singers))
        i = self.singer_pos[name]
        return self.profiles.timbre[i], self.profiles.melody[i]

    # Songs -----------------------------------------------------------------------------------

    def similar_songs(
        self,
        timbre: np.ndarray,
        melody: np.ndarray,
        k: int = 10,
        weights: Weights = Weights(),
        exclude_ids: frozenset[int] = frozenset(),
        exclude_singer: str | None = None,
    ) -> list[SongHit]:
        """Top-k songs for one query vector pair, best first."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        xq = self.song_fusion(weights).query(timbre[None], melody[None])
        want = k + len(exclude_ids)
        if exclude_singer is not None:
            want += len(self.rows_of_singer.get(exclude_singer, ()))
        _, I = self.index.search(xq, min(want, len(self)))
        rows = [
            self.row_of[int(i)]
            for i in I[0]
            if i >= 0 and int(i) not in exclude_ids and self.singer_of[self.row_of[int(i)]] != exclude_singer
        ][:k]
        return self._song_hits(np.array(rows, dtype=np.int64), timbre, melody, weights)

    def _song_hits(self, rows: np.ndarray, t: np.ndarray, m: np.ndarray, weights: Weights) -> list[SongHit]:
        if len(rows) == 0:
            return []
        ct = self.vectors.timbre[rows] @ t
        cm = self.vectors.melody[rows] @ m
        score = self.song_fusion(weights).scores(ct, cm)
        hits = [
            SongHit(int(self.ids[r]), self.singer_of[r], self.titles[r], float(s), float(a), float(b))
            for r, s, a, b in zip(rows, score, ct, cm)
        ]
        return sorted(hits, key=lambda h: (-h.score, h.song_id))

    # Singers ---------------------------------------------------------------------------------

    def similar_singers(
        self,
        timbre: np.ndarray,
        melody: np.ndarray,
        k: int = 10,
        weights: Weights = Weights(),
        exclude_singer: str | None = None,
        exclude_ids: frozenset[int] = frozenset(),
    ) -> list[SingerHit]:
        """Top-k singers for a query vector pair under the configured aggregation."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if self.aggregation == "mean":
            return self._singers_by_profile(timbre, melody, k, weights, exclude_singer)
        return self._singers_by_best_song(timbre, melody, k, weights, exclude_singer, exclude_ids)

    def similar_to_singer(self, name: str, k: int = 10, weights: Weights = Weights()) -> list[SingerHit]:
        """Singers who sound like `name` (never `name` itself)."""
        t, m = self.singer_vectors(name)
        if self.aggregation == "mean":
            return self._singers_by_profile(t, m, k, weights, exclude_singer=name)
        # Multi-vector: every song of the singer is a query; a candidate keeps its best pair.
        best: dict[str, SingerHit] = {}
        for r in self.rows_of_singer[name]:
            qt, qm = self.vectors.timbre[r], self.vectors.melody[r]
            for hit in self._singers_by_best_song(qt, qm, k, weights, name, frozenset()):
                if hit.singer not in best or hit.score > best[hit.singer].score:
                    best[hit.singer] = hit
        return sorted(best.values(), key=lambda h: (-h.score, h.singer))[:k]

    def _singers_by_profile(
        self, t: np.ndarray, m: np.ndarray, k: int, weights: Weights, exclude_singer: str | None
    ) -> list[SingerHit]:
        fusion = self.singer_fusion(weights)
        xq = fusion.query(t[None], m[None])
        _, I = self.singer_index.search(xq, min(k + 1, len(self.singers)))
        idx = np.array([i for i in I[0] if i >= 0 and self.singers[i] != exclude_singer][:k], dtype=np.int64)
        if len(idx) == 0:
            return []
        ct = self.profiles.timbre[idx] @ t
        cm = self.profiles.melody[idx] @ m
        score = fusion.scores(ct, cm)
        hits = []
        for i, s, a, b in zip(idx, score, ct, cm):
            name = self.singers[i]
            rows = self.rows_of_singer[name]
            best_row = rows[int(np.argmax(self.song_fusion(weights).scores(self.vectors.timbre[rows] @ t,
                                                                           self.vectors.melody[rows] @ m)))]
            hits.append(SingerHit(name, float(s), float(a), float(b), len(rows), int(self.ids[best_row])))
        return sorted(hits, key=lambda h: (-h.score, h.singer))

    def _singers_by_best_song(
        self,
        t: np.ndarray,
        m: np.ndarray,
        k: int,
        weights: Weights,
        exclude_singer: str | None,
        exclude_ids: frozenset[int],
    ) -> list[SingerHit]:
        n_fetch = min(len(self), max(4 * k, 32))
        while True:
            songs = self.similar_songs(t, m, n_fetch, weights, exclude_ids, exclude_singer)
            best: dict[str, SongHit] = {}
            for hit in songs:
                best.setdefault(hit.singer, hit)
            if len(best) >= k or n_fetch >= len(self):
                break
            n_fetch = min(len(self), n_fetch * 4)
        hits = [
            SingerHit(s, h.score, h.timbre, h.melody, len(self.rows_of_singer[s]), h.song_id)
            for s, h in best.items()
        ]
        return sorted(hits, key=lambda h: (-h.score, h.singer))[:k]


__all__ = ["AGGREGATIONS", "Searcher", "SingerHit", "SongHit", "singer_key"]
