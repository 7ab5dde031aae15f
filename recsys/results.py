"""What the library's search, training and indexing hand back, rendering itself as text or JSON.

Front ends only choose: `as_text()` for people, `as_dict()` for programs (the JSON of `--json`).
Nothing here imports torch, FAISS or the database, so a front end can render without loading them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from recsys.embedding import Weights
    from recsys.search import SingerHit, SongHit


def singer_line(rank: int, hit: SingerHit) -> str:
    """One ranked singer, with the timbre/melody split of its score."""
    return (f"  {rank:2d}. {hit.singer:<24} score {hit.score:.3f}  (timbre {hit.timbre:.3f}, "
            f"melody {hit.melody:.3f}; {hit.n_songs} songs)")


def song_line(rank: int, hit: SongHit) -> str:
    """One ranked song, with the timbre/melody split of its score."""
    return (f"  {rank:2d}. {hit.title or hit.song_id} by {hit.singer:<20} score {hit.score:.3f}  "
            f"(timbre {hit.timbre:.3f}, melody {hit.melody:.3f})")


@dataclass(frozen=True)
class SearchResult:
    """Ranked singers and songs for one query, with each score's timbre/melody split."""

    query: str
    weights: Weights
    singers: list[SingerHit] = field(default_factory=list)
    songs: list[SongHit] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "weights": {"timbre": self.weights.timbre, "melody": self.weights.melody},
            "singers": [h.as_dict() for h in self.singers],
            "songs": [h.as_dict() for h in self.songs],
        }

    def as_text(self) -> str:
        w = self.weights
        lines = [f"query: {self.query}  (weights timbre={w.timbre:g}, melody={w.melody:g})"]
        if self.singers:
            lines += ["singers:", *(singer_line(r, h) for r, h in enumerate(self.singers, 1))]
        if self.songs:
            lines += ["songs:", *(song_line(r, h) for r, h in enumerate(self.songs, 1))]
        return "\n".join(lines)


class _Trained(Protocol):
    """What a trainer returns (recsys.training): the version published and how training went."""

    @property
    def version(self) -> Any: ...  # recsys.training.checkpoint.ModelVersion
    @property
    def best_epoch(self) -> int: ...
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def stopped_early(self) -> bool: ...


@dataclass(frozen=True)
class TrainedModel:
    """One encoder trained and published."""

    kind: str  # timbre or melody
    version: str
    best_epoch: int
    epochs: int  # epochs run
    stopped_early: bool

    @classmethod
    def of(cls, kind: str, result: _Trained) -> TrainedModel:
        return cls(kind, result.version.version, result.best_epoch, len(result.history), result.stopped_early)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def as_text(self) -> str:
        early = ", stopped early" if self.stopped_early else ""
        return (f"{self.kind}: model version {self.version} (best epoch {self.best_epoch}, "
                f"{self.epochs} epochs{early})")


class _Rendered(Protocol):
    def as_dict(self) -> dict[str, Any]: ...
    def as_text(self) -> str: ...


@dataclass(frozen=True)
class TrainingReport:
    """The encoders one `train` published, in training order, and the catalog embedded under them."""

    models: list[TrainedModel]
    embedding: _Rendered | None = None  # pipelines.reembed.ReembedSummary: vectors, index, the switch

    @classmethod
    def of(cls, results: Mapping[str, Any]) -> TrainingReport:
        """From what `Recommender.train` returns: {kind: TrainResult, "embed": ReembedSummary}."""
        models = [TrainedModel.of(kind, results[kind]) for kind in ("timbre", "melody") if kind in results]
        return cls(models, results.get("embed"))

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {m.kind: m.as_dict() for m in self.models}
        if self.embedding is not None:
            data["embed"] = self.embedding.as_dict()
        return data

    def as_text(self) -> str:
        lines = [m.as_text() for m in self.models]
        return "\n".join(lines + ([self.embedding.as_text()] if self.embedding is not None else []))


@dataclass(frozen=True)
class IndexReport:
    """The song index of one model pair after a rebuild or a check."""

    size: int  # songs in the index
    kind: str  # flat, ivf, ivfpq, hnsw
    path: Path
    state: str = "rebuilt"  # rebuilt, or ok (a check found it matching the catalog)

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "kind": self.kind, "path": str(self.path), "state": self.state}

    def as_text(self) -> str:
        return f"index {self.state}: {self.size} songs, {self.kind}, in {self.path}"


@dataclass(frozen=True)
class FilesWritten:
    """Rows written to a file (an export or embeddings of files outside the catalog)."""

    path: Path
    rows: int
    what: str = "rows"  # rows or songs
    failures: Sequence[str] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), self.what: self.rows, "failures": list(self.failures)}

    def as_text(self) -> str:
        return f"wrote {self.rows} {self.what} to {self.path}"


__all__ = [
        "FilesWritten",
    "IndexReport",
    "SearchResult",
    "TrainedModel",
    "TrainingReport",
    "singer_line",
    "song_line",
]
