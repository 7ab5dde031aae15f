"""The Python API and the composition root: one workspace's catalog, models, index and search.

    from recsys.api import Recommender
    rec = Recommender.open(workspace="demo-workspace")
    rec.ingest("songs/manifest.csv")
    rec.train()                 # timbre encoder, then TCAE; embeds the catalog and switches to them
    rec.similar_singers("singer_03", k=5)
    rec.search("query.wav", k=10, by="singer", weights=Weights(timbre=1, melody=0))

Parts are built here and passed in: a `Workspace` (paths, sessions, audio clean-up),
`Models` (both encoders of one pair, from recsys.registry.load_models), an `Embedder`
over those models and a `Searcher` over the pair's vectors and index. Pinning a model
pair is a constructor argument. The CLI, the batch jobs and the explorer are thin
layers over this class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsys import catalog
from recsys.config import SeparationConfig, Settings
from recsys.embedding import INDEX_WEIGHTS, Embedder, Vectors, Weights, fuse
from recsys.errors import EmptyCatalogError, ModelMismatchError, NoVectorsError
from recsys.fusion import Question, question_weights
from recsys.registry import ModelPair, Models, current_pair, load_models
from recsys.results import SearchResult
from recsys.training.checkpoint import catalog_fingerprint
from recsys.training.data import TrainingSong
from recsys.workspace import Workspace

Progress = Callable[[int, int], None]

__all__ = ["Recommender", "SearchResult", "ids_fingerprint", "save_npz"]


def ids_fingerprint(ids: np.ndarray) -> str:
    """The fingerprint an index is saved with: which song ids it holds."""
    return catalog_fingerprint([(str(int(i)), "") for i in ids])


class Recommender:
    """Everything one workspace can do, composed of a Workspace, a model pair and a searcher."""

    def __init__(self, workspace: Workspace | Settings, models: Models | None = None) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self._models = models  # None: the current pair, loaded on first use
        self._pinned = models is not None
        self._embedder: Embedder | None = None
        self._searcher: Any = None

    @classmethod
    def open(
        cls, workspace: str | Path | None = None, db_url: str | None = None, pair: ModelPair | None = None,
        **overrides: Any,
    ) -> Recommender:
        ws = Workspace.open(workspace, db_url, **overrides)
        return cls(ws, load_models(ws.root, pair) if pair is not None else None)

    @classmethod
    def from_settings(cls, settings: Settings, pair: ModelPair | None = None) -> Recommender:
        ws = Workspace(settings)
        return cls(ws, load_models(ws.root, pair) if pair is not None else None)

    @property
    def settings(self) -> Settings:
        return self.workspace.settings

    @property
    def sessions(self):
        return self.workspace.sessions

    @property
    def separation(self) -> SeparationConfig:
        return self.workspace.separation

    @property
    def separator(self):
        """The accompaniment suppression every audio path of this workspace applies (None: none)."""
        return self.workspace.separator

    # Catalog -----------------------------------------------------------------------------------

    def ingest(self, source: str | Path, workers: int | None = None, dry_run: bool = False):
        """Register every good song of `source` once (the batch job without an embedder)."""
        from pipelines.ingest import run_ingest
        from pipelines.runners import LocalRunner

        runner = LocalRunner(workers)
        try:
            return run_ingest(source, self.workspace, runner=runner, dry_run=dry_run)
        finally:
            runner.close()

    def stats(self) -> catalog.CatalogStats:
        with self.sessions() as s:
            return catalog.catalog_stats(s)

    def songs(self) -> list[dict[str, Any]]:
        """Every catalog song as a plain dict (id, singer, title, path, metadata)."""
        with self.sessions() as s:
            return [_song_dict(song) for song in catalog.list_songs(s)]

    # Models ------------------------------------------------------------------------------------

    @property
    def models(self) -> Models:
        """The serving pair (or the pinned one), checked against the workspace's audio clean-up."""
        if self._models is None:
            self._models = load_models(self.workspace.root, current_pair(self.workspace.root))
        _check_audio(self._models, self.workspace)
        return self._models

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from recsys.training.common import pick_device

            self._embedder = Embedder(self.models, self.settings.audio, self.settings.features,
                                      self.workspace.separator, pick_device(self.settings.device))
        return self._embedder

    @property
    def model_version(self) -> str:
        """The pair's version: which timbre and melody models made the vectors."""
        return self.models.version

    def use_models(self, models: Models) -> None:
        """Serve another pair from now on (after training or a switch)."""
        self._models, self._embedder, self._searcher, self._pinned = models, None, None, False

    # Training ----------------------------------------------------------------------------------

    def training_songs(self, progress: Progress | None = None) -> list[TrainingSong]:
        """The features of every registered song's voiced audio, with singer labels where known."""
        from recsys.features import song_features
        from recsys.fingerprint import audio_tag
        from recsys.models.melody import training_needs

        rows = self.songs()
        if not rows:
            raise EmptyCatalogError(f"the catalog ({_where(self.settings)}) has no songs",
                                    "run `recsys ingest SOURCE` first")
        tag = audio_tag(self.settings.audio, self.separation)  # a model version depends on the clean-up too
        needs = training_needs(self.settings.melody)
        speaker = self.settings.timbre.front_end in ("speaker", "log-mel+speaker")
        if speaker:
            from recsys.speaker import check_available

            check_available()
        out = []
        for i, song in enumerate(rows):
            if speaker:  # the pair policies act on the waveform: one voiced song in memory at a time
                out.append(self._speaker_training_song(song, needs, tag))
            else:
                feats = song_features(song["path"], self.settings.audio, self.settings.features,
                                      self.workspace.separator, needs=needs)
                out.append(TrainingSong(song["id"], feats, song["singer"], song["content_hash"] + tag,
                                        song["metadata"]))
            if progress:
                progress(i + 1, len(rows))
        return out

    def _speaker_training_song(self, song: dict[str, Any], needs: frozenset[str], tag: str) -> TrainingSong:
        """A training song for timbre.front_end speaker: its features and its waveform views' partials."""
        from recsys.augment import resolve_policy
        from recsys.features import voiced_wave_features
        from recsys.training.common import pick_device
        from recsys.training.speaker import training_views

        cfg = self.settings
        wave, feats = voiced_wave_features(song["path"], needs, cfg.audio, cfg.features, self.workspace.separator)
        views = training_views(wave, cfg.audio.sample_rate, resolve_policy(cfg.timbre), cfg.timbre.seed,
                               song["content_hash"], cfg.features.speaker_partials, pick_device(cfg.device))
        return TrainingSong(song["id"], feats, song["singer"], song["content_hash"] + tag, song["metadata"],
                            speaker_views=views)

    def train(self, which: Literal["both", "timbre", "melody"] = "both", songs: list[TrainingSong] | None = None,
              progress: bool = False, log: Callable[[dict], None] | None = None, embed: bool = True) -> dict[str, Any]:
        """Train the encoders in turn on the catalog; then (with `embed`) embed the catalog under the new
        pair and switch to it. Returns {kind: TrainResult, "embed": ReembedSummary}."""
        from recsys.fingerprint import audio_fingerprint
        from recsys.training.contrastive import train_timbre
        from recsys.training.tcae import train_melody

        songs = songs if songs is not None else self.training_songs()
        if len(songs) < 2:
            raise EmptyCatalogError(f"the catalog has {len(songs)} song; training needs at least 2",
                                    "ingest more songs with `recsys ingest SOURCE`")
        cfg, results = self.settings, {}
        audio = audio_fingerprint(cfg.audio, self.separation)
        front_end = cfg.timbre.front_end
        if which in ("both", "timbre") and front_end != "log-mel":
            from recsys.training.speaker import publish_combined, train_speaker_timbre

            speaker = train_speaker_timbre(songs, cfg.timbre, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                           device=cfg.device, log=log, audio=audio)
            if front_end == "log-mel+speaker":
                log_mel = train_timbre(songs, cfg.timbre, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                       device=cfg.device, progress=progress, log=log, audio=audio)
                speaker = publish_combined(log_mel, speaker, cfg.timbre, cfg.workspace, audio=audio)
            results["timbre"] = speaker
        elif which in ("both", "timbre"):
            results["timbre"] = train_timbre(songs, cfg.timbre, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                             device=cfg.device, progress=progress, log=log, audio=audio)
        if which in ("both", "melody"):
            results["melody"] = train_melody(songs, cfg.melody, cfg.features, cfg.audio.sample_rate, cfg.workspace,
                                             device=cfg.device, progress=progress, log=log, audio=audio)
        if embed:
            from recsys.registry import newest_pair

            new = newest_pair(self.workspace.root)
            results["embed"] = self.embed_catalog(new.timbre, new.melody) if new else self.embed_catalog()
        return results

    # Embedding ---------------------------------------------------------------------------------

    def embed_catalog(self, timbre: str | None = None, melody: str | None = None, runner: Any = None,
                      on_batch: Callable[[Any], None] | None = None):
        """Vectors of the newest trained pair (or the versions given, or the pinned pair) for every song
        that lacks them, its index, then the switch: the pair serves once every song has its vectors."""
        from pipelines.reembed import reembed

        if self._pinned and timbre is None and melody is None and self._models is not None:
            timbre, melody = self._models.pair.timbre, self._models.pair.melody
        summary = reembed(self.workspace, timbre_version=timbre, melody_version=melody, runner=runner,
                          on_batch=on_batch)
        if summary.switched or self._models is None or self._models.version != summary.new_version:
            self.use_models(load_models(self.workspace.root, current_pair(self.workspace.root)))
        self._searcher = None
        return summary

    def catalog_vectors(self) -> tuple[np.ndarray, Vectors]:
        """(ids, Vectors) of every song with both vectors of the pair, ordered by id."""
        models = self.models
        with self.sessions() as s:
            rows = {kind: catalog.model_version_row(s, kind, models.pair.of(kind)) for kind in ("timbre", "melody")}
            ids, xt, xm = catalog.pair_vectors(s, rows["timbre"], rows["melody"])
        if len(ids) == 0:
            dt, dm = models.dims
            return ids, Vectors(np.zeros((0, dt), np.float32), np.zeros((0, dm), np.float32))
        return ids, Vectors(xt, xm)

    def no_vectors_error(self) -> NoVectorsError | EmptyCatalogError:
        """Why there is nothing to search, and the command that fixes it."""
        n_songs = self.stats().n_songs
        if n_songs == 0:
            return EmptyCatalogError("the catalog has no songs",
                                     "run `recsys ingest SOURCE`, then `recsys train`")
        return NoVectorsError(
            f"none of the catalog's {n_songs} songs has vectors of the models {self.model_version}",
            "run `recsys embed` (it embeds the catalog and switches to the newest models)")

    # Index and search ------------------------------------------------------------------------

    @property
    def index_config(self):
        """The index settings as the device asked for wants them (`--device cpu` keeps FAISS off the GPU)."""
        from recsys.index.gpu import for_device

        return for_device(self.settings.index, self.settings.device)

    @property
    def index_dir(self) -> Path:
        return self.workspace.index_dir(self.model_version)

    def rebuild_index(self):
        """Build the song index from the catalog and save it (atomically)."""
        from recsys.index import VectorIndex

        ids, vectors = self.catalog_vectors()
        if len(ids) == 0:
            raise self.no_vectors_error()
        index = VectorIndex.build(ids, vectors.fused(INDEX_WEIGHTS), self.index_config)
        index.save(self.index_dir, self.model_version, ids_fingerprint(ids))
        self._searcher = None
        return index

    def load_index(self, ids: np.ndarray | None = None, vectors: Vectors | None = None) -> tuple[Any, bool]:
        """The saved index when it matches the catalog; rebuilt (and saved) when missing, stale or corrupt."""
        from recsys.index import load_or_rebuild

        if ids is None or vectors is None:
            ids, vectors = self.catalog_vectors()
        fused = vectors
        return load_or_rebuild(self.index_dir, self.model_version, ids_fingerprint(ids),
                               lambda: (ids, fused.fused(INDEX_WEIGHTS)), self.index_config)

    @property
    def searcher(self):
        """The pair's vectors and index, read from the catalog once."""
        if self._searcher is None:
            from recsys.search import Searcher

            ids, vectors = self.catalog_vectors()
            if len(ids) == 0:
                raise self.no_vectors_error()
            index, _ = self.load_index(ids, vectors)
            meta = {row["id"]: row for row in self.songs()}
            self._searcher = Searcher(ids, [meta[int(i)]["singer"] for i in ids],
                                      [meta[int(i)]["title"] for i in ids], vectors, self.index_config,
                                      index=index, calibrate=self.settings.fusion.calibration == "zscore")
        return self._searcher

    def weights_for(self, question: Question) -> Weights:
        """The configured weights of a question: 'singer' (who sounds like this), 'song' (similar
        songs) or 'melody' (the same melody)."""
        return question_weights(self.settings.fusion, question)

    def default_weights(self) -> Weights:
        """The 'song' question's weights: what the fused maps and exported fused vectors use."""
        return self.weights_for("song")

    def catalog_map(self, what: Literal["singers", "songs"], weighting: str = "fused"):
        """The 2-D UMAP map of singer profiles or songs under `weighting` (timbre, melody, fused):
        loaded from <workspace>/projections/<pair>/ when fitted on these rows, else fitted and saved
        there (recsys.projection.load_or_fit). Returns (CatalogMap, the rows it maps)."""
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
        """Singers who sound like `name` (the 'singer' question unless `weights` are given)."""
        return self.searcher.similar_to_singer(name, k, weights or self.weights_for("singer"))

    def search(self, query: str | Path, k: int = 10, weights: Weights | None = None,
               by: Question = "singer") -> SearchResult:
        """Query-by-song for an audio file: singers and songs ranked for the question `by` ('singer':
        who sings like this recording; 'song': similar songs; 'melody': the same melody), or by
        explicit `weights`. A file that is itself in the catalog is left out of the results."""
        from recsys.audio import content_hash

        weights = weights or self.weights_for(by)
        searcher = self.searcher  # fails first, with the next step, when there is nothing to search
        v = self.embedder.embed(query)
        with self.sessions() as s:
            same = catalog.song_by_hash(s, content_hash(query))
        exclude = frozenset({same.id}) if same is not None else frozenset()
        return _search(searcher, v.timbre[0], v.melody[0], str(query), k, weights, exclude)

    def search_song(self, song_id: int, k: int = 10, weights: Weights | None = None,
                    by: Question = "singer") -> SearchResult:
        """Query by a catalog song (as `search`): the song itself is excluded from the results."""
        weights = weights or self.weights_for(by)
        t, m = self.searcher.song_vectors(song_id)
        return _search(self.searcher, t, m, f"song:{song_id}", k, weights, frozenset({song_id}))

    def search_vectors(self, t: np.ndarray, m: np.ndarray, label: str, k: int, weights: Weights,
                       exclude_ids: frozenset[int] = frozenset()) -> SearchResult:
        return _search(self.searcher, t, m, label, k, weights, exclude_ids)

    def embed_files(self, sources: list[str | Path]) -> tuple[list[str], Vectors, list[tuple[str, str]]]:
        """Vectors for files outside the catalog: (paths embedded, vectors, [(path, error)])."""
        from recsys.audio import AudioError

        ok, feats, failed = [], [], []
        for src in sources:
            try:
                feats.append(self.embedder.features(src))
                ok.append(str(src))
            except (AudioError, OSError) as e:
                failed.append((str(src), str(e)))
        return ok, self.embedder.embed_features(feats), failed


def _search(searcher: Any, t: np.ndarray, m: np.ndarray, label: str, k: int, weights: Weights,
            exclude_ids: frozenset[int]) -> SearchResult:
    singers = searcher.similar_singers(t, m, k, weights, exclude_ids=exclude_ids)
    songs = searcher.similar_songs(t, m, k, weights, exclude_ids=exclude_ids)
    return SearchResult(label, weights, singers, songs)


def _check_audio(models: Models, workspace: Workspace) -> None:
    """Refuse models trained on audio cleaned otherwise than this workspace's audio path now cleans it."""
    from recsys.fingerprint import audio_fingerprint, same_audio

    now = audio_fingerprint(workspace.settings.audio, workspace.separation)
    for meta in (models.timbre_meta, models.melody_meta):
        if not same_audio(meta.audio, workspace.settings.audio, workspace.separation):
            stored = meta.audio or {}
            diff = sorted(f"{section}.{k}" for section in ("audio", "separation")
                          for k in set(now[section]) | set(stored.get(section, {}))
                          if now[section].get(k) != stored.get(section, {}).get(k))
            raise ModelMismatchError(
                f"the {meta.kind} model {meta.version} was trained on audio cleaned with other settings "
                f"({', '.join(diff) or 'the defaults'} differ)",
                "set them back, or run `recsys train` to train models for the new settings")


def _where(settings: Settings) -> str:
    from recsys.workspace import describe_database

    return describe_database(settings.database_url)


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
