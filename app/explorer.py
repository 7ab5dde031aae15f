"""The similarity explorer: a map of the catalog, singers who sound alike, and query by song.

    recsys --workspace DIR app [--port N] [--address A]
    streamlit run app/explorer.py -- --workspace DIR [--db URL] [--config FILE] [--manifest FILE] [--max-upload-mb 50]

Without --workspace / --db the usual RECSYS_HOME / RECSYS_DB_URL environment applies.
A thin page over recsys.api.Recommender and app/views.py; the Recommender (models, index)
and the maps are cached for the life of the server. The rankings answer one of the
questions of `recsys search --by` (similar singers, similar songs, same melody), each with
its configured weights (settings.fusion), which the weight slider starts from. Filters and
colours are the catalog's own categorical metadata columns, given or predicted
(app.views.catalog_columns). The map the page opens on (recsys.projection.FIRST_PAGE_MAPS)
is fitted by the jobs that write vectors; `recsys app` serves the page through
app/server.py, which runs it once before the first visitor; the Catalog tab is made only
while it is open.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import streamlit as st

from app import views
from recsys.api import Recommender
from recsys.config import Settings, load_settings
from recsys.embedding import Weights
from recsys.errors import RecsysError
from recsys.projection import FIRST_PAGE_MAPS, MAP_KINDS, WEIGHTINGS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="explorer", allow_abbrev=False)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--db", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--max-upload-mb", type=float, default=views.MAX_UPLOAD_MB)
    args, _ = parser.parse_known_args(argv)  # under AppTest, argv is the test runner's
    return args


@st.cache_resource(show_spinner="Loading the catalog, models and index...")
def load_recommender(_settings: Settings, key: str) -> Recommender:
    """One Recommender per effective configuration (`key`), shared by every session."""
    rec = Recommender.from_settings(_settings)
    _ = rec.searcher, rec.embedder  # load models and index now, once (an assignment: no Streamlit "magic")
    return rec


@st.cache_resource(show_spinner=False)
def load_tables(_rec: Recommender, key: str):
    """The song and singer tables, the catalog's categorical metadata columns and each song's label
    (computed once: a label per song on every run was a third of a page run)."""
    songs = views.song_table(_rec.songs())
    columns = views.catalog_columns(songs)
    return songs, views.singer_table(songs, columns), columns, views.song_labels(songs)


@st.cache_resource(show_spinner="Fitting the map (first time for this model and weighting)...")
def load_map(_rec: Recommender, key: str, what: str, weighting: str) -> views.MapData:
    return views.catalog_map(_rec, what, weighting)


def _use_question_weights(asked: dict[str, Weights]) -> None:
    """on_change of the question: the weight slider moves to the chosen question's weights."""
    st.session_state["w_timbre"] = views.timbre_share(asked[st.session_state["question"]])


def _open_singer_from_map() -> None:
    """on_select of the map: the clicked point's singer becomes the singer shown."""
    name = views.singer_from_selection(st.session_state.get("map"))
    if name is not None and name in st.session_state.get("_singers", ()):
        st.session_state["singer"] = name


def _audio(label: str, path: str) -> None:
    """A song's player, folded: the browser draws no audio element, and fetches no audio, until it is opened
    (open players made the first page load wait for them)."""
    with st.expander(f"Listen: {label}"):
        st.audio(path)


def _results(rec: Recommender, singers: list, songs: list | None, weights: Weights, table, what: str) -> None:
    """A singer ranking (and optional song ranking) with the score split (bars in the table) and audio of the
    top singers."""
    frame = views.singer_hits_frame(singers, views.singer_fusion(rec, weights))
    if frame.empty:
        st.info("No singer matches the filters.")
        return
    best = frame.iloc[0]
    st.markdown(
        f"Best match for {what}: **{best.singer}** (score {best.score:.3f}: timbre {best.timbre:.3f}, "
        f"melody {best.melody:.3f})"
    )
    st.dataframe(frame, hide_index=True, column_config=_ranking_columns(frame))
    if songs is not None:
        st.markdown("**Closest songs**")
        st.dataframe(views.song_hits_frame(songs, views.song_fusion(rec, weights)), hide_index=True)
    cols = st.columns(min(3, len(frame)))
    for col, (_, hit) in zip(cols, frame.head(3).iterrows()):
        with col:
            row = table.loc[int(hit.best_song_id)]
            _audio(f"{hit.singer}: {row.title or row.song_id}", row.path)


def _ranking_columns(frame) -> dict:
    """Scores to 3 decimals; the score's timbre and melody parts drawn as bars in the table itself, on one
    scale (a separate bar chart cost every interaction a second plotly redraw: docs/benchmarks.md)."""
    parts = frame[["timbre_part", "melody_part"]]
    low, high = min(0.0, float(parts.min().min())), max(1e-9, float(parts.max().max()))
    columns = {c: st.column_config.NumberColumn(format="%.3f") for c in ("score", "timbre", "melody")}
    for c, label in (("timbre_part", "timbre part"), ("melody_part", "melody part")):
        columns[c] = st.column_config.ProgressColumn(label, format="%.3f", min_value=low, max_value=high)
    return columns


def _catalog(rec: Recommender, songs, columns, song_ids: set[int] | None) -> None:
    """The Catalog tab: counts, recent ingestion runs and errors, and the songs matching the filters."""
    stats = rec.stats()
    cols = st.columns(5)
    cols[0].metric("Singers", stats.n_singers)
    cols[1].metric("Songs", stats.n_songs)
    cols[2].metric("Audio (min)", f"{stats.total_duration_s / 60:.1f}")
    cols[3].metric("Ingestion runs", stats.n_runs)
    cols[4].metric("Ingestion errors", stats.n_errors)
    st.markdown(
        "**Songs by status**: " + ", ".join(f"{status} {n}" for status, n in stats.songs_by_status.items())
    )
    st.markdown("**Recent ingestion runs**")
    st.dataframe(views.runs_frame(rec), hide_index=True)
    errors = views.errors_frame(rec)
    if errors.empty:
        st.success("No ingestion errors.")
    else:
        st.markdown(
            "**Recent ingestion errors** ("
            + ", ".join(f"{c} {n}" for c, n in stats.errors_by_cause.items())
            + ")"
        )
        st.dataframe(errors, hide_index=True)
    shown = views.songs_frame(songs, columns, song_ids)
    st.markdown(
        f"**Songs** ({len(shown)} of {len(songs)}" + (" match the filters)" if song_ids is not None else ")")
    )
    st.dataframe(shown, hide_index=True)


def main() -> None:
    st.set_page_config(page_title="singer-recsys explorer", layout="wide")
    args = parse_args(sys.argv[1:])
    try:
        overrides = {"manifest_file": Path(args.manifest)} if args.manifest else {}
        settings = load_settings(
            config_file=Path(args.config) if args.config else None,
            workspace=args.workspace,
            db_url=args.db,
            **overrides,
        )
        rec = load_recommender(settings, settings.model_dump_json())
    except (RecsysError, ValueError, KeyError, OSError) as e:  # RecsysError: the cause, then the next step
        st.error(f"Cannot open the workspace: {e}")
        st.stop()
    key = f"{rec.settings.database_url}|{rec.model_version}"
    songs, singers, columns, song_labels = load_tables(rec, key)
    st.session_state["_singers"] = list(rec.searcher.singers)
    default_w = rec.default_weights()  # the 'song' question's: what the fused maps use
    asked = views.question_weights(rec)  # settings.fusion, as `recsys search --by` reads it
    # The slider starts from the default question's weights; choosing a question moves it to that one's.
    st.session_state.setdefault("w_timbre", views.timbre_share(asked[views.DEFAULT_QUESTION]))

    with st.sidebar:
        st.header("Controls")
        question = st.radio(
            "Question",
            list(asked),
            index=list(asked).index(views.DEFAULT_QUESTION),
            format_func=views.QUESTION_LABELS.get,
            key="question",
            on_change=_use_question_weights,
            args=(asked,),
            help="What the rankings answer, as `recsys search --by singer|song|melody`: each question has "
            "its configured weights (fusion), which the slider below starts from.",
        )
        w_t = st.slider(
            "Timbre weight",
            0.0,
            1.0,
            step=0.05,
            key="w_timbre",
            help="The melody weight is 1 - timbre weight. Choosing a question sets it back to that question's.",
        )
        weights = views.page_weights(w_t, asked[question])
        st.caption(
            f"timbre {views.timbre_share(weights):.2f} / melody {1 - views.timbre_share(weights):.2f}"
            + (f" ({views.QUESTION_LABELS[question]})" if weights == asked[question] else " (set by hand)")
        )
        k = st.slider("Results (k)", 1, 20, 5, key="k")
        st.subheader("Filters")
        if not columns:
            st.caption("The catalog's metadata has no categorical column to filter on.")
        filters = {
            c.name: st.multiselect(c.label, c.values, key=f"filter_{c.name}", placeholder="any")
            for c in columns
        }
        song_ids = views.allowed_songs(songs, filters)
        allowed = views.allowed_singers(songs, song_ids)
        st.subheader("Map")
        first_what, first_weighting = FIRST_PAGE_MAPS[0]  # the map the jobs fit ahead of the first visit
        what = st.radio(
            "Points", MAP_KINDS, index=MAP_KINDS.index(first_what), key="map_what", horizontal=True
        )
        weighting = st.radio(
            "Map weighting",
            WEIGHTINGS,
            index=WEIGHTINGS.index(first_weighting),
            key="map_weighting",
            horizontal=True,
            help=f"fused uses the configured weights (timbre {default_w.timbre:g}, "
            f"melody {default_w.melody:g})",
        )
        colors = views.color_options(columns)
        first = next(
            (c.name for c in columns if c.per_singer), next(iter(colors))
        )  # a singer's own attribute
        color = st.selectbox(
            "Colour by",
            list(colors),
            index=list(colors).index(first),
            format_func=colors.get,
            key="map_color",
        )

    st.title("Singer similarity explorer")
    st.caption(
        f"workspace {rec.settings.workspace} · models {rec.model_version} · "
        f"{len(singers)} singers, {len(songs)} songs"
    )
    map_box = st.container()  # filled last, so it can show the query chosen below
    # on_change="rerun": the Catalog tab's statistics and tables are made only while it is open (not
    # for the first page). The query tab is always drawn, so its upload and song survive a tab switch.
    singer_tab, query_tab, catalog_tab = st.tabs(
        ["Singer", "Query by song", "Catalog"], key="tab", on_change="rerun"
    )

    with singer_tab:
        singer = st.selectbox(
            "Singer", rec.searcher.singers, key="singer", help="Or click a point on the map."
        )
        hits = views.singers_like_singer(rec, singer, k, weights, allowed)
        me = singers.loc[singer]
        tags = ", ".join(me[c.name] for c in columns if c.per_singer and isinstance(me.get(c.name), str))
        song = songs.loc[int(me.song_id)]
        _audio(f"{singer} ({tags}): {song.title or song.song_id}", song.path)
        _results(rec, hits, None, weights, songs, singer)

    with query_tab:
        query = None
        upload = st.file_uploader(
            "Upload a recording",
            type=list(views.UPLOAD_TYPES),
            key="upload",
            max_upload_size=max(1, math.ceil(args.max_upload_mb)),
            help=f"Up to {args.max_upload_mb:g} MB; an upload takes precedence over the catalog song below.",
        )
        picked = st.selectbox(
            "...or pick a catalog song",
            songs.song_id.tolist(),
            index=None,
            key="pick_song",
            format_func=song_labels.get,
            placeholder="a catalog song",
        )
        if upload is not None:
            cache = st.session_state.setdefault("_uploads", {})
            if upload.file_id not in cache:
                try:
                    cache[upload.file_id] = views.handle_upload(
                        upload.name, upload.getvalue(), rec, int(args.max_upload_mb * 2**20)
                    )
                except views.UploadError as e:
                    cache[upload.file_id] = str(e)
            query = cache[upload.file_id]
            if isinstance(query, str):
                st.error(query)
                query = None
        elif picked is not None:
            query = views.song_query(rec, int(picked), songs)
        if query is not None:
            if query.song_id is not None and upload is not None:
                st.caption(f"This recording is catalog song #{query.song_id}; it is left out of the results.")
            _results(
                rec,
                views.singers_like_query(rec, query, k, weights, allowed),
                views.songs_like_query(rec, query, k, weights, song_ids),
                weights,
                songs,
                query.label,
            )
        elif upload is None:
            st.info("Upload a recording or pick a catalog song to find the singers who sound like it.")

    if catalog_tab.open:
        with catalog_tab:
            _catalog(rec, songs, columns, song_ids)

    with map_box:
        data = load_map(rec, key, what, weighting)
        frame = views.map_frame(data, singers, songs, columns, clusters=color == views.CLUSTER)
        if song_ids is not None:  # songs matching the filters, or the singers of those songs
            frame = frame[frame.point.isin(song_ids if what == "songs" else allowed)]
        query_xy = views.place_query(data, query) if query is not None else None
        note = data.cmap.projection.note_
        st.caption(
            f"{what} under {weighting} vectors; map {data.cmap.status}" + (f"; {note}" if note else "")
        )
        fig = views.map_figure(
            frame, color, singer, query_xy, query.label if query else "query", labels=what == "singers"
        )
        st.plotly_chart(fig, key="map", on_select=_open_singer_from_map, selection_mode="points")


# Streamlit runs this file as __main__. A worker process that multiprocessing later spawns from
# the same interpreter (AppTest runs the script in the test process) re-imports it as
# __mp_main__ and must not draw the page.
if __name__ == "__main__":
    main()
