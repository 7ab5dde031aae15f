"""What the explorer shows, as plain functions of a Recommender: tables, rankings, maps, uploads.

Nothing here imports streamlit, so every piece is tested directly; app/explorer.py lays them out.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from recsys import catalog
from recsys.api import Recommender
from recsys.audio import AudioError, probe
from recsys.config import AUDIO_EXTENSIONS
from recsys.embedding import Vectors, Weights
from recsys.fusion import QUESTIONS, Fusion, Question
from recsys.projection import CatalogMap, cluster_labels, map_rows
from recsys.search import SingerHit, SongHit, singer_key

MAX_UPLOAD_MB = 50  # the explorer's default; `recsys app` passes the same to streamlit's server.maxUploadSize
UPLOAD_TYPES = tuple(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)  # wav, flac, ogg, mp3
MAX_CATEGORIES = 50  # a metadata column with more distinct values is no filter or colour
TABLE_COLUMNS = ("song_id", "singer", "title", "path")  # the song table's own columns, not metadata
MAP_COLUMNS = ("point", "x", "y", "cluster", "n_songs")  # the explorer's own, so never a metadata column's
CLUSTER = "cluster"  # the colour of k-means clusters, offered beside the metadata columns
# The questions the rankings answer (recsys.fusion), as the page names them; the default is that of
# `recsys search --by` and Recommender.search.
QUESTION_LABELS: dict[Question, str] = {
    "singer": "similar singers",
    "song": "similar songs",
    "melody": "same melody",
}
DEFAULT_QUESTION: Question = "singer"
H = TypeVar("H")


# Queries -----------------------------------------------------------------------------------------


class UploadError(ValueError):
    """An upload the explorer cannot search with; the message is meant for the user."""


@dataclass(frozen=True)
class Query:
    """A query song's vectors: timbre (Dt,), melody (Dm,); `exclude_ids` keeps the song itself out."""

    label: str
    timbre: np.ndarray
    melody: np.ndarray
    exclude_ids: frozenset[int] = frozenset()
    song_id: int | None = None  # set when the query is a catalog song (or an upload of one)


def handle_upload(name: str, data: bytes, rec: Recommender, max_bytes: int = MAX_UPLOAD_MB * 2**20) -> Query:
    """Check an uploaded file's type and size, decode it through the library and embed it.

    The bytes go to a temporary file with the upload's suffix (decoding goes by extension).
    Raises UploadError, naming the file, for a wrong type, an empty or oversized upload, audio
    longer than audio.max_query_seconds, and anything recsys.audio rejects (not audio,
    truncated, silent...).
    """
    suffix = Path(name).suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        raise UploadError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"upload one of: {', '.join(UPLOAD_TYPES)}"
        )
    if len(data) == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise UploadError(
            f"{name}: {len(data) / 2**20:.1f} MB is over the upload limit of {max_bytes / 2**20:g} MB"
        )
    with tempfile.TemporaryDirectory(prefix="recsys-upload-") as tmp:
        path = Path(tmp) / f"query{suffix}"
        path.write_bytes(data)
        limit = rec.embedder.audio_cfg.max_query_seconds
        try:
            seconds = probe(path).duration
            if limit is not None and seconds > limit:
                raise UploadError(
                    f"{name}: the recording lasts {seconds / 60:.1f} min, longer than the {limit / 60:g} min "
                    f"a query may last (audio.max_query_seconds={limit:g}); upload an excerpt"
                )
            v = rec.embedder.embed(path)
        except AudioError as e:
            raise UploadError(f"{name}: cannot use this file ({e.cause}): {e.explanation}") from e
    with rec.sessions() as s:
        same = catalog.song_by_hash(s, hashlib.sha256(data).hexdigest())
        same_id = same.id if same is not None else None
    exclude = frozenset({same_id}) if same_id is not None else frozenset()
    return Query(name, v.timbre[0], v.melody[0], exclude, same_id)


def song_query(rec: Recommender, song_id: int, songs: pd.DataFrame) -> Query:
    """A catalog song as the query (itself excluded from the results)."""
    t, m = rec.searcher.song_vectors(song_id)
    row = songs.loc[song_id]
    return Query(f"{row.title or song_id} by {row.singer}", t, m, frozenset({song_id}), song_id)


def question_weights(rec: Recommender) -> dict[Question, Weights]:
    """Each question's configured weights (settings.fusion), as `recsys search --by` uses them."""
    return {q: rec.weights_for(q) for q in QUESTIONS}


def timbre_share(w: Weights) -> float:
    """The timbre weight as a share of the two (the explorer's one weight slider)."""
    return w.timbre / (w.timbre + w.melody)


def page_weights(share: float, question: Weights) -> Weights:
    """The weights the page ranks with: the question's own while the slider sits at its share, else
    the slider's share (timbre) and the rest (melody)."""
    if abs(share - timbre_share(question)) < 1e-9:
        return question
    return Weights(share, round(1.0 - share, 6))


# Catalog tables ----------------------------------------------------------------------------------


PREDICTED_SUFFIX = " (predicted)"


def song_table(songs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per catalog song, indexed by song id: singer (its search key), title, path, metadata.

    Where a song lacks a given value of an attribute that a probe predicted
    (recsys.probes), the column holds the prediction marked "<value> (predicted)", so
    filters and map colours can use it and still tell it from a given label.
    """
    rows = []
    for song in songs:
        meta = {k: str(v) for k, v in (song.get("metadata") or {}).items()}
        for attribute, entry in (song.get("predicted") or {}).items():
            if meta.get(attribute) in (None, "") and isinstance(entry, dict) and "value" in entry:
                meta[attribute] = f"{entry['value']}{PREDICTED_SUFFIX}"
        rows.append(
            {
                **meta,
                "song_id": song["id"],
                "singer": singer_key(song["id"], song["singer"]),
                "title": song["title"],
                "path": song["path"],
            }
        )
    table = pd.DataFrame(rows, columns=None if rows else ["song_id", "singer", "title", "path"])
    return table.set_index("song_id", drop=False).sort_index()


def song_labels(songs: pd.DataFrame) -> dict[int, str]:
    """Song id -> "#id title (singer)", as the song pickers show it."""
    return {
        int(i): f"#{i} {title} ({singer})" for i, title, singer in zip(songs.index, songs.title, songs.singer)
    }


@dataclass(frozen=True)
class Column:
    """A categorical metadata column of the catalog: its name and the values its songs take."""

    name: str
    values: tuple[str, ...]  # sorted; a probe's predictions carry PREDICTED_SUFFIX
    predicted: bool  # every value is a prediction (no song gives one)
    per_singer: bool = False  # each singer's songs share one value (gender, label), unlike a per-song melody

    @property
    def label(self) -> str:
        name = self.name.replace("_", " ")
        return name[:1].upper() + name[1:] + (PREDICTED_SUFFIX if self.predicted else "")


def catalog_columns(songs: pd.DataFrame, max_values: int = MAX_CATEGORIES) -> list[Column]:
    """The song table's metadata columns that filters and colours can use, in table order.

    Any column qualifies, whatever its name, when it takes 1 to `max_values` distinct
    values and they are not all numbers: a number-valued column (tempo, key shift) is a
    measurement, and a column of hundreds of values is no category.
    """
    out = []
    for name in songs.columns:
        if name in TABLE_COLUMNS or name in MAP_COLUMNS:
            continue
        values = sorted({v for v in songs[name] if isinstance(v, str) and v != ""})
        given = [v for v in values if not v.endswith(PREDICTED_SUFFIX)]
        if not 1 <= len(values) <= max_values or all(
            _is_number(v.removesuffix(PREDICTED_SUFFIX)) for v in values
        ):
            continue
        per_singer = bool((songs.groupby("singer")[name].nunique(dropna=True) <= 1).all())
        out.append(Column(str(name), tuple(values), predicted=not given, per_singer=per_singer))
    return out


def color_options(columns: Sequence[Column]) -> dict[str, str]:
    """What a map can be coloured by (column name -> label): the categorical columns, then clusters."""
    return {**{c.name: c.label for c in columns}, CLUSTER: CLUSTER}


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def singer_table(songs: pd.DataFrame, columns: Sequence[Column] | None = None) -> pd.DataFrame:
    """One row per singer, indexed by name: n_songs, a representative song (the first by id) and,
    for each categorical column (default: catalog_columns), the most common value of its songs."""
    names = [c.name for c in (catalog_columns(songs) if columns is None else columns)]
    rows = []
    for name, group in songs.groupby("singer", sort=True):
        row: dict[str, Any] = {"singer": name, "n_songs": len(group), "song_id": int(group.song_id.iloc[0])}
        for col in names:
            values = [v for v in group[col] if isinstance(v, str)] if col in group else []
            row[col] = Counter(values).most_common(1)[0][0] if values else None
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["singer", "n_songs", "song_id", *names]).set_index(
        "singer", drop=False
    )


def allowed_songs(songs: pd.DataFrame, filters: dict[str, Sequence[str]]) -> set[int] | None:
    """Ids of the songs matching every non-empty filter (column -> values); None when no filter is set."""
    active = {col: set(values) for col, values in filters.items() if values}
    if not active:
        return None
    keep = np.ones(len(songs), dtype=bool)
    for col, values in active.items():
        keep &= songs[col].isin(values).to_numpy() if col in songs else False
    return {int(i) for i in songs.index[keep]}


def allowed_singers(songs: pd.DataFrame, song_ids: set[int] | None) -> set[str] | None:
    """The singers of `song_ids` (a singer passes the filters with any one matching song); None: all."""
    if song_ids is None:
        return None
    return set(songs.loc[sorted(song_ids), "singer"])


def songs_frame(
    songs: pd.DataFrame, columns: Sequence[Column], song_ids: set[int] | None = None
) -> pd.DataFrame:
    """The catalog's songs (those of `song_ids` when given): id, singer, title and the categorical columns."""
    shown = songs if song_ids is None else songs.loc[sorted(song_ids)]
    return shown[["song_id", "singer", "title", *[c.name for c in columns]]].reset_index(drop=True)


# Rankings ----------------------------------------------------------------------------------------


def top_k(
    fetch: Callable[[int], list[H]], k: int, total: int, keep: Callable[[H], bool] | None = None
) -> list[H]:
    """The first k results of fetch(n) that pass `keep`, fetching more (x4) until found or exhausted."""
    n = max(1, min(k, total))
    while True:
        hits = fetch(n)
        kept = [h for h in hits if keep is None or keep(h)]
        if len(kept) >= k or n >= total:
            return kept[:k]
        n = min(total, 4 * n)


def _keep(allowed: set[str] | None) -> Callable[[Any], bool] | None:
    return None if allowed is None else (lambda h: h.singer in allowed)


def singers_like_singer(
    rec: Recommender, name: str, k: int, weights: Weights, allowed: set[str] | None = None
) -> list[SingerHit]:
    sr = rec.searcher
    return top_k(lambda n: sr.similar_to_singer(name, n, weights), k, len(sr.singers) - 1, _keep(allowed))


def singers_like_query(
    rec: Recommender, q: Query, k: int, weights: Weights, allowed: set[str] | None = None
) -> list[SingerHit]:
    sr = rec.searcher
    return top_k(
        lambda n: sr.similar_singers(q.timbre, q.melody, n, weights, exclude_ids=q.exclude_ids),
        k,
        len(sr.singers),
        _keep(allowed),
    )


def songs_like_query(
    rec: Recommender, q: Query, k: int, weights: Weights, allowed: set[int] | None = None
) -> list[SongHit]:
    """The k songs closest to the query among `allowed` song ids (None: all)."""
    sr = rec.searcher
    return top_k(
        lambda n: sr.similar_songs(q.timbre, q.melody, n, weights, exclude_ids=q.exclude_ids),
        k,
        len(sr),
        None if allowed is None else (lambda h: h.song_id in allowed),
    )


def singer_fusion(rec: Recommender, weights: Weights) -> Fusion:
    """How singer hits were scored: on the profiles' calibration, or the songs' when a singer scores
    as its best song ("max" aggregation)."""
    sr = rec.searcher
    return sr.singer_fusion(weights) if sr.aggregation == "mean" else sr.song_fusion(weights)


def song_fusion(rec: Recommender, weights: Weights) -> Fusion:
    """How song hits were scored."""
    return rec.searcher.song_fusion(weights)


def score_parts(timbre: np.ndarray, melody: np.ndarray, fusion: Fusion) -> tuple[np.ndarray, np.ndarray]:
    """The timbre and melody shares of fused scores: each modality's weighted, calibrated evidence.

    The score is affine in the two cosines (recsys.fusion), so the score with one
    modality held at its catalog mean is the other's share, and the shares sum to the score.
    """
    ct, cm = np.asarray(timbre, np.float64), np.asarray(melody, np.float64)
    cal = fusion.calibration
    return fusion.scores(ct, np.full_like(cm, cal.melody_mean)), fusion.scores(
        np.full_like(ct, cal.timbre_mean), cm
    )


def singer_hits_frame(hits: list[SingerHit], fusion: Fusion) -> pd.DataFrame:
    """rank, singer, score, timbre/melody cosines, their shares of the score, n_songs, best_song_id."""
    columns = [
        "rank",
        "singer",
        "score",
        "timbre",
        "melody",
        "timbre_part",
        "melody_part",
        "n_songs",
        "best_song_id",
    ]
    frame = pd.DataFrame(
        [h.as_dict() for h in hits],
        columns=[c for c in columns if c not in ("rank", "timbre_part", "melody_part")],
    )
    return _with_parts(frame, fusion)[columns]


def song_hits_frame(hits: list[SongHit], fusion: Fusion) -> pd.DataFrame:
    """rank, song_id, title, singer, score, timbre/melody cosines and their shares of the score."""
    columns = [
        "rank",
        "song_id",
        "title",
        "singer",
        "score",
        "timbre",
        "melody",
        "timbre_part",
        "melody_part",
    ]
    frame = pd.DataFrame(
        [h.as_dict() for h in hits], columns=["song_id", "singer", "title", "score", "timbre", "melody"]
    )
    return _with_parts(frame, fusion)[columns]


def _with_parts(frame: pd.DataFrame, fusion: Fusion) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    tp, mp = score_parts(frame["timbre"].to_numpy(float), frame["melody"].to_numpy(float), fusion)
    frame["timbre_part"], frame["melody_part"] = tp, mp
    return frame


# Maps --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapData:
    """A catalog map, the rows it was fitted on, and their k-means clusters (computed when first asked:
    a page coloured by metadata never pays for scikit-learn's import and the fit)."""

    what: str
    weighting: str
    cmap: CatalogMap
    x: np.ndarray  # (n, d) the rows of the map
    weights: Weights  # of the fused weighting

    @cached_property
    def clusters(self) -> np.ndarray:
        """(n,) int cluster of each point."""
        return cluster_labels(self.x)


def catalog_map(rec: Recommender, what: str, weighting: str) -> MapData:
    """The saved map of singers (profiles) or songs under `weighting`; fitted and saved if stale."""
    cmap, x = rec.catalog_map(what, weighting)
    return MapData(what, weighting, cmap, x, rec.default_weights())


def place_query(m: MapData, q: Query) -> np.ndarray:
    """(2,) map position of a query."""
    x = map_rows(Vectors(q.timbre[None], q.melody[None]), m.weighting, m.weights)
    return m.cmap.projection.transform(x)[0]


def map_frame(
    m: MapData,
    singers: pd.DataFrame,
    songs: pd.DataFrame,
    columns: Sequence[Column] = (),
    clusters: bool = True,
) -> pd.DataFrame:
    """One row per map point: point (singer or song id), x, y, singer, title, cluster (with
    `clusters`) and the categorical `columns` as strings ("unknown" where a point has no value)."""
    xy = m.cmap.projection.embedding_
    if m.what == "singers":
        frame = singers.loc[m.cmap.keys].reset_index(drop=True)
        frame["title"] = frame["n_songs"].map(lambda n: f"{n} songs")
    else:
        frame = songs.loc[m.cmap.keys].reset_index(drop=True)
    frame = frame.copy()
    frame["point"] = m.cmap.keys  # singer name or song id
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    if clusters:
        frame[CLUSTER] = [f"cluster {c}" for c in m.clusters]
    for col in [c.name for c in columns]:
        if col not in frame:
            frame[col] = None
        frame[col] = frame[col].fillna("unknown").astype(str)
    return frame


def map_figure(
    frame: pd.DataFrame,
    color: str,
    selected: str | None = None,
    query_xy: np.ndarray | None = None,
    query_label: str = "query",
    labels: bool = False,
) -> go.Figure:
    """Scatter coloured by `color`; hover shows singer and song; customdata is (singer, title, point).

    The selected singer's points get a black ring; a query is a red star; `labels` writes the singer names.
    """
    fig = go.Figure()
    for value, group in frame.groupby(color, sort=True):
        fig.add_trace(
            go.Scatter(
                x=group["x"],
                y=group["y"],
                mode="markers+text" if labels else "markers",
                name=str(value),
                text=group["singer"] if labels else None,
                textposition="top center",
                textfont={"size": 10},
                marker={
                    "size": 11,
                    "line": {"width": [3 if s == selected else 0 for s in group["singer"]], "color": "black"},
                },
                customdata=np.stack(
                    [
                        group["singer"].astype(str),
                        group["title"].fillna("").astype(str),
                        group["point"].astype(str),
                    ],
                    axis=1,
                ),
                hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]}<extra>" + str(value) + "</extra>",
            )
        )
    if query_xy is not None:
        fig.add_trace(
            go.Scatter(
                x=[float(query_xy[0])],
                y=[float(query_xy[1])],
                mode="markers+text",
                name="query",
                text=[query_label],
                textposition="top center",
                marker={"symbol": "star", "size": 20, "color": "red", "line": {"width": 1, "color": "black"}},
                hovertemplate=f"<b>query</b><br>{query_label}<extra></extra>",
            )
        )
    fig.update_layout(
        height=460,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend_title_text=color,
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
        clickmode="event+select",
        dragmode="pan",
    )
    return fig


def singer_from_selection(event: Any) -> str | None:
    """The singer of the first selected catalog point in a plotly_chart selection event, if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points:
        data = point.get("customdata")
        if data:
            return str(data[0])
    return None


# Catalog statistics ------------------------------------------------------------------------------


def runs_frame(rec: Recommender, limit: int = 10) -> pd.DataFrame:
    """The newest ingestion runs: id, source, status, times and counts."""
    with rec.sessions() as s:
        runs = catalog.recent_runs(s, limit)
        rows = [
            {
                "run": r.id,
                "source": r.source,
                "status": r.status,
                "started": r.started_at,
                "finished": r.finished_at,
                "ingested": (r.counts or {}).get("ingested"),
                "skipped": (r.counts or {}).get("skipped"),
                "failed": sum(((r.counts or {}).get("failed") or {}).values()),
            }
            for r in runs
        ]
    return pd.DataFrame(
        rows, columns=["run", "source", "status", "started", "finished", "ingested", "skipped", "failed"]
    )


def errors_frame(rec: Recommender, limit: int = 20) -> pd.DataFrame:
    """The newest ingestion errors: run, path, cause, message."""
    with rec.sessions() as s:
        rows = [
            {"run": e.run_id, "path": e.path, "cause": e.cause, "message": e.message, "at": e.created_at}
            for e in catalog.recent_errors(s, limit)
        ]
    return pd.DataFrame(rows, columns=["run", "path", "cause", "message", "at"])
