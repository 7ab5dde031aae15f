"""The same catalog, settings and seed give the same vectors; another seed does not.

Issue 15 asks for vectors within 1e-5 between two trainings on the same machine. What
changes the floats is the number of intra-op threads (the reductions of the convolutions'
backward pass are summed in another order: about 1e-3 between 1 and 2 threads on the test
catalog), so each training here runs with the same thread count, as two runs on one machine do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.api import Recommender
from recsys.config import load_settings
from recsys.corpus import generate_corpus

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("repro-corpus"), n_singers=4, songs_per_singer=3,
                           song_seconds=6.0, seed=3, workers=1)


def _train(manifest: Path, ws: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    settings = load_settings(manifest_file=None, workspace=ws, device="cpu",
                             timbre={"epochs": 2, "steps_per_epoch": 4, "seed": seed},
                             melody={"epochs": 1, "seed": seed})
    rec = Recommender(settings)
    rec.ingest(manifest, workers=2)  # parallel decoding: the catalog's order must not depend on it
    rec.train()
    ids, vectors = rec.catalog_vectors()
    paths = {song["id"]: song["path"] for song in rec.songs()}
    order = np.argsort([paths[int(i)] for i in ids])  # compare song by song, whatever the ids
    return np.asarray([paths[int(i)] for i in ids])[order], vectors.timbre[order], vectors.melody[order]


@pytest.mark.slow
def test_two_trainings_with_one_seed_give_the_same_vectors(manifest, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        paths_a, timbre_a, melody_a = _train(manifest, tmp_path / "a", seed=0)
        paths_b, timbre_b, melody_b = _train(manifest, tmp_path / "b", seed=0)
        paths_c, timbre_c, _ = _train(manifest, tmp_path / "c", seed=1)
    finally:
        torch.set_num_threads(threads)
    assert list(paths_a) == list(paths_b) == list(paths_c) and len(paths_a) == 12
    assert np.abs(timbre_a - timbre_b).max() <= TOLERANCE
    assert np.abs(melody_a - melody_b).max() <= TOLERANCE
    assert np.abs(timbre_a - timbre_c).max() > 100 * TOLERANCE  # the seed is what changes the model
