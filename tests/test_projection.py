"""UMAP maps: quality floor, placing queries, persistence, tiny catalogs and bad parameters.

The first UMAP fit in a process compiles umap's numba code (tens of seconds on a busy
machine), so the tests share one fitted map.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score

from recsys.embedding import Vectors, Weights, fuse
from recsys.projection import (
    FIRST_PAGE_MAPS,
    Projection,
    cluster_labels,
    fit_default_maps,
    load_or_fit,
    map_rows,
    projection_path,
)


def clustered(
    n_clusters: int = 6, per: int = 30, d: int = 24, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around n_clusters random centres: (n, d) float32 and (n,) labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    labels = np.repeat(np.arange(n_clusters), per)
    x = centres[labels] + 0.35 * rng.normal(size=(len(labels), d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[np.ndarray, np.ndarray, Projection]:
    x, labels = clustered()
    return x, labels, Projection(n_neighbors=10, min_dist=0.1, seed=0).fit(x)


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_umap_keeps_neighbourhoods(fitted):
    x, labels, proj = fitted
    assert proj.method_ == "umap" and proj.note_ is None and proj.n_neighbors_ == 10
    assert proj.embedding_.shape == (len(x), 2) and np.isfinite(proj.embedding_).all()
    assert trustworthiness(x, proj.embedding_, n_neighbors=10) >= 0.9
    # Clusters stay apart on the map: k-means on the 2-D positions finds them.
    assert adjusted_rand_score(labels, cluster_labels(proj.embedding_, 6)) >= 0.9


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_transform_places_points_near_their_fitted_positions(fitted):
    x, _, proj = fitted
    y = proj.embedding_
    np.testing.assert_allclose(proj.transform(x), y, atol=1e-5)  # a catalog row sits on its own point
    rng = np.random.default_rng(1)
    xq = x + 0.02 * rng.normal(size=x.shape).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    yq = proj.transform(xq)
    assert yq.shape == (len(x), 2)
    own = np.linalg.norm(yq - y, axis=1)
    spread = np.median(np.linalg.norm(y[:, None] - y[None], axis=-1))
    assert np.mean(own < 0.2 * spread) >= 0.9, (np.median(own), spread)
    # The nearest fitted point of a moved query is (almost always) its own.
    nearest = np.argmin(np.linalg.norm(yq[:, None] - y[None], axis=-1), axis=1)
    same_cluster = fitted[1][nearest] == fitted[1]
    assert same_cluster.mean() >= 0.95


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_transform_is_deterministic_and_checks_shapes(fitted):
    x, _, proj = fitted
    xq = x[:5] * 0.9 + x[5:10] * 0.1
    np.testing.assert_array_equal(proj.transform(xq), proj.transform(xq))
    assert proj.transform(np.zeros((0, x.shape[1]), np.float32)).shape == (0, 2)
    with pytest.raises(ValueError, match="24"):
        proj.transform(np.ones((2, 7), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        Projection().transform(x)


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_saved_projection_reloads_identically(fitted, tmp_path):
    x, _, proj = fitted
    path = proj.save(tmp_path / "songs-fused.npz", meta={"model_version": "v1"})
    back = Projection.load(path)
    np.testing.assert_array_equal(back.embedding_, proj.embedding_)
    assert back.params == proj.params and back.method_ == "umap" and back.meta_ == {"model_version": "v1"}
    xq = x[::7] + 0.01
    np.testing.assert_array_equal(back.transform(xq), proj.transform(xq))
    (tmp_path / "junk.npz").write_bytes(b"not a projection")
    with pytest.raises(ValueError, match="junk.npz"):
        Projection.load(tmp_path / "junk.npz")


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_load_or_fit_reuses_then_refits_when_the_catalog_changes(fitted, tmp_path):
    x, _, _ = fitted
    path = projection_path(tmp_path, "t1+m1", "songs", "fused")
    assert path == tmp_path / "projections" / "t1+m1" / "songs-fused.npz"
    keys = list(range(len(x)))
    params = Projection(n_neighbors=10)
    first = load_or_fit(path, keys, x, "t1+m1", params)
    assert first.status.startswith("fitted") and path.exists()
    again = load_or_fit(path, keys, x, "t1+m1", params)
    assert again.status == "loaded" and again.keys == keys
    np.testing.assert_array_equal(again.projection.embedding_, first.projection.embedding_)
    assert "model" in load_or_fit(path, keys, x, "t2+m1", params).status
    assert "vectors changed" in load_or_fit(path, keys[:-1], x[:-1], "t2+m1", params).status
    assert "parameters" in load_or_fit(path, keys[:-1], x[:-1], "t2+m1", Projection(n_neighbors=8)).status
    path.write_bytes(b"corrupt")
    assert "unreadable" in load_or_fit(path, keys, x, "t1+m1", params).status
    with pytest.raises(ValueError, match="aligned"):
        load_or_fit(path, keys[:3], x, "t1+m1", params)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_up_to_three_points_fall_back_to_pca(n, tmp_path):
    x, _ = clustered(n_clusters=3, per=1, d=8, seed=n)
    proj = Projection().fit(x[:n])
    assert proj.method_ == "pca" and "PCA" in proj.note_
    y = proj.embedding_
    assert y.shape == (n, 2) and np.isfinite(y).all()
    # PCA keeps distances between up to 3 points exactly (they span at most a plane).
    dx = np.linalg.norm(x[:n, None] - x[None, :n], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(y[:, None] - y[None], axis=-1), dx, atol=1e-5)
    np.testing.assert_allclose(proj.transform(x[:n]), y, atol=1e-5)
    back = Projection.load(proj.save(tmp_path / "tiny.npz"))
    np.testing.assert_array_equal(back.transform(x[:n]), proj.transform(x[:n]))


@pytest.mark.slow  # umap's first fit compiles its numba code
def test_small_catalog_clamps_n_neighbors(fitted):
    x, _, _ = fitted
    proj = Projection(n_neighbors=15).fit(x[::30][:6])  # 6 points, one per cluster
    assert proj.method_ == "umap" and proj.n_neighbors_ == 4 and "clamped" in proj.note_
    assert proj.embedding_.shape == (6, 2) and np.isfinite(proj.embedding_).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_neighbors": 1}, "n_neighbors"),
        ({"n_neighbors": 4.5}, "n_neighbors"),
        ({"n_neighbors": True}, "n_neighbors"),
        ({"min_dist": -0.1}, "min_dist"),
        ({"min_dist": 1.5}, "min_dist"),
        ({"min_dist": "small"}, "min_dist"),
        ({"seed": -1}, "seed"),
        ({"seed": 0.5}, "seed"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Projection(**kwargs).fit(np.eye(5, dtype=np.float32))


@pytest.mark.parametrize(
    "x, match",
    [
        (np.ones(5, np.float32), "2-D"),
        (np.zeros((0, 4), np.float32), "at least one row"),
        (np.array([[0.0, np.nan], [1.0, 0.0]], np.float32), "NaN"),
    ],
)
def test_bad_input_raises(x, match):
    with pytest.raises(ValueError, match=match):
        Projection().fit(x)


def test_map_rows_and_names():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 3)).astype(np.float32)
    m = rng.normal(size=(4, 2)).astype(np.float32)
    v = Vectors(t, m)
    w = Weights(0.7, 0.3)
    np.testing.assert_array_equal(map_rows(v, "timbre", w), t)
    np.testing.assert_array_equal(map_rows(v, "melody", w), m)
    np.testing.assert_allclose(map_rows(v, "fused", w), fuse(t, m, w))
    with pytest.raises(ValueError, match="valid: fused, timbre, melody"):
        map_rows(v, "pitch", w)
    with pytest.raises(ValueError, match="valid: singers, songs"):
        projection_path("ws", "v", "albums", "fused")


def test_cluster_labels_find_separated_groups():
    x, labels = clustered(n_clusters=4, per=10)
    assert adjusted_rand_score(labels, cluster_labels(x, 4)) == 1.0
    assert len(set(cluster_labels(x))) == 4  # default: round(sqrt(40 / 2)) clusters
    assert cluster_labels(x[:1]).tolist() == [0]


# The jobs that change the vectors fit the explorer's first-page maps -------------------------------


def _small_catalog(root, n_songs: int = 6):
    """A workspace with the demo's trained models and manifests of a new 6-song catalog: the first
    5 songs, then the last one."""
    import csv

    from recsys.corpus import generate_corpus

    manifest = generate_corpus(
        root / "corpus", n_singers=n_songs, songs_per_singer=1, song_seconds=4.0, seed=3, workers=1
    )
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    parts = []
    for name, part in (("first.csv", rows[:-1]), ("last.csv", rows[-1:])):
        path = manifest.with_name(name)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
        parts.append(path)
    return parts


@pytest.fixture
def fresh_ws(demo_workspace, tmp_path):
    import shutil

    from recsys.config import load_settings

    shutil.copytree(demo_workspace / "models", tmp_path / "models")
    settings = load_settings(manifest_file=None, workspace=tmp_path, device="cpu")
    return settings, *_small_catalog(tmp_path)


def _first_page_paths(settings):
    from recsys.api import Recommender

    rec = Recommender(settings)
    return rec, [projection_path(settings.workspace, rec.model_version, *m) for m in FIRST_PAGE_MAPS]


@pytest.mark.slow  # embeds songs with the demo workspace's models
def test_ingest_with_embedding_fits_the_first_page_maps_unless_told_not_to(fresh_ws):
    from pipelines.ingest import run_ingest
    from pipelines.runners import LocalRunner

    settings, first, last = fresh_ws
    assert run_ingest(first, settings, embed=True, runner=LocalRunner(1)).embedded == 5
    rec, paths = _first_page_paths(settings)
    assert all(p.is_file() for p in paths)
    assert [rec.catalog_map(*m)[0].status for m in FIRST_PAGE_MAPS] == ["loaded"] * len(FIRST_PAGE_MAPS)
    saved = [p.read_bytes() for p in paths]
    assert run_ingest(last, settings, embed=True, runner=LocalRunner(1), fit_maps=False).embedded == 1
    assert [p.read_bytes() for p in paths] == saved  # left stale: the next visitor refits
    rec, _ = _first_page_paths(settings)
    assert "catalog vectors changed" in rec.catalog_map(*FIRST_PAGE_MAPS[0])[0].status  # refitted and saved
    # A re-run that embeds nothing (every song has its vectors) leaves the maps alone.
    saved = [p.read_bytes() for p in paths]
    assert run_ingest(last, settings, embed=True, runner=LocalRunner(1)).embedded == 0
    assert [p.read_bytes() for p in paths] == saved


@pytest.mark.slow  # embeds songs with the demo workspace's models
def test_reembed_can_leave_the_maps_to_later(fresh_ws):
    from pipelines.ingest import run_ingest
    from pipelines.reembed import reembed
    from pipelines.runners import LocalRunner

    settings, first, _ = fresh_ws
    run_ingest(first, settings, runner=LocalRunner(1))
    summary = reembed(settings, runner=LocalRunner(1), fit_maps=False)
    assert summary.embedded == 5 and summary.index_size == 5
    rec, paths = _first_page_paths(settings)
    assert not any(p.exists() for p in paths)
    maps = fit_default_maps(rec)
    assert [m.status for m in maps] == ["fitted (no saved map)"] * len(FIRST_PAGE_MAPS)
    assert all(p.is_file() for p in paths) and len(maps[0].keys) == 5
    assert [m.status for m in fit_default_maps(rec)] == ["loaded"] * len(FIRST_PAGE_MAPS)
