"""The catalog on SQLite and PostgreSQL: migrations, idempotent writes, races, embeddings, stats."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from datetime import timezone
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, delete, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from recsys import catalog
from recsys.catalog import Embedding, IngestError, Singer, Song


def sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def song_row(i: int, **overrides: Any) -> dict[str, Any]:
    row = {
        "content_hash": sha(i),
        "path": f"/music/singer{i % 3}/song{i}.wav",
        "singer": f"singer{i % 3}",
        "title": f"song {i}",
        "external_id": f"ext-{i}",
        "duration_s": 10.0 + i,
        "sample_rate": 44100,
        "channels": 2,
        "format": "WAV",
        "n_voiced_chunks": 4,
        "metadata": {"genre": "pop", "index": i},
    }
    return row | overrides


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    factory = catalog.open_catalog(db_url)
    yield factory
    factory.kw["bind"].dispose()


def add_songs(sessions: sessionmaker[Session], n: int) -> list[int]:
    with catalog.session_scope(sessions) as s:
        return [catalog.add_song_if_new(s, **song_row(i))[0].id for i in range(n)]


def model(s: Session, kind: str = "timbre", version: str = "v1") -> catalog.ModelVersion:
    return catalog.register_model_version(s, kind, version, {"dim": 8}, fingerprint=f"fp-{kind}-{version}")


# --- migrations ----------------------------------------------------------------------------------


def schema_snapshot(engine: Engine) -> tuple[list[str], list[str]]:
    with engine.connect() as conn:
        tables = sorted(inspect(conn).get_table_names())
        versions = sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return tables, versions


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    engine = catalog.make_engine(db_url)
    try:
        catalog.migrate(engine)
        first = schema_snapshot(engine)
        assert first[0] == sorted(
            [
                "alembic_version",
                "singers",
                "songs",
                "model_versions",
                "embeddings",
                "ingest_runs",
                "ingest_errors",
            ]
        )
        assert first[1] == ["0001"]
        factory = catalog.session_factory(engine)
        with catalog.session_scope(factory) as s:
            catalog.add_song_if_new(s, **song_row(1))
        catalog.migrate(engine)
        catalog.migrate(db_url)  # by URL too
        assert schema_snapshot(engine) == first
        with catalog.session_scope(factory) as s:
            assert [song.content_hash for song in catalog.list_songs(s)] == [sha(1)]
    finally:
        engine.dispose()


def test_migrations_create_exactly_the_orm_schema(db_url: str) -> None:
    engine = catalog.make_engine(db_url)
    try:
        catalog.migrate(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, catalog.Base.metadata) == []
            if conn.dialect.name == "postgresql":  # alembic's bookkeeping is in the test schema too
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                assert schema.startswith("test_")
                where = (
                    conn.execute(
                        text(
                            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
                        )
                    )
                    .scalars()
                    .all()
                )
                assert schema in where
    finally:
        engine.dispose()


def test_bad_urls_are_rejected_with_the_valid_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="sqlite, postgresql"):
        catalog.make_engine("mysql://u@h/db")
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        catalog.make_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'c.db'}")


def test_in_memory_sqlite_catalog_is_shared_across_sessions() -> None:
    sessions = catalog.open_catalog("sqlite://")
    add_songs(sessions, 2)
    with catalog.session_scope(sessions) as s:
        assert catalog.catalog_stats(s).n_songs == 2


# --- songs ---------------------------------------------------------------------------------------


def test_add_song_if_new_is_idempotent_by_content_hash(sessions) -> None:
    with catalog.session_scope(sessions) as s:
        song, created = catalog.add_song_if_new(s, **song_row(1))
        assert created and song.id is not None
        again, created_again = catalog.add_song_if_new(s, **song_row(1))
        assert not created_again and again.id == song.id
    with catalog.session_scope(sessions) as s:  # a renamed file, in a later session: the same song
        renamed, created = catalog.add_song_if_new(
            s, **song_row(1, path="/elsewhere/renamed.flac", title="other")
        )
        assert not created and renamed.id == song.id
        assert renamed.path == song_row(1)["path"] and renamed.title == "song 1"
        edited, created = catalog.add_song_if_new(s, **song_row(1, content_hash=sha("edited")))
        assert created and edited.id != song.id
    with catalog.session_scope(sessions) as s:
        assert s.scalar(select(func.count(Song.id))) == 2
        assert s.scalar(select(func.count(Singer.id))) == 1  # both rows name singer1
        stored = catalog.song_by_hash(s, sha(1))
        assert stored is not None and stored.singer is not None and stored.singer.name == "singer1"
        assert stored.status == "registered" and stored.predicted == {}
        assert (
            stored.created_at.tzinfo is not None
            and stored.created_at.utcoffset() == timezone.utc.utcoffset(None)
        )
        assert catalog.song_by_hash(s, sha("never")) is None


def test_add_song_rejects_a_hash_that_is_not_sha256(sessions) -> None:
    with catalog.session_scope(sessions) as s, pytest.raises(ValueError, match="sha256"):
        catalog.add_song_if_new(s, **song_row(1, content_hash="abc"))


def test_song_without_singer_and_list_filters(sessions) -> None:
    add_songs(sessions, 6)
    with catalog.session_scope(sessions) as s:
        orphan, _ = catalog.add_song_if_new(s, **song_row(99, singer=None))
        assert orphan.singer_id is None
        catalog.list_songs(s)[0].status = "embedded"
    with catalog.session_scope(sessions) as s:
        all_songs = catalog.list_songs(s)
        assert [x.id for x in all_songs] == sorted(x.id for x in all_songs) and len(all_songs) == 7
        assert {x.title for x in catalog.list_songs(s, singer="singer2")} == {"song 2", "song 5"}
        assert [x.title for x in catalog.list_songs(s, status="embedded")] == ["song 0"]
        assert catalog.list_songs(s, singer="singer0", status="embedded")[0].title == "song 0"
        assert catalog.list_songs(s, singer="nobody") == []
        hashes = [sha(i) for i in range(3)] + [sha("missing")]
        assert catalog.known_hashes(s, hashes) == {sha(0), sha(1), sha(2)}
        assert catalog.known_hashes(s, []) == set()


def test_song_ids_are_never_reused_after_a_delete(sessions) -> None:
    ids = add_songs(sessions, 3)
    with catalog.session_scope(sessions) as s:
        s.execute(delete(Song).where(Song.id == ids[-1]))
    with catalog.session_scope(sessions) as s:
        new, _ = catalog.add_song_if_new(s, **song_row(50))
        assert new.id > ids[-1]  # the id is a FAISS vector id: reuse would alias two songs


def test_session_scope_rolls_back_on_error(sessions) -> None:
    with pytest.raises(RuntimeError, match="boom"), catalog.session_scope(sessions) as s:
        catalog.add_song_if_new(s, **song_row(1))
        raise RuntimeError("boom")
    with catalog.session_scope(sessions) as s:
        assert catalog.list_songs(s) == []


def test_json_metadata_with_non_ascii_round_trips(sessions) -> None:
    meta = {
        "gender": "f",
        "language": "português",
        "genre": "演歌",
        "note": "Zoë 🎤",
        "tags": ["ä", 1, None],
        "nested": {"melody_id": "m-7", "score": 0.25},
    }
    path = "/música/Björk/周杰伦 – 稻香.flac"
    with catalog.session_scope(sessions) as s:
        song, _ = catalog.add_song_if_new(
            s, **song_row(1, path=path, singer="Björk", title="稻香", metadata=meta)
        )
        singer = catalog.get_or_create_singer(s, "Sigur Rós", {"país": "Ísland"})
        song_id = song.id
    with catalog.session_scope(sessions) as s:
        stored = s.get(Song, song_id)
        assert stored.meta == meta and stored.path == path and stored.title == "稻香"
        assert stored.singer.name == "Björk"
        assert catalog.get_or_create_singer(s, "Sigur Rós").meta == {"país": "Ísland"}
        stored.predicted["gender"] = {"label": "f", "p": 0.9}  # in-place change of a JSON column
    with catalog.session_scope(sessions) as s:
        stored = s.get(Song, song_id)
        assert stored.predicted == {"gender": {"label": "f", "p": 0.9}}
        assert stored.meta == meta  # predictions never overwrite the manifest's metadata
    assert singer.name == "Sigur Rós"


# --- concurrent writers --------------------------------------------------------------------------


def _race_worker(url: str, hashes: list[str], barrier: Any, results: Any) -> None:
    """One ingest process: migrate, then register every hash in its own transaction."""
    try:
        barrier.wait(timeout=600)
        sessions = catalog.open_catalog(url)  # both processes migrate the empty database at once
        barrier.wait(timeout=600)
        created = 0
        for i, h in enumerate(hashes):
            with catalog.session_scope(sessions) as s:
                created += catalog.add_song_if_new(s, **song_row(i, content_hash=h))[1]
        sessions.kw["bind"].dispose()
        results.put(("ok", created))
    except Exception:  # noqa: BLE001 -- reported to the parent, which fails the test with it
        barrier.abort()  # the other process stops waiting for this one
        results.put(("error", traceback.format_exc()))


RACE_INNER = os.environ.get("RECSYS_RACE_INNER") == "1"


def test_race_in_a_fresh_interpreter() -> None:
    """Runs the race below in a fresh pytest process: state left in the suite's own process by
    earlier tests (Streamlit, torch threads) has made spawned workers die at start-up."""
    node = f"{__file__}::test_two_processes_racing_on_the_same_hashes_end_with_one_row_each"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
        env={**os.environ, "RECSYS_RACE_INNER": "1"}, capture_output=True, text=True, timeout=1500, check=False,
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.skipif(not RACE_INNER, reason="run by test_race_in_a_fresh_interpreter")
def test_two_processes_racing_on_the_same_hashes_end_with_one_row_each(db_url: str) -> None:
    hashes = [sha(f"race-{i}") for i in range(50)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(db_url, hashes, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [detail for status, detail in outcomes if status == "error"]
    assert not errors, "\n".join(errors)
    assert sum(created for _, created in outcomes) == 50
    sessions = catalog.open_catalog(db_url)
    try:
        with catalog.session_scope(sessions) as s:
            assert catalog.known_hashes(s, hashes) == set(hashes)
            assert s.scalar(select(func.count(Song.id))) == 50
            assert s.scalar(select(func.count(Singer.id))) == 3
    finally:
        sessions.kw["bind"].dispose()


# --- model versions and embeddings ---------------------------------------------------------------


def test_register_model_version_is_idempotent_and_guards_the_fingerprint(sessions) -> None:
    with catalog.session_scope(sessions) as s:
        first = catalog.register_model_version(s, "timbre", "v1", {"dim": 8}, "fp1")
        again = catalog.register_model_version(s, "timbre", "v1", {"dim": 8}, "fp1", metrics={"map_r": 0.5})
        assert again.id == first.id and again.metrics == {"map_r": 0.5}
        other_kind = catalog.register_model_version(s, "melody", "v1", {}, "fp2")
        assert other_kind.id != first.id
        with pytest.raises(ValueError, match="fingerprint 'fp1'"):
            catalog.register_model_version(s, "timbre", "v1", {"dim": 8}, "fp-other")
        with pytest.raises(ValueError, match="timbre, melody, fused"):
            catalog.register_model_version(s, "pitch", "v1", {}, "fp")
    with catalog.session_scope(sessions) as s:
        assert s.scalar(select(func.count(catalog.ModelVersion.id))) == 2


def test_embeddings_round_trip_bit_exactly_and_put_is_idempotent(sessions) -> None:
    ids = add_songs(sessions, 5)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 8)).astype(np.float32)
    X[0, :4] = [
        np.float32(1e-45),
        -0.0,
        np.finfo(np.float32).max,
        np.float32(1 / 3),
    ]  # denormal, -0, extremes
    vectors = {i: x for i, x in zip(ids, X)}
    with catalog.session_scope(sessions) as s:
        mv = model(s)
        assert catalog.put_embeddings(s, mv, "timbre", vectors) == 5
    with catalog.session_scope(sessions) as s:
        mv = model(s)
        got_ids, got = catalog.get_embeddings(s, mv, "timbre")
        assert got.dtype == np.float32 and got.shape == (5, 8) and got.flags.writeable
        assert got_ids.dtype == np.int64 and got_ids.tolist() == sorted(ids)
        assert np.array_equal(got.view(np.uint32), X.view(np.uint32))  # bit for bit, -0.0 included
        assert catalog.put_embeddings(s, mv, "timbre", vectors) == 0
        changed = {i: x + 1 for i, x in vectors.items()}
        assert catalog.put_embeddings(s, mv, "timbre", changed) == 0  # existing rows are kept
        assert np.array_equal(catalog.get_embeddings(s, mv, "timbre")[1], X)
        assert s.scalar(select(func.count(Embedding.id))) == 5


def test_put_embeddings_rejects_bad_vectors(sessions) -> None:
    ids = add_songs(sessions, 3)
    with catalog.session_scope(sessions) as s:
        mv = model(s)
        catalog.put_embeddings(s, mv, "timbre", {ids[0]: np.ones(8, np.float32)})
        with pytest.raises(ValueError, match="8 dims, got 4"):
            catalog.put_embeddings(s, mv, "timbre", {ids[1]: np.ones(4, np.float32)})
        with pytest.raises(ValueError, match="dims"):
            catalog.put_embeddings(s, mv, "timbre", {ids[1]: np.ones(8), ids[2]: np.ones(7)})
        with pytest.raises(ValueError, match="non-finite"):
            catalog.put_embeddings(s, mv, "timbre", {ids[1]: np.full(8, np.nan)})
        with pytest.raises(ValueError, match="1-D"):
            catalog.put_embeddings(s, mv, "timbre", {ids[1]: np.ones((2, 4))})
        with pytest.raises(ValueError, match=r"no songs with ids \[12345\]"):
            catalog.put_embeddings(s, mv, "timbre", {12345: np.ones(8)})
        with pytest.raises(ValueError, match="valid: timbre, melody, fused"):
            catalog.put_embeddings(s, mv, "pitch", {ids[1]: np.ones(8)})
        assert catalog.put_embeddings(s, mv, "timbre", {}) == 0


def test_get_embeddings_orders_by_song_id_and_keeps_kinds_and_versions_apart(sessions) -> None:
    ids = add_songs(sessions, 8)
    rng = np.random.default_rng(1)
    truth = {i: rng.standard_normal(6).astype(np.float32) for i in ids}
    shuffled = list(rng.permutation(ids))
    with catalog.session_scope(sessions) as s:
        v1, v2 = model(s, version="v1"), model(s, version="v2")
        # inserted in shuffled order, over two calls
        assert catalog.put_embeddings(s, v1, "timbre", {int(i): truth[i] for i in shuffled[:5]}) == 5
        assert catalog.put_embeddings(s, v1, "timbre", {int(i): truth[i] for i in shuffled}) == 3
        catalog.put_embeddings(s, v1, "melody", {ids[0]: np.zeros(3, np.float32)})
        catalog.put_embeddings(s, v2, "timbre", {ids[1]: np.zeros(16, np.float32)})
    with catalog.session_scope(sessions) as s:
        v1, v2 = model(s, version="v1"), model(s, version="v2")
        got_ids, X = catalog.get_embeddings(s, v1, "timbre")
        assert got_ids.tolist() == sorted(ids)
        assert np.array_equal(X, np.stack([truth[i] for i in sorted(ids)]))
        subset = [ids[6], ids[2], 999_999, ids[4]]
        sub_ids, sub_X = catalog.get_embeddings(s, v1, "timbre", subset)
        assert sub_ids.tolist() == sorted([ids[2], ids[4], ids[6]])
        assert np.array_equal(sub_X, np.stack([truth[i] for i in sub_ids.tolist()]))
        m_ids, m_X = catalog.get_embeddings(s, v1, "melody")
        assert m_ids.tolist() == [ids[0]] and m_X.shape == (1, 3)
        assert catalog.get_embeddings(s, v2, "timbre")[1].shape == (1, 16)
        empty_ids, empty_X = catalog.get_embeddings(s, v2, "fused")
        assert empty_ids.shape == (0,) and empty_X.shape == (0, 0)
        assert [x.id for x in catalog.songs_missing_embeddings(s, v1, "timbre")] == []
        assert [x.id for x in catalog.songs_missing_embeddings(s, v1, "melody")] == ids[1:]
        assert [x.id for x in catalog.songs_missing_embeddings(s, v2, "timbre")] == [ids[0]] + ids[2:]


def test_deleting_a_song_cascades_to_its_embeddings(sessions) -> None:
    ids = add_songs(sessions, 3)
    with catalog.session_scope(sessions) as s:
        mv = model(s)
        catalog.put_embeddings(s, mv, "timbre", {i: np.ones(4, np.float32) for i in ids})
        catalog.put_embeddings(s, mv, "melody", {i: np.ones(2, np.float32) for i in ids})
    with catalog.session_scope(sessions) as s:
        s.delete(s.get(Song, ids[0]))  # through the ORM
    with catalog.session_scope(sessions) as s:
        s.execute(delete(Song).where(Song.id == ids[1]))  # in SQL: needs the foreign keys enforced
    with catalog.session_scope(sessions) as s:
        mv = model(s)
        assert s.scalars(select(Embedding.song_id).distinct()).all() == [ids[2]]
        assert catalog.get_embeddings(s, mv, "timbre")[0].tolist() == [ids[2]]
        assert s.scalar(select(func.count(catalog.ModelVersion.id))) == 1
        assert s.scalar(select(func.count(Singer.id))) == 3  # singers stay


# --- ingest runs, errors, stats ------------------------------------------------------------------


def test_runs_and_errors_are_recorded_and_counted(sessions) -> None:
    add_songs(sessions, 4)
    with catalog.session_scope(sessions) as s:
        run = catalog.start_run(s, "/data/manifest.csv", {"workers": 2})
        assert run.status == "running" and run.finished_at is None
    causes = ["truncated", "silent", "truncated", "not_found"]
    with catalog.session_scope(sessions) as s:  # the run object comes from an earlier session
        for i, cause in enumerate(causes):
            catalog.record_error(s, run, f"/data/bad{i}.wav", cause, f"/data/bad{i}.wav: {cause} (détail)")
        with pytest.raises(ValueError, match="short category"):
            catalog.record_error(s, run, "/x.wav", "", "no cause")
    with catalog.session_scope(sessions) as s:
        catalog.finish_run(s, run, {"ingested": 4, "skipped": 0, "failed": {"truncated": 2, "silent": 1}})
        second = catalog.start_run(s, "/data/other", {})
        catalog.finish_run(s, second, {"ingested": 0}, status="failed")
        with pytest.raises(ValueError, match="running, finished, failed"):
            catalog.finish_run(s, second, {}, status="done")
    with catalog.session_scope(sessions) as s:
        stats = catalog.catalog_stats(s)
        assert stats.n_singers == 3 and stats.n_songs == 4
        assert stats.total_duration_s == pytest.approx(sum(10.0 + i for i in range(4)))
        assert stats.songs_by_status == {"registered": 4}
        assert stats.n_errors == 4 and stats.errors_by_cause == {"not_found": 1, "silent": 1, "truncated": 2}
        assert stats.n_runs == 2
        runs = catalog.recent_runs(s)
        assert [r.source for r in runs] == ["/data/other", "/data/manifest.csv"]
        assert runs[0].status == "failed" and runs[1].status == "finished"
        assert runs[1].counts["failed"] == {"truncated": 2, "silent": 1}
        assert runs[1].finished_at >= runs[1].started_at
        assert catalog.recent_runs(s, limit=1) == runs[:1]
        errors = catalog.recent_errors(s, limit=3)
        assert [e.path for e in errors] == ["/data/bad3.wav", "/data/bad2.wav", "/data/bad1.wav"]
        assert errors[0].message == "/data/bad3.wav: not_found (détail)"
        s.delete(s.get(catalog.IngestRun, run.id))
    with catalog.session_scope(sessions) as s:
        assert s.scalar(select(func.count(IngestError.id))) == 0  # a run's errors go with it


def test_empty_catalog_stats(sessions) -> None:
    with catalog.session_scope(sessions) as s:
        assert catalog.catalog_stats(s) == catalog.CatalogStats(0, 0, 0.0, {}, 0, {}, 0)


# --- no ML code ----------------------------------------------------------------------------------


def test_catalog_imports_no_torch() -> None:
    code = "import sys, recsys.catalog; bad = [m for m in ('torch', 'torchaudio', 'faiss') if m in sys.modules]; print(bad)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_connections_opening_a_new_sqlite_catalog_at_once_all_succeed(tmp_path) -> None:
    """Switching a new file to WAL fails at once with "database is locked" when another
    connection is switching it too (SQLite's busy_timeout does not cover it; about one round
    in four failed here before the retry): every connection must get through."""
    import threading

    for round_no in range(30):
        url = f"sqlite:///{tmp_path / f'catalog-{round_no}.db'}"
        engines = [catalog.make_engine(url) for _ in range(3)]
        barrier, errors = threading.Barrier(len(engines)), []

        def connect(engine: Engine, barrier: threading.Barrier = barrier, errors: list[str] = errors) -> None:
            barrier.wait()
            try:
                with engine.connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            except Exception as err:  # noqa: BLE001 -- collected and asserted below
                errors.append(repr(err))

        threads = [threading.Thread(target=connect, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for engine in engines:
            engine.dispose()
        assert not errors, (round_no, errors)
