"""The Python API: one workspace's catalog, models, index and search, for other programs.

    from recsys.api import Recommender
    rec = Recommender.open(workspace="demo-workspace")
    rec.ingest("songs/manifest.csv")
    rec.train()                 # timbre encoder, then TCAE
    rec.embed_catalog()         # vectors for every song, under the current model versions
    rec.similar_singers("singer_03", k=5)
    rec.search("query.wav", k=10, by="singer", weights=Weights(timbre=1, melody=0))

The CLI, the batch jobs and the explorer are thin layers over this class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from recsys import catalog
from recsys.config import SeparationConfig, Settings, load_settings
from recsys.embedding import INDEX_WEIGHTS, Embedder, Vectors, Weights, fuse
from recsys.training.checkpoint import catalog_fingerprint
from recsys.training.data import SongFeatures

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SearchResult:
    """Ranked singers and songs for one query, with each score's timbre/melody split."""

    query: str
    weights: Weights
    singers: list  # list[SingerHit]
    songs: list  # list[SongHit]

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "weights": {"timbre": self.weights.timbre, "melody": self.weights.melody},
            "singers": [h.as_dict() for h in self.singers],
            "songs": [h.as_dict() for h in self.songs],
        }


class Recommender:
    """Everything one workspace can do. Heavy parts (models, index) load lazily and are cached."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def open(cls, workspace: str | Path | None = None, db_url: str | None = None, **overrides: Any) -> "Recommender":
        return cls(load_settings(workspace=workspace, db_url=db_url, **overrides))

    # Catalog -----------------------------------------------------------------------------------

    @functools.cached_property
    def sessions(self) -> sessionmaker[Session]:
        self.settings.workspace.mkdir(parents=True, exist_ok=True)
        return catalog.open_catalog(self.settings.database_url)

    def ingest(self, source: str | Path, workers: int | None = None, dry_run: bool = False,
               progress: Callable[[str], None] | None = None):
        from recsys.ingest import ingest

        return ingest(source, self.sessions, self.settings.audio, workers=workers, dry_run=dry_run,
                      progress=progress, separation=self.separation)

    @functools.cached_property
    def separation(self) -> SeparationConfig:
        """The accompaniment suppression of this workspace's audio path (see :func:`effective_separation`)."""
        return effective_separation(self.settings, self.sessions)

    @functools.cached_property
    def separator(self):
        """The Separator every audio path of this workspace applies (None for method 'none')."""
        from recsys.separation import separator_from_config

        return None if self.separation.method == "none" else separator_from_config(self.separation)

    def stats(self) -> catalog.CatalogStats:
        with self.sessions() as s:
            return catalog.catalog_stats(s)

    def songs(self) -> list[dict[str, Any]]:
        """Every catalog song as a plain dict (id, singer, title, path, metadata)."""
        with self.sessions() as s:
            return [_song_dict(song) for song in catalog.list_songs(s)]

    # Training --------------------------------------------------------------------------------

    def training_songs(self, progress: Progress | None = None) -> list[SongFeatures]:
        """Log-mel of every registered song's voiced audio, with singer labels where known."""
        from recsys.features import song_mel

        out = []
        rows = self.songs()
        method = self.separation.method
        tag = ("" if method == "none" else f"+{method}") + ("+vocal" if self.settings.audio.vocal_activity else "")
        for i, song in enumerate(rows):
            mel = song_mel(song["path"], self.settings.audio, self.settings.features, self.separator)
            # The audio a model learns from depends on the separation and vocal-activity clean-up
            # too: tagging the content hash gives such a model its own version (catalog_fingerprint).
            digest = song["content_hash"] + tag
            out.append(SongFeatures(song["id"], mel, song["singer"], digest, song["metadata"]))
            if progress:
                progress(i + 1, len(rows))
        if not out:
            raise ValueError(f"the catalog {self.settings.database_url} has no songs; run `recsys ingest` first")
        return out

    def train(self, which: Literal["both", "timbre", "melody"] = "both", songs: list[SongFeatures] | None = None,
              progress: bool = False, log: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Train the encoders in turn on the catalog; returns {kind: TrainResult}."""
        from recsys.training.contrastive import train_timbre
        from recsys.training.tcae import train_melody

        songs = songs if songs is not None else self.training_songs()
        cfg, results = self.settings, {}
        if which in ("both", "timbre"):
            results["timbre"] = train_timbre(songs, cfg.timbre, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                             device=cfg.device, progress=progress, log=log)
        if which in ("both", "melody"):
            results["melody"] = train_melody(songs, cfg.melody, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                             device=cfg.device, progress=progress, log=log)
        self.__dict__.pop("embedder", None)
        self.__dict__.pop("searcher", None)
        return results

    # Embedding -------------------------------------------------------------------------------

    @functools.cached_property
    def embedder(self) -> Embedder:
        from recsys.training.contrastive import load_timbre
        from recsys.training.tcae import load_melody

        timbre, t_meta = load_timbre(self.settings.workspace)
        melody, m_meta = load_melody(self.settings.workspace)
        embedder = Embedder(timbre, melody, self.settings.audio, self.settings.features, self.separator)
        embedder.versions = (t_meta, m_meta)  # type: ignore[attr-defined]
        return embedder

    @property
    def model_version(self) -> str:
        """The fused version: which timbre and melody models made the vectors."""
        t_meta, m_meta = self.embedder.versions  # type: ignore[attr-defined]
        return f"{t_meta.version}+{m_meta.version}"

    def _existing_model_rows(self, s: Session) -> dict[str, catalog.ModelVersion | None]:
        """The catalog's rows of the current versions (None where not registered yet), read only;
        refuses vectors made with another separation method than the workspace's."""
        t_meta, m_meta = self.embedder.versions  # type: ignore[attr-defined]
        found = {
            kind: s.scalar(select(catalog.ModelVersion).where(
                catalog.ModelVersion.kind == kind, catalog.ModelVersion.version == version))
            for kind, version in (("timbre", t_meta.version), ("melody", m_meta.version),
                                  ("fused", self.model_version))
        }
        fused, method = found["fused"], self.separation.method
        if fused is not None and fused.config.get("separation", "none") != method:
            raise ValueError(
                f"the vectors of model version {self.model_version} were made with separation "
                f"{fused.config.get('separation', 'none')!r}, but this workspace now uses {method!r}; "
                "set separation.method (or `recsys ingest --separate`) back, or retrain with the new method")
        return found

    def _model_rows(self, s: Session) -> dict[str, catalog.ModelVersion]:
        """The current versions' rows, registered if new (write paths only)."""
        t_meta, m_meta = self.embedder.versions  # type: ignore[attr-defined]
        fusion = self.settings.fusion
        method = self.separation.method
        self._existing_model_rows(s)  # refuses vectors of another separation method before registering
        return {
            "timbre": catalog.register_model_version(s, "timbre", t_meta.version, t_meta.model_config,
                                                     t_meta.fingerprint, t_meta.metrics),
            "melody": catalog.register_model_version(s, "melody", m_meta.version, m_meta.model_config,
                                                     m_meta.fingerprint, m_meta.metrics),
            "fused": catalog.register_model_version(
                s, "fused", self.model_version,
                {"w_timbre": fusion.w_timbre, "w_melody": fusion.w_melody, "separation": method},
                f"{t_meta.fingerprint}+{m_meta.fingerprint}"),
        }

    def embed_catalog(self, batch_size: int = 32, progress: Progress | None = None,
                      on_error: Callable[[int, str, Exception], None] | None = None) -> int:
        """Store vectors for every song that has none under the current model versions. Returns rows added."""
        from recsys.audio import AudioError

        with catalog.session_scope(self.sessions) as s:
            fused_row = self._model_rows(s)["fused"]
            todo = [(song.id, song.path) for song in catalog.songs_missing_embeddings(s, fused_row, "fused")]
        weights = Weights(self.settings.fusion.w_timbre, self.settings.fusion.w_melody)
        added = 0
        for start in range(0, len(todo), batch_size):
            vectors: dict[str, dict[int, np.ndarray]] = {"timbre": {}, "melody": {}, "fused": {}}
            for song_id, path in todo[start:start + batch_size]:
                try:
                    v = self.embedder.embed(path)
                except (AudioError, OSError) as e:
                    if on_error is None:
                        raise
                    on_error(song_id, path, e)
                    continue
                vectors["timbre"][song_id] = v.timbre[0]
                vectors["melody"][song_id] = v.melody[0]
                vectors["fused"][song_id] = v.fused(weights)[0]
            with catalog.session_scope(self.sessions) as s:
                rows = self._model_rows(s)
                for kind in ("timbre", "melody", "fused"):  # fused last: it marks the song done
                    catalog.put_embeddings(s, rows[kind], kind, vectors[kind])
                added += len(vectors["fused"])
            if progress:
                progress(min(start + batch_size, len(todo)), len(todo))
        self.__dict__.pop("searcher", None)
        return added

    def _no_vectors_reason(self) -> str:
        """Why there is nothing to search, and the command that fixes it."""
        n_songs = len(self.songs())
        if n_songs == 0:
            return "the catalog has no songs: run `recsys ingest`, then `recsys train` and `recsys embed`"
        return (
            f"none of the catalog's {n_songs} songs has vectors of the current models ({self.model_version}), "
            "e.g. because they were trained after the last embed: run `recsys embed` "
            "(or `recsys reembed` to switch models while the previous index keeps answering)"
        )

    def catalog_vectors(self) -> tuple[np.ndarray, Vectors]:
        """(ids, Vectors) of every embedded song under the current model versions, ordered by id."""
        with self.sessions() as s:
            rows = self._existing_model_rows(s)  # reading only: registration happens on write paths
            if rows["timbre"] is None or rows["melody"] is None:
                dt, dm = self.embedder.dims  # type: ignore[attr-defined]
                empty = np.zeros((0,), dtype=np.int64)
                return empty, Vectors(np.zeros((0, dt), np.float32), np.zeros((0, dm), np.float32))
            ids_t, xt = catalog.get_embeddings(s, rows["timbre"], "timbre")
            ids_m, xm = catalog.get_embeddings(s, rows["melody"], "melody")
        common = np.intersect1d(ids_t, ids_m)
        xt = xt[np.isin(ids_t, common)]
        xm = xm[np.isin(ids_m, common)]
        return common, Vectors(xt, xm)

    # Index and search ------------------------------------------------------------------------

    @property
    def index_dir(self) -> Path:
        return self.settings.workspace / "index" / self.model_version

    def rebuild_index(self):
        """Build the song index from the catalog and save it (atomically)."""
        from recsys.index import VectorIndex

        ids, vectors = self.catalog_vectors()
        if len(ids) == 0:
            raise ValueError(self._no_vectors_reason())
        index = VectorIndex.build(ids, vectors.fused(INDEX_WEIGHTS), self.settings.index)
        index.save(self.index_dir, self.model_version, self._fingerprint(ids))
        self.__dict__.pop("searcher", None)
        return index

    def _fingerprint(self, ids: np.ndarray) -> str:
        return catalog_fingerprint([(str(int(i)), "") for i in ids])

    def load_index(self) -> tuple[Any, bool]:
        """The saved index when it matches the catalog; rebuilt (and saved) when missing, stale or corrupt."""
        from recsys.index import load_or_rebuild

        ids, vectors = self.catalog_vectors()
        return load_or_rebuild(
            self.index_dir, self.model_version, self._fingerprint(ids),
            lambda: (ids, vectors.fused(INDEX_WEIGHTS)), self.settings.index,
        )

    @functools.cached_property
    def searcher(self):
        from recsys.search import Searcher

        ids, vectors = self.catalog_vectors()
        if len(ids) == 0:
            raise ValueError(self._no_vectors_reason())
        index, _ = self.load_index()
        meta = {row["id"]: row for row in self.songs()}
        return Searcher(ids, [meta[int(i)]["singer"] for i in ids], [meta[int(i)]["title"] for i in ids],
                        vectors, self.settings.index, index=index)

    def default_weights(self) -> Weights:
        return Weights(self.settings.fusion.w_timbre, self.settings.fusion.w_melody)

    def catalog_map(self, what: Literal["singers", "songs"], weighting: str = "fused"):
        """The 2-D UMAP map of singer profiles or songs under `weighting` (timbre, melody, fused):
        loaded from <workspace>/projections/<model version>/ when fitted on these rows, else fitted
        and saved there (recsys.projection.load_or_fit). Returns (CatalogMap, the rows it maps)."""
        from recsys.projection import load_or_fit, map_rows, projection_path

        sr = self.searcher
        if what == "singers":
            keys, vectors = list(sr.singers), sr.profiles
        elif what == "songs":
            keys, vectors = [int(i) for i in sr.ids], sr.vectors
        else:
            raise ValueError(f"unknown map {what!r}; valid: singers, songs")
        x = map_rows(vectors, weighting, self.default_weights())
        path = projection_path(self.settings.workspace, self.model_version, what, weighting)
        return load_or_fit(path, keys, x, self.model_version), x

    def similar_singers(self, name: str, k: int = 10, weights: Weights | None = None) -> list:
        return self.searcher.similar_to_singer(name, k, weights or self.default_weights())

    def search(self, query: str | Path, k: int = 10, weights: Weights | None = None,
               by: Literal["singer", "song", "both"] = "both") -> SearchResult:
        """Query-by-song for an audio file; a file that is itself in the catalog is left out of the results."""
        from recsys.audio import content_hash

        weights = weights or self.default_weights()
        v = self.embedder.embed(query)
        with self.sessions() as s:
            same = catalog.song_by_hash(s, content_hash(query))
            exclude = frozenset({same.id}) if same is not None else frozenset()
        return self.search_vectors(v.timbre[0], v.melody[0], str(query), k, weights, by, exclude)

    def search_song(self, song_id: int, k: int = 10, weights: Weights | None = None,
                    by: Literal["singer", "song", "both"] = "both") -> SearchResult:
        """Query by a catalog song: the song itself is excluded from the results."""
        weights = weights or self.default_weights()
        t, m = self.searcher.song_vectors(song_id)
        return self.search_vectors(t, m, f"song:{song_id}", k, weights, by, exclude_ids=frozenset({song_id}))

    def search_vectors(self, t: np.ndarray, m: np.ndarray, label: str, k: int, weights: Weights,
                       by: str = "both", exclude_ids: frozenset[int] = frozenset()) -> SearchResult:
        sr = self.searcher
        singers = sr.similar_singers(t, m, k, weights, exclude_ids=exclude_ids) if by in ("singer", "both") else []
        songs = sr.similar_songs(t, m, k, weights, exclude_ids=exclude_ids) if by in ("song", "both") else []
        return SearchResult(label, weights, singers, songs)

    def embed_files(self, sources: list[str | Path]) -> tuple[list[str], Vectors, list[tuple[str, str]]]:
        """Vectors for files outside the catalog: (paths embedded, vectors, [(path, error)])."""
        from recsys.audio import AudioError

        ok, rows, failed = [], [], []
        for src in sources:
            try:
                rows.append(self.embedder.embed(src))
                ok.append(str(src))
            except (AudioError, OSError) as e:
                failed.append((str(src), str(e)))
        dt, dm = self.embedder.dims
        vectors = Vectors(
            np.concatenate([r.timbre for r in rows]) if rows else np.zeros((0, dt), np.float32),
            np.concatenate([r.melody for r in rows]) if rows else np.zeros((0, dm), np.float32),
        )
        return ok, vectors, failed


def effective_separation(settings: Settings, sessions: sessionmaker[Session] | None) -> SeparationConfig:
    """The separation a workspace's audio goes through, so ingest, training, embedding and
    queries all hear the same audio: `settings.separation` when it was set explicitly (a
    flag, the environment or a config file), else the one the catalog's latest ingest run
    recorded (`recsys ingest --separate` is remembered), else none."""
    if "separation" in settings.model_fields_set or sessions is None:
        return settings.separation
    with sessions() as s:
        runs = s.scalars(select(catalog.IngestRun).order_by(catalog.IngestRun.id.desc()))
        recorded = next((run.options["separation"] for run in runs if "separation" in (run.options or {})),
                        None)
    if recorded is None:
        return settings.separation
    try:
        return SeparationConfig(**recorded)
    except ValueError as e:
        raise ValueError(
            f"the catalog {settings.database_url} recorded an invalid separation {recorded!r}: {e}") from e


def _song_dict(song: Any) -> dict[str, Any]:
    return {
        "id": song.id,
        "singer": song.singer.name if song.singer is not None else None,
        "title": song.title,
        "path": song.path,
        "content_hash": song.content_hash,
        "duration_s": song.duration_s,
        "metadata": dict(song.meta or {}),
        "predicted": dict(song.predicted or {}),  # attribute -> {value, confidence, ...} from probes
    }


def save_npz(out: Path, paths: list[str], song_ids: list[int | None], vectors: Vectors, weights: Weights) -> Path:
    """Write rows-aligned path, song_id (-1 where unknown), timbre, melody and fused arrays."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        path=np.array(paths, dtype=str),
        song_id=np.array([-1 if i is None else i for i in song_ids], dtype=np.int64),
        timbre=vectors.timbre,
        melody=vectors.melody,
        fused=fuse(vectors.timbre, vectors.melody, weights) if len(vectors) else np.zeros((0, 0), np.float32),
    )
    return out

