"""The catalog database going away mid-job: one clear error, committed batches kept, a re-run finishes.

The job runs against the local PostgreSQL through a TCP proxy of the test's own
(tests/tcp_proxy.py), which is cut mid-job: every proxied connection is closed and new
ones are refused. The server itself is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from tcp_proxy import TcpProxy

from pipelines.ingest import BatchReport, run_ingest
from pipelines.runners import LocalRunner
from recsys import catalog
from recsys.api import Recommender
from recsys.config import Settings, load_settings
from recsys.corpus import generate_corpus
from recsys.errors import DatabaseUnavailableError
from recsys.manifest import ManifestEntry, iter_manifest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # slow: the demo workspace trains its models

N_SONGS = 8
BATCH = 2
RERUN = "the batches before it are kept; run the same command again to finish"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 short synthetic songs (4 singers x 2) and their manifest."""
    out = tmp_path_factory.mktemp("outage-corpus")
    return generate_corpus(out, n_singers=4, songs_per_singer=2, song_seconds=4.0, seed=5, workers=1)


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the PostgreSQL server that `pg_url` names."""
    target = make_url(pg_url)
    with TcpProxy((target.host or "127.0.0.1", target.port or 5432), lifetime_s=600) as p:
        yield p


@pytest.fixture
def proxied(pg_url: str, proxy: TcpProxy) -> tuple[str, str]:
    """(the test database's URL through the proxy, its password): a password the output must never show.

    A server that needs no password (the local one trusts 127.0.0.1) ignores the made-up one.
    """
    password = make_url(pg_url).password or f"pw-{uuid.uuid4().hex[:12]}"
    return proxy.rewrite(pg_url, password=password), str(password)


def _settings(ws: Path, models: Path, db_url: str) -> Settings:
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / "models").exists():
        shutil.copytree(models, ws / "models")
    return load_settings(manifest_file=None, workspace=ws, device="cpu", db_url=db_url)


def _entries(manifest: Path) -> list[Path]:
    """The manifest's audio paths, in its order (the order of the job's batches with one worker)."""
    return [item.path for item in iter_manifest(manifest) if isinstance(item, ManifestEntry)]


def _catalog_paths(settings: Settings) -> list[str]:
    return sorted(row["path"] for row in Recommender(settings).songs())


def _assert_kept(settings: Settings, manifest: Path, batches: int) -> None:
    """Exactly the songs of the first `batches` batches are in the catalog, each with its vectors."""
    expected = sorted(str(p) for p in _entries(manifest)[: batches * BATCH])
    assert _catalog_paths(settings) == expected
    ids, _ = Recommender(settings).catalog_vectors()
    assert len(ids) == len(expected)


def _assert_finished(settings: Settings) -> None:
    """Every good song once, with both vectors, and the saved index holding exactly them."""
    rec = Recommender(settings)
    with rec.sessions() as s:
        songs = catalog.list_songs(s)
        assert catalog.catalog_stats(s).n_songs == N_SONGS
    assert len({song.content_hash for song in songs}) == N_SONGS
    ids, _ = rec.catalog_vectors()
    assert len(ids) == N_SONGS
    index, rebuilt = rec.load_index()
    assert not rebuilt, "the saved index disagreed with the catalog"
    assert np.array_equal(np.sort(index.ids()), np.sort(ids))


def _ingest(settings: Settings, manifest: Path, **kw):
    runner = LocalRunner(workers=1)
    try:
        return run_ingest(manifest, settings, embed=True, runner=runner, batch_size=BATCH, index_save_every_s=0,
                          **kw)
    finally:
        runner.close()


def _assert_one_clear_line(message: str, proxy: TcpProxy, password: str, doing: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"lost the connection to the catalog database (postgresql at 127.0.0.1:{proxy.port}/")
    assert doing in message
    assert password not in message


# ---------------------------------------------------------------------------- in process


@pytest.mark.parametrize(
    ("cut_after", "window", "doing", "kept"),
    [
        pytest.param(1, 512, "while committing batch 2;", 1, id="between-batches"),
        pytest.param(1, BATCH, "while looking up the songs already done, before batch 2;", 1, id="window-lookup"),
        pytest.param(N_SONGS // BATCH, 512, f"while checking the index against the catalog after batch "
                     f"{N_SONGS // BATCH};", N_SONGS // BATCH, id="index-check"),
    ],
)
def test_a_lost_connection_stops_the_job_with_one_line_and_a_rerun_finishes(
    demo_workspace, corpus, proxy, proxied, tmp_path, cut_after, window, doing, kept
):
    url, password = proxied
    settings = _settings(tmp_path / "ws", demo_workspace / "models", url)

    def cut(report: BatchReport) -> None:
        if report.batch == cut_after:
            proxy.cut()

    with pytest.raises(DatabaseUnavailableError) as raised:
        _ingest(settings, corpus, window=window, on_batch=cut)
    error = raised.value
    _assert_one_clear_line(str(error), proxy, password, doing)
    assert isinstance(error.__cause__, DBAPIError)  # chained: --debug shows the driver's own error
    assert proxy.accepted > 0  # the job did talk to the database through the proxy

    proxy.restore()
    _assert_kept(settings, corpus, kept)
    again = _ingest(settings, corpus)
    todo = N_SONGS - kept * BATCH
    assert (again.ingested, again.embedded, again.skipped, again.n_failed) == (todo, todo, kept * BATCH, 0)
    _assert_finished(settings)


def test_a_connection_cut_inside_a_commit_loses_only_that_batch(demo_workspace, corpus, proxy, proxied, pg_url,
                                                                tmp_path):
    url, password = proxied
    settings = _settings(tmp_path / "ws", demo_workspace / "models", url)
    committed = {"batches": 0}
    cuts: list[str] = []

    def count(report: BatchReport) -> None:
        committed["batches"] = report.batch

    def cut_mid_transaction(_conn, _cursor, statement: str, *_args) -> None:
        # batch 2's transaction is open and has written some of it: the line goes down under it
        if committed["batches"] == 1 and not cuts and statement.lstrip().upper().startswith("INSERT INTO EMBEDDINGS"):
            cuts.append(statement)
            proxy.cut()

    event.listen(Engine, "before_cursor_execute", cut_mid_transaction)
    try:
        with pytest.raises(DatabaseUnavailableError) as raised:
            _ingest(settings, corpus, on_batch=count)
    finally:
        event.remove(Engine, "before_cursor_execute", cut_mid_transaction)
    assert cuts, "the job never wrote batch 2's vectors"
    _assert_one_clear_line(str(raised.value), proxy, password, "while committing batch 2;")
    assert raised.value.__cause__.connection_invalidated

    # batch 2 was rolled back with its connection; a re-run on the direct URL finishes the work
    direct = _settings(tmp_path / "ws", demo_workspace / "models", pg_url)
    _assert_kept(direct, corpus, 1)
    again = _ingest(direct, corpus)
    assert (again.ingested, again.embedded, again.skipped) == (N_SONGS - BATCH, N_SONGS - BATCH, BATCH)
    _assert_finished(direct)


# ---------------------------------------------------------------------------- through the CLI


def _cli(ws: Path, url: str, manifest: Path) -> subprocess.Popen:
    """`recsys ingest --embed` on the default settings (those the models were trained with), not the
    project's data_manifest.yaml."""
    defaults = ws / "defaults.yaml"
    defaults.write_text("version: 1\n")
    cmd = [sys.executable, "-m", "recsys", "--workspace", str(ws), "--manifest", str(defaults), "--device", "cpu",
           "--db", url, "ingest", str(manifest), "--embed", "--workers", "1", "--batch-size", str(BATCH)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_says_which_database_and_batch_and_the_same_command_finishes(demo_workspace, corpus, proxy, proxied,
                                                                          tmp_path):
    url, password = proxied
    settings = _settings(tmp_path / "ws", demo_workspace / "models", url)
    proc = _cli(settings.workspace, url, corpus)
    err_lines: list[str] = []

    def read_stderr() -> None:  # cut the line as soon as the job reports its first committed batch
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("batch 1:"):
                proxy.cut()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        out = proc.stdout.read()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err = "".join(err_lines)
    assert rc == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    assert password not in err + out
    errors = [line for line in err_lines if line.startswith("error:")]
    assert len(errors) == 1, err
    match = re.fullmatch(rf"error: lost the connection to the catalog database \(postgresql at "
                         rf"127\.0\.0\.1:{proxy.port}/\w+\) while committing batch (\d+)\n", errors[0])
    assert match, errors[0]
    failed_at = int(match.group(1))
    assert failed_at >= 2  # the cut came after batch 1 was reported
    assert f"hint: {RERUN}\n" in err_lines
    assert "batch 1: 2 files" in err

    proxy.restore()
    _assert_kept(settings, corpus, failed_at - 1)
    proc = _cli(settings.workspace, url, corpus)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    kept = (failed_at - 1) * BATCH
    assert f"ingested {N_SONGS - kept} songs, skipped {kept} already present, failed 0" in out
    _assert_finished(settings)
