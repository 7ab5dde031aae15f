"""What the explorer shows, as plain functions of a Recommender: tables, rankings, maps, uploads.

Nothing here imports streamlit, so every piece is tested directly; app/explorer.py lays them out.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from recsys import catalog
from recsys.api import Recommender
from recsys.audio import AudioError
from recsys.config import AUDIO_EXTENSIONS
from recsys.embedding import Vectors, Weights
from recsys.projection import CatalogMap, cluster_labels, map_rows
from recsys.search import SingerHit, SongHit, singer_key

MAX_UPLOAD_MB = 50  # the explorer's default; `recsys app` passes the same to streamlit's server.maxUploadSize
UPLOAD_TYPES = tuple(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)  # wav, flac, ogg, mp3
FILTER_COLUMNS = ("gender", "register", "style")  # singer-level metadata the sidebar filters on
COLOR_COLUMNS = {
    "singers": ("gender", "register", "style", "cluster"),
    "songs": ("gender", "register", "style", "melody_id", "cluster"),
}
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
    Raises UploadError, naming the file, for a wrong type, an empty or oversized upload, and
    anything recsys.audio rejects (not audio, truncated, silent...).
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
        try:
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


def singer_table(songs: pd.DataFrame) -> pd.DataFrame:
    """One row per singer, indexed by name: n_songs, the most common value of each filter column,
    and a representative song (the first by id)."""
    rows = []
    for name, group in songs.groupby("singer", sort=True):
        row: dict[str, Any] = {"singer": name, "n_songs": len(group), "song_id": int(group.song_id.iloc[0])}
        for col in FILTER_COLUMNS:
            if col in group:
                values = [v for v in group[col] if isinstance(v, str)]
                row[col] = Counter(values).most_common(1)[0][0] if values else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("singer", drop=False)


def filter_options(singers: pd.DataFrame) -> dict[str, list[str]]:
    """The values each filter column takes in the catalog (columns it lacks are left out)."""
    return {col: sorted(singers[col].dropna().unique().tolist()) for col in FILTER_COLUMNS if col in singers}


def allowed_singers(singers: pd.DataFrame, filters: dict[str, Sequence[str]]) -> set[str] | None:
    """Singers matching every non-empty filter; None when no filter is set."""
    active = {col: set(values) for col, values in filters.items() if values}
    if not active:
        return None
    keep = np.ones(len(singers), dtype=bool)
    for col, values in active.items():
        keep &= singers[col].isin(values).to_numpy()
    return set(singers.index[keep])


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
    rec: Recommender, q: Query, k: int, weights: Weights, allowed: set[str] | None = None
) -> list[SongHit]:
    sr = rec.searcher
    return top_k(
        lambda n: sr.similar_songs(q.timbre, q.melody, n, weights, exclude_ids=q.exclude_ids),
        k,
        len(sr),
        _keep(allowed),
    )


def score_parts(timbre: np.ndarray, melody: np.ndarray, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
    """The timbre and melody shares of fused scores: they sum to the score (see recsys.embedding)."""
    a2, b2 = weights.timbre**2, weights.melody**2
    return a2 * np.asarray(timbre) / (a2 + b2), b2 * np.asarray(melody) / (a2 + b2)


def singer_hits_frame(hits: list[SingerHit], weights: Weights) -> pd.DataFrame:
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
    return _with_parts(frame, weights)[columns]


def song_hits_frame(hits: list[SongHit], weights: Weights) -> pd.DataFrame:
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
    return _with_parts(frame, weights)[columns]


def _with_parts(frame: pd.DataFrame, weights: Weights) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    tp, mp = score_parts(frame["timbre"].to_numpy(float), frame["melody"].to_numpy(float), weights)
    frame["timbre_part"], frame["melody_part"] = tp, mp
    return frame


def split_figure(frame: pd.DataFrame, label: str = "singer") -> go.Figure:
    """Stacked horizontal bars: each result's score as its timbre share + melody share."""
    names = frame[label].astype(str).tolist()
    fig = go.Figure(
        [
            go.Bar(y=names, x=frame["timbre_part"], name="timbre", orientation="h", marker_color="#4C78A8"),
            go.Bar(y=names, x=frame["melody_part"], name="melody", orientation="h", marker_color="#F58518"),
        ]
    )
    fig.update_layout(
        barmode="relative",
        height=80 + 32 * len(frame),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed"},
        xaxis_title="share of the score",
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


# Maps --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapData:
    """A catalog map plus what colours it: k-means clusters of the rows it was fitted on."""

    what: str
    weighting: str
    cmap: CatalogMap
    clusters: np.ndarray  # (n,) int
    weights: Weights  # of the fused weighting


def catalog_map(rec: Recommender, what: str, weighting: str) -> MapData:
    """The saved map of singers (profiles) or songs under `weighting`; fitted and saved if stale."""
    cmap, x = rec.catalog_map(what, weighting)
    return MapData(what, weighting, cmap, cluster_labels(x), rec.default_weights())


def place_query(m: MapData, q: Query) -> np.ndarray:
    """(2,) map position of a query."""
    x = map_rows(Vectors(q.timbre[None], q.melody[None]), m.weighting, m.weights)
    return m.cmap.projection.transform(x)[0]


def map_frame(m: MapData, singers: pd.DataFrame, songs: pd.DataFrame) -> pd.DataFrame:
    """One row per map point: key (singer or song id), x, y, singer, title, the colour columns as strings."""
    xy = m.cmap.projection.embedding_
    if m.what == "singers":
        frame = singers.loc[m.cmap.keys].reset_index(drop=True)
        frame["title"] = frame["n_songs"].map(lambda n: f"{n} songs")
    else:
        frame = songs.loc[m.cmap.keys].reset_index(drop=True)
    frame = frame.copy()
    frame["key"] = m.cmap.keys  # singer name or song id
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    frame["cluster"] = [f"cluster {c}" for c in m.clusters]
    for col in COLOR_COLUMNS[m.what]:
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
    """Scatter coloured by `color`; hover shows singer and song; customdata is (singer, title, key).

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
                        group["key"].astype(str),
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
