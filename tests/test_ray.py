"""The runners: the same job on a local Ray cluster (its tasks embedding, or an actor pool) and on local
worker processes (embedding in them, or in this process) gives the same songs, failures and vectors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.ingest import run_ingest
from pipelines.runners import LocalRunner, RayRunner
from recsys import catalog
from recsys.api import Recommender
from recsys.config import load_settings
from recsys.corpus import generate_corpus

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own deprecations


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray on this machine, with a small object store; shut down after the module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_DEDUP_LOGS", "0")
    mp.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, object_store_memory=200_000_000,
             log_to_driver=False)
    yield
    ray.shutdown()
    mp.undo()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 short songs plus a bad file and a missing one."""
    out = tmp_path_factory.mktemp("ray-corpus")
    m = generate_corpus(out, n_singers=4, songs_per_singer=2, song_seconds=4.0, seed=5, workers=1)
    sf.write(out / "silent.wav", np.zeros(32000, np.float32), 16000)
    (out / "noise.mp3").write_bytes(np.random.default_rng(1).bytes(4096))
    m.write_text(m.read_text() + "silent.wav,x,s,,,,,,,\nnoise.mp3,x,n,,,,,,,\nghost.wav,x,g,,,,,,,\n")
    return m


def _state(settings) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    rec = Recommender(settings)
    ids, v = rec.catalog_vectors()
    songs = {row["id"]: row for row in rec.songs()}
    vectors = {songs[int(i)]["content_hash"]: (v.timbre[k], v.melody[k]) for k, i in enumerate(ids)}
    with rec.sessions() as s:
        errors = {Path(e.path).name: e.cause for e in catalog.recent_errors(s, limit=50)}
    index, rebuilt = rec.load_index()
    assert not rebuilt and np.array_equal(index.ids(), np.sort(ids))
    return vectors, errors


@pytest.mark.slow
def test_ray_runner_matches_local_runner(local_ray, manifest, demo_workspace, tmp_path):
    results = {}
    runners = (
        ("local", LocalRunner(workers=1)),  # encoders in this process, batched
        ("local, in the workers", LocalRunner(workers=2)),  # each worker embeds its own songs (CPU)
        ("ray", RayRunner(window=6, files_per_task=2)),  # no GPU: the decoding tasks embed
        ("ray, actor pool", RayRunner(window=6, files_per_task=2, embed_in_tasks=False)),  # as on GPU nodes
    )
    for name, runner in runners:
        ws = tmp_path / name
        shutil.copytree(demo_workspace / "models", ws / "models")
        settings = load_settings(manifest_file=None, workspace=ws, device="cpu")
        try:
            summary = run_ingest(manifest, settings, embed=True, runner=runner, batch_size=3)
        finally:
            runner.close()
        assert (summary.ingested, summary.embedded, summary.n_failed) == (8, 8, 3), name
        results[name] = _state(settings)
    local, local_errors = results["local"]
    assert local_errors == {"silent.wav": "silent", "noise.mp3": "unreadable", "ghost.wav": "not_found"}
    assert len(local) == 8
    for name, (other, errors) in results.items():
        assert errors == local_errors and sorted(other) == sorted(local), name
        for digest, (t, m) in local.items():
            np.testing.assert_allclose(other[digest][0], t, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(other[digest][1], m, atol=1e-5, err_msg=name)
    # a re-run on Ray is a no-op: nothing is decoded
    settings = load_settings(manifest_file=None, workspace=tmp_path / "ray", device="cpu")
    again = run_ingest(manifest, settings, embed=True, runner=RayRunner(), batch_size=3)
    assert (again.ingested, again.embedded, again.skipped, again.audio_seconds) == (0, 0, 8, 0.0)
