"""The one model loader: the serving pair's encoders, read from checkpoints without the trainers' code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys.registry import current_pair, load_melody_model, load_models, load_timbre_model
from recsys.training.checkpoint import CheckpointMismatchError

TRAINING_ONLY = ("pytorch_metric_learning", "scipy", "recsys.training.contrastive", "recsys.training.tcae")


def test_serving_models_load_without_the_trainers_modules(demo_workspace: Path):
    code = (
        "import sys; from recsys.registry import load_models; "
        f"m = load_models(sys.argv[1]); print(m.version); print(sorted(n for n in {TRAINING_ONLY!r} "
        "if n in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(demo_workspace)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [current_pair(demo_workspace).version, "[]"]


def test_the_serving_loaders_restore_what_the_trainers_loaders_do(demo_workspace: Path):
    from recsys.training.contrastive import load_timbre
    from recsys.training.tcae import load_melody

    pair = current_pair(demo_workspace)
    models = load_models(demo_workspace, pair)
    assert models.pair == pair
    for (ours, our_meta), (theirs, meta) in (
        (load_timbre_model(demo_workspace, pair.timbre), load_timbre(demo_workspace, pair.timbre)),
        (load_melody_model(demo_workspace, pair.melody), load_melody(demo_workspace, pair.melody)),
    ):
        assert type(ours) is type(theirs) and ours.cfg == theirs.cfg and not ours.training
        assert our_meta == meta == (models.timbre_meta if meta.kind == "timbre" else models.melody_meta)
        got, want = ours.state_dict(), theirs.state_dict()
        assert got.keys() == want.keys()
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=0)


def test_weights_that_do_not_fit_their_config_are_refused(demo_workspace: Path, tmp_path: Path):
    import json
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(demo_workspace / "models", ws / "models")
    pair = current_pair(ws)
    meta_file = ws / "models" / "timbre" / pair.timbre / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["model_config"]["channels"] = 2 * meta["model_config"]["channels"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match=r"weights at .* do not fit TimbreEncoder\("):
        load_models(ws, pair)
