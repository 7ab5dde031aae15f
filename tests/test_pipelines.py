"""The batch ingestion job and reembed: every good song once, with its vectors, in an index that
agrees with the catalog; after SIGKILL at any stage, with concurrent writers, and across a model switch."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sqlalchemy import func, select
from typer.testing import CliRunner

from pipelines.ingest import run_ingest
from pipelines.job import ids_fingerprint
from pipelines.reembed import reembed
from pipelines.runners import LocalRunner
from recsys import catalog
from recsys.api import Recommender
from recsys.cli import app
from recsys.config import load_settings
from recsys.corpus import generate_corpus
from recsys.errors import NoModelsError, NoVectorsError
from recsys.features import FEATURES, song_features, song_mel
from recsys.ingest import prepare_file
from recsys.manifest import ManifestEntry
from recsys.training.checkpoint import load_version, save_version

N_GOOD = 8
BAD_CAUSES = {"empty": 1, "truncated": 1, "unreadable": 1, "silent": 1, "not_found": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 short synthetic songs (4 singers x 2) and their manifest."""
    out = tmp_path_factory.mktemp("corpus")
    return generate_corpus(out, n_singers=4, songs_per_singer=2, song_seconds=4.0, seed=3, workers=1)


def _good_files(corpus: Path) -> list[Path]:
    return sorted(corpus.parent.glob("singer_*/*.wav"))


def _hash_of(rec: Recommender, path: Path) -> str:
    return next(r["content_hash"] for r in rec.songs() if r["path"] == str(path.resolve()))


@pytest.fixture(scope="module")
def messy(corpus: Path) -> Path:
    """The corpus manifest plus one row of each kind of bad input, and one good file listed twice."""
    d = corpus.parent / "bad"
    d.mkdir(exist_ok=True)
    (d / "empty.wav").write_bytes(b"")
    full = _good_files(corpus)[0].read_bytes()
    (d / "truncated.wav").write_bytes(full[: len(full) // 3])
    (d / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4096))
    sf.write(d / "silent.wav", np.zeros(16000 * 2, np.float32), 16000)
    rows = corpus.read_text().splitlines()
    rows += [f"bad/{name},bad_singer,bad,,,,,,," for name in ("empty.wav", "truncated.wav", "noise.mp3", "silent.wav")]
    rows += ["bad/ghost.wav,bad_singer,ghost,,,,,,,", rows[1]]
    manifest = corpus.parent / "messy.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def models(demo_workspace: Path) -> Path:
    return demo_workspace / "models"


def _settings(ws: Path, models: Path | None, **kw):
    ws.mkdir(parents=True, exist_ok=True)
    if models is not None and not (ws / "models").exists():
        shutil.copytree(models, ws / "models")
    return load_settings(manifest_file=None, workspace=ws, device="cpu", **kw)


def _catalog_state(rec: Recommender) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """content hash -> (timbre, melody) of every song with vectors under the current version."""
    ids, v = rec.catalog_vectors()
    digest = {row["id"]: row["content_hash"] for row in rec.songs()}
    return {digest[int(i)]: (v.timbre[k], v.melody[k]) for k, i in enumerate(ids)}


def _assert_consistent(rec: Recommender, n_songs: int) -> None:
    """Each good song once, each with one vector per kind, and the saved index holding exactly them."""
    versions = {"timbre": rec.models.pair.timbre, "melody": rec.models.pair.melody}
    with rec.sessions() as s:
        assert catalog.catalog_stats(s).n_songs == n_songs
        assert len({song.content_hash for song in catalog.list_songs(s)}) == n_songs
        for kind, version in versions.items():
            query = (select(func.count()).select_from(catalog.Embedding)
                     .join(catalog.ModelVersion, catalog.ModelVersion.id == catalog.Embedding.model_version_id)
                     .where(catalog.ModelVersion.kind == kind, catalog.ModelVersion.version == version,
                            catalog.Embedding.kind == kind))
            assert s.scalar(query) == n_songs, kind
    ids, _ = rec.catalog_vectors()
    index, rebuilt = rec.load_index()
    assert not rebuilt, "the saved index disagreed with the catalog"
    assert np.array_equal(index.ids(), np.sort(ids))


# ---------------------------------------------------------------------------- stages


def test_batched_embedding_equals_the_per_song_reference(models, corpus, tmp_path):
    rec = Recommender(_settings(tmp_path / "ws", models))
    assert "pitch" in rec.embedder.needs  # the default melody vector reads the waveform pitch
    files = _good_files(corpus)[:3]
    feats = [rec.embedder.features(f) for f in files]
    feats.append(type(feats[0])(feats[0].mel[:, :50], feats[0].pitch[:, :50]))  # shorter than one timbre chunk
    feats.append(type(feats[0])(torch.cat([feats[1].mel, feats[2].mel], 1),
                                torch.cat([feats[1].pitch, feats[2].pitch], 1)))  # several chunks
    batched = rec.embedder.embed_features(feats)
    assert batched.timbre.shape == (5, rec.embedder.dims[0]) and batched.melody.shape == (5, rec.embedder.dims[1])
    for i, f in enumerate(feats):
        one = rec.embedder.embed_features([f])
        np.testing.assert_allclose(batched.timbre[i], one.timbre[0], atol=1e-5)
        np.testing.assert_allclose(batched.melody[i], one.melody[0], atol=1e-5)
    reference = rec.embedder.embed(files[0])  # the query path decodes the file itself
    np.testing.assert_allclose(reference.timbre[0], batched.timbre[0], atol=1e-5)
    np.testing.assert_allclose(reference.melody[0], batched.melody[0], atol=1e-5)
    with pytest.raises(ValueError, match="pitch"):
        rec.embedder.embed_features([type(feats[0])(feats[0].mel)])


def test_prepare_file_computes_the_features_asked_for(corpus, tmp_path):
    settings = _settings(tmp_path / "ws", None)
    entry = ManifestEntry(path=_good_files(corpus)[2], singer="x", title="t")
    prepared = prepare_file(entry, settings.audio, settings.features, needs=frozenset({"mel"}))
    registered = prepare_file(entry, settings.audio, settings.features)  # streamed: no features
    assert prepared.song == registered.song and registered.mel is None
    np.testing.assert_array_equal(prepared.mel, song_mel(entry.path, settings.audio, settings.features).numpy())
    assert prepared.pitch is None
    with_pitch = prepare_file(entry, settings.audio, settings.features, needs=frozenset(FEATURES))
    reference = song_features(entry.path, settings.audio, settings.features, needs=frozenset(FEATURES))
    np.testing.assert_array_equal(with_pitch.mel, reference.mel.numpy())
    np.testing.assert_array_equal(with_pitch.pitch, reference.pitch.numpy())
    assert with_pitch.pitch.shape == (44, reference.mel.shape[-1])
    np.testing.assert_allclose(with_pitch.speaker, reference.speaker.numpy(), atol=1e-5)  # crosses processes too
    assert torch.equal(with_pitch.features().speaker, torch.from_numpy(with_pitch.speaker))


# ---------------------------------------------------------------------------- the job, in process


def test_job_ingests_embeds_and_indexes_good_songs_once(models, messy, corpus, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    runner = LocalRunner(workers=2)
    try:
        summary = run_ingest(messy, settings, embed=True, runner=runner, batch_size=3, index_save_every_s=0)
    finally:
        runner.close()
    assert (summary.ingested, summary.embedded, summary.skipped) == (N_GOOD, N_GOOD, 1)  # 1: listed twice
    assert dict(summary.failed) == BAD_CAUSES
    assert summary.index_size == N_GOOD and not summary.index_rebuilt
    rec = Recommender(settings)
    _assert_consistent(rec, N_GOOD)
    with rec.sessions() as s:
        errors = {e.path: e.cause for e in catalog.recent_errors(s, limit=50)}
    assert sorted(errors.values()) == sorted(BAD_CAUSES)
    # the stored vectors are the embedder's, file by file
    state = _catalog_state(rec)
    ok, vectors, failed = rec.embed_files(_good_files(corpus))
    assert not failed and len(ok) == N_GOOD
    for k, path in enumerate(ok):
        t, m = state[_hash_of(rec, Path(path))]
        np.testing.assert_allclose(t, vectors.timbre[k], atol=1e-5)
        np.testing.assert_allclose(m, vectors.melody[k], atol=1e-5)

    # a re-run changes nothing and decodes nothing
    again = run_ingest(messy, settings, embed=True, runner=LocalRunner(workers=1), batch_size=3)
    assert (again.ingested, again.embedded, again.skipped, again.audio_seconds) == (0, 0, N_GOOD + 1, 0.0)
    assert dict(again.failed) == BAD_CAUSES and not again.index_rebuilt
    _assert_consistent(Recommender(settings), N_GOOD)

    # a renamed file is not a new song; a changed one is
    moved = tmp_path / "moved"
    moved.mkdir()
    renamed = shutil.copy(_good_files(corpus)[0], moved / "renamed.wav")
    data, sr = sf.read(_good_files(corpus)[1])
    sf.write(moved / "changed.wav", data * 0.5, sr)
    third = run_ingest(moved, settings, embed=True, runner=LocalRunner(workers=1))
    assert (third.ingested, third.skipped) == (1, 1), renamed
    _assert_consistent(Recommender(settings), N_GOOD + 1)


def test_an_unexpected_error_in_one_file_is_recorded_and_the_job_goes_on(monkeypatch, corpus, tmp_path):
    from pipelines import runners

    bad = _good_files(corpus)[3]
    real = runners.prepare_file

    def flaky(entry, *args):
        if entry.path == bad:
            raise RuntimeError("decoder exploded")
        return real(entry, *args)

    monkeypatch.setattr(runners, "prepare_file", flaky)
    settings = _settings(tmp_path / "ws", None)
    summary = run_ingest(corpus, settings, runner=LocalRunner(workers=1), batch_size=3)
    assert (summary.ingested, dict(summary.failed)) == (N_GOOD - 1, {"unexpected": 1})
    assert summary.failures[0].message == f"{bad}: RuntimeError: decoder exploded"
    with Recommender(settings).sessions() as s:
        assert [e.cause for e in catalog.recent_errors(s)] == ["unexpected"]


def test_same_content_twice_across_windows_and_in_one_batch_is_one_song(models, corpus, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    files = _good_files(corpus)[:4]
    copy = shutil.copy(files[0], tmp_path / "copy.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join(map(str, [*files, copy])) + "\n")
    # windows of 2 (the copy's hash is checked against a catalog that has not seen the original yet),
    # one batch of 5: the original and its copy are committed together
    summary = run_ingest(manifest, settings, embed=True, runner=LocalRunner(workers=1), batch_size=5, window=2)
    assert (summary.ingested, summary.skipped, summary.embedded) == (4, 1, 4)
    _assert_consistent(Recommender(settings), 4)


def test_registered_songs_without_vectors_get_embedded(models, corpus, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    plain = run_ingest(corpus, settings, embed=False, runner=LocalRunner(workers=1))  # register only
    assert (plain.ingested, plain.embedded, plain.model_version) == (N_GOOD, 0, None)
    assert not (settings.workspace / "index").exists()
    # Songs and models but no vectors yet: searching says which command fixes it.
    with pytest.raises(NoVectorsError, match=rf"none of the catalog's {N_GOOD} songs has vectors.*`recsys embed`"):
        Recommender(settings).search(_good_files(corpus)[0], k=3)
    summary = run_ingest(corpus, settings, embed=True, runner=LocalRunner(workers=1), batch_size=4)
    assert (summary.ingested, summary.skipped, summary.embedded) == (0, N_GOOD, N_GOOD)
    _assert_consistent(Recommender(settings), N_GOOD)


def test_dry_run_validates_without_writing(models, messy, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    summary = run_ingest(messy, settings, embed=True, runner=LocalRunner(workers=1), dry_run=True)
    assert summary.dry_run and summary.ingested == N_GOOD and summary.embedded == 0
    assert dict(summary.failed) == BAD_CAUSES
    assert sorted(p.name for p in settings.workspace.iterdir()) == ["models"]  # no catalog, no index


def test_embed_without_models_says_to_train_first(corpus, tmp_path):
    settings = _settings(tmp_path / "ws", None)
    with pytest.raises(NoModelsError, match="`recsys train`"):
        run_ingest(corpus, settings, embed=True, runner=LocalRunner(workers=1))
    result = CliRunner().invoke(app, ["--workspace", str(settings.workspace), "ingest", str(corpus), "--embed"])
    assert result.exit_code == 1 and "recsys train" in result.output


def test_cli_prints_progress_and_summary(models, messy, tmp_path):
    ws = _settings(tmp_path / "ws", models).workspace
    args = ["--workspace", str(ws), "ingest", str(messy), "--embed", "--workers", "1", "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "batch 1: 4 files; total ingested 4, embedded 4" in result.stderr
    assert f"ingested {N_GOOD} songs, skipped 1 already present, failed 5" in result.stdout
    assert f"embedded {N_GOOD} songs under model version" in result.stdout
    assert f"index: {N_GOOD} songs, agrees with the catalog" in result.stdout
    assert "explorer maps" not in result.stderr and not (ws / "projections").exists()  # --maps skip (conftest)
    result = CliRunner().invoke(app, [*args, "--json"])
    data = json.loads(result.stdout)
    assert (data["ingested"], data["embedded"], data["skipped"], data["failed"]) == (0, 0, N_GOOD + 1, BAD_CAUSES)


@pytest.mark.slow
def test_cli_fits_the_explorer_maps_in_a_detached_process(models, corpus, tmp_path):
    """The job returns before UMAP runs; a process of its own fits and saves the first page's maps."""
    ws = _settings(tmp_path / "ws", models).workspace
    args = ["--workspace", str(ws), "ingest", str(corpus), "--embed", "--workers", "1", "--maps", "background"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    started = re.search(r"explorer maps: fitting in the background \(pid (\d+)\); log: (.+)", result.stderr)
    assert started is not None, result.stderr
    pid, log = int(started.group(1)), Path(started.group(2))
    deadline = time.monotonic() + 300
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, log.read_text()[-2000:]
    from recsys.projection import FIRST_PAGE_MAPS

    expected = sorted(f"{what}-{weighting}.npz" for what, weighting in FIRST_PAGE_MAPS)
    assert sorted(p.name for p in (ws / "projections").glob("*/*.npz")) == expected
    assert log.read_text().count(": fitted (no saved map)") == len(FIRST_PAGE_MAPS)
    again = CliRunner().invoke(app, ["--workspace", str(ws), "maps"])  # what the process ran: now up to date
    assert again.exit_code == 0 and again.stdout.count(": loaded,") == len(FIRST_PAGE_MAPS), again.output


# ---------------------------------------------------------------------------- crashes and concurrency


def _job(ws: Path, manifest: Path, *extra: str, kill: str | None = None, db: str | None = None,
         workers: int = 1) -> subprocess.Popen:
    if kill:  # the job in a script that injects the crash around the job's parts
        cmd = [sys.executable, str(Path(__file__).parent / "kill_job.py"), str(ws), str(manifest), kill, str(workers)]
        env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "recsys", "--workspace", str(ws), "--device", "cpu"]
    cmd += ["--db", db] if db else []
    cmd += ["ingest", str(manifest), "--embed", "--workers", str(workers), "--batch-size", "2", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(*args, **kw) -> tuple[int, str, str]:
    proc = _job(*args, **kw)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.slow
def test_resume_after_sigkill_at_every_stage(models, corpus, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    ws = settings.workspace

    def songs() -> int:
        with Recommender(settings).sessions() as s:
            return catalog.catalog_stats(s).n_songs

    def saved_fingerprint() -> str:
        rec = Recommender(settings)
        return json.loads((rec.index_dir / "index.json").read_text())["fingerprint"]

    def catalog_fingerprint() -> str:
        ids, _ = Recommender(settings).catalog_vectors()
        return ids_fingerprint(ids)

    # batches of 2: killed before its 2nd commit (with worker processes alive), 1 batch is in
    rc, _, _ = _run(ws, corpus, kill="before_commit:2", workers=2)
    assert rc == -signal.SIGKILL and songs() == 2
    # killed after its 1st commit, before the index heard of it: the saved index lags the catalog
    rc, _, _ = _run(ws, corpus, kill="after_commit:1")
    assert rc == -signal.SIGKILL and songs() == 4
    assert saved_fingerprint() != catalog_fingerprint()
    # the next run repairs the index first; killed after its 1st index save: index and catalog agree
    rc, _, _ = _run(ws, corpus, kill="after_index:1")
    assert rc == -signal.SIGKILL and songs() == 6
    assert saved_fingerprint() == catalog_fingerprint()
    # the last run finishes the work
    rc, out, err = _run(ws, corpus)
    assert rc == 0, err
    assert "ingested 2 songs, skipped 6 already present, failed 0" in out
    assert "batch 1: 2 files" in err
    _assert_consistent(Recommender(settings), N_GOOD)


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_jobs_on_postgres_lose_and_duplicate_nothing(models, corpus, pg_url, tmp_path):
    settings = _settings(tmp_path / "ws", models, db_url=pg_url)
    rows = corpus.read_text().splitlines()
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    base = corpus.parent
    for out, part in ((first, rows[1:7]), (second, rows[3:])):  # songs 1-6 and 3-8: 4 in common
        out.write_text("\n".join([rows[0], *[f"{base}/{r}" for r in part]]) + "\n")
    catalog.open_catalog(pg_url)  # migrate once, so both jobs start writing at once
    jobs = [_job(settings.workspace, m, db=pg_url) for m in (first, second)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in jobs]
    for rc, _, err in results:
        assert rc == 0, err
    ingested = sum(int(out.split("ingested ")[1].split()[0]) for _, out, _ in results)
    assert ingested == N_GOOD  # each song registered by exactly one of the jobs
    _assert_consistent(Recommender(settings), N_GOOD)


# ---------------------------------------------------------------------------- model change


def _publish_perturbed_timbre(ws: Path) -> str:
    """A new timbre version, published without being served (as for a reembed)."""
    meta, state = load_version(ws, "timbre")
    g = torch.Generator().manual_seed(0)
    # Weights only: noise on BatchNorm's running variance could make it negative (NaN vectors).
    noisy = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=g)
             if v.is_floating_point() and v.numel() > 1 and "running_" not in k else v for k, v in state.items()}
    new = save_version(ws, "timbre", noisy, meta.model_config, meta.fingerprint, version="timbre-v2",
                       audio=meta.audio)
    return new.version  # published; CURRENT still names the old pair


@pytest.mark.slow
def test_reembed_serves_the_old_index_until_it_switches(models, corpus, tmp_path):
    settings = _settings(tmp_path / "ws", models)
    run_ingest(corpus, settings, embed=True, runner=LocalRunner(workers=1))
    old = Recommender(settings)
    old_version = old.model_version
    query = _good_files(corpus)[0]
    before = old.search(query, k=3).as_dict()
    new_timbre = _publish_perturbed_timbre(settings.workspace)

    paused, resume, out, errors = threading.Event(), threading.Event(), [], []

    def on_batch(report):
        if report.batch == 1:
            paused.set()
            resume.wait(120)

    def job():
        try:
            out.append(reembed(settings, timbre_version=new_timbre, runner=LocalRunner(workers=1),
                               batch_size=3, on_batch=on_batch))
        except Exception as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert paused.wait(120), errors
        during = Recommender(settings)  # a server (re)started mid-reembed
        assert during.model_version == old_version
        assert during.search(query, k=3).as_dict() == before
        assert during.load_index()[1] is False  # the old index, untouched
    finally:
        resume.set()
        thread.join(120)
    assert not errors and out and out[0].switched and out[0].embedded == N_GOOD
    after = Recommender(settings)
    new_version = after.model_version
    assert new_version.startswith(f"{new_timbre}+") and new_version != old_version
    _assert_consistent(after, N_GOOD)
    result = after.search(query, k=3).as_dict()
    assert [h["singer"] for h in result["singers"]] and result["songs"][0]["score"] != before["songs"][0]["score"]
    # the new vectors are the new model's
    _, vectors, _ = after.embed_files([query])
    t, _ = _catalog_state(after)[_hash_of(after, query)]
    np.testing.assert_allclose(t, vectors.timbre[0], atol=1e-5)
