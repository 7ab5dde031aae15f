"""The GPU code paths as far as a CPU allows: mixed precision only on CUDA, the device flag reaching the
embedder, the trainers and the index, and bench/gpu_check.py. Tests named *cuda* need a CUDA device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recsys.cli.root import Context, app, cpu_only
from recsys.config import IndexConfig, load_settings
from recsys.errors import DeviceUnavailableError
from recsys.features import SongFeatures
from recsys.training import common
from recsys.training.common import MixedPrecision, pick_device
from recsys.training.data import TrainingSong

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA answer")


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        import contextlib

        self.calls.append(kwargs)
        return contextlib.nullcontext()


# --- mixed precision ---------------------------------------------------------------------------


def test_cpu_training_enters_no_autocast_and_scales_nothing(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(common.torch, "autocast", recorder)
    amp = MixedPrecision(torch.device("cpu"))
    assert not amp.enabled and amp.scaler is None
    with amp.autocast():
        pass
    assert recorder.calls == []


@pytest.mark.parametrize(("bf16", "dtype", "scaled"), [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_steps_autocast_in_bf16_or_fp16_with_a_scaler(monkeypatch, bf16, dtype, scaled):
    recorder = _Recorder()
    monkeypatch.setattr(common.torch, "autocast", recorder)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    with pytest.warns(UserWarning) if scaled and not HAS_CUDA else _nothing():
        amp = MixedPrecision(torch.device("cuda"))
    assert amp.dtype == dtype and (amp.scaler is not None) == scaled
    with amp.autocast():
        pass
    assert recorder.calls == [{"device_type": "cuda", "dtype": dtype}]
    assert not MixedPrecision(torch.device("cuda"), enabled=False).enabled


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _songs(n_mels: int, n: int = 4, frames: int = 160) -> list[TrainingSong]:
    from recsys.pitch import N_PITCH

    g = torch.Generator().manual_seed(0)
    return [TrainingSong(i, SongFeatures(torch.randn(n_mels, frames, generator=g),
                                         torch.randn(N_PITCH, frames, generator=g)), f"s{i % 2}", f"h{i}")
            for i in range(n)]


def test_cpu_trainers_never_touch_autocast(monkeypatch, tmp_path):
    from recsys.training.contrastive import train_timbre
    from recsys.training.tcae import train_melody

    settings = load_settings(workspace=tmp_path)
    recorder = _Recorder()
    monkeypatch.setattr(common.torch, "autocast", recorder)
    monkeypatch.setattr(torch, "autocast", recorder)
    songs = _songs(settings.features.n_mels)
    timbre = settings.timbre.model_copy(update={"epochs": 1, "steps_per_epoch": 1, "songs_per_batch": 2,
                                                "chunks_per_song": 2, "chunk_frames": 64})
    equivariant = settings.melody.equivariant.model_copy(update={"steps_per_epoch": 1, "songs_per_step": 2,
                                                                 "view_seconds": 2.0})
    frame = settings.melody.model_copy(update={"model": "frame", "epochs": 1, "chunk_frames": 64, "chunk_overlap": 16})
    sr = settings.audio.sample_rate
    train_timbre(songs, timbre, settings.features, sr, tmp_path, device="cpu", resume=False)
    for melody in (settings.melody.model_copy(update={"epochs": 1, "equivariant": equivariant}), frame):
        train_melody(songs, melody, settings.features, sr, tmp_path, device="cpu", resume=False)
    assert recorder.calls == []


def test_tcae_loss_is_the_models_own_on_cpu(tmp_path):
    """Keeping the front end out of autocast changes nothing in float32: the same bits as TCAE.forward."""
    from recsys.models.tcae import TCAE, TCAEConfig
    from recsys.training.tcae import _masked_loss

    settings = load_settings(workspace=tmp_path)
    torch.manual_seed(0)
    model = TCAE(TCAEConfig.from_settings(settings.melody, settings.features, settings.audio.sample_rate))
    mel = torch.randn(2, settings.features.n_mels, 50)
    valid = torch.ones(2, 50, dtype=torch.bool)
    scored = valid.clone()
    scored[1, :10] = False
    target, recon, _ = model(mel)
    err = (recon - target).pow(2).mean(1)
    w = (valid & scored).to(err.dtype)
    expected = (err * w).sum() / w.sum().clamp_min(1.0)
    got = _masked_loss(model, mel, valid, scored, MixedPrecision(torch.device("cpu")))
    assert torch.equal(got, expected)


# --- the device flag ---------------------------------------------------------------------------


@no_cuda
def test_pick_device_without_cuda():
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError):
        pick_device("cuda")
    with pytest.raises(ValueError):
        pick_device("tpu")


def test_pick_device_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda") == pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


class _Embedder:
    def __init__(self, models, audio, features, separator, device):
        self.device = device


@pytest.mark.parametrize("asked", ["cpu", "cuda"])
def test_the_device_reaches_the_embedder_and_the_trainers(monkeypatch, tmp_path, asked):
    from recsys import api
    from recsys.training import contrastive, tcae

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(api, "Embedder", _Embedder)
    monkeypatch.setattr(api, "_check_audio", lambda models, ws: None)
    seen = {}
    monkeypatch.setattr(contrastive, "train_timbre", lambda *a, device, **k: seen.setdefault("timbre", device))
    monkeypatch.setattr(tcae, "train_melody", lambda *a, device, **k: seen.setdefault("melody", device))
    rec = api.Recommender(load_settings(workspace=tmp_path, device=asked), models=object())
    assert rec.embedder.device == torch.device(asked)
    rec.train(songs=_songs(4, n=2), embed=False)
    assert seen == {"timbre": asked, "melody": asked}


def test_device_cpu_keeps_faiss_on_the_cpu(tmp_path):
    assert Context(workspace_dir=tmp_path, device="cpu").settings.index.use_gpu is False
    assert Context(workspace_dir=tmp_path, device="auto").settings.index.use_gpu is True
    s = load_settings(workspace=tmp_path, device="auto")
    assert cpu_only(s) is s


@no_cuda
def test_search_with_device_cuda_fails_in_one_line(tmp_path):
    query = tmp_path / "q.wav"
    query.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "recsys", "--workspace", str(tmp_path), "--device", "cuda",
                           "search", str(query)], capture_output=True, text=True, timeout=300, check=False,
                          cwd=ROOT)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cuda" in proc.stderr and "--device cpu" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 2


@no_cuda
@pytest.mark.parametrize("command", [
    ["train"], ["embed"], ["embed", "x.wav", "--out", "x.npz"], ["ingest", "songs", "--embed"],
    ["similar-singers", "somebody"], ["evaluate", "manifest.csv"], ["app"],
])
def test_every_computing_command_checks_cuda(tmp_path, command):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path), "--device", "cuda", *command])
    assert result.exit_code != 0
    assert isinstance(result.exception, (DeviceUnavailableError, SystemExit)), result.exception
    assert "cuda" in (result.output + str(result.exception)).lower()


# --- FAISS on the GPU through the Recommender ---------------------------------------------------


class _FakeGpu:
    pass


def test_the_recommenders_index_is_cloned_to_the_gpu(monkeypatch, tmp_path):
    from recsys import api
    from recsys.embedding import Vectors

    copies = []
    monkeypatch.setattr(faiss, "StandardGpuResources", _FakeGpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, dev, index: copies.append(index.ntotal) or faiss.clone_index(index), raising=False)
    monkeypatch.setattr(api, "_check_audio", lambda models, ws: None)

    class Models:
        version = "t1+m1"

    rng = np.random.default_rng(0)
    ids = np.arange(1, 51, dtype=np.int64)
    vectors = Vectors(*(v / np.linalg.norm(v, axis=1, keepdims=True) for v in
                        (rng.standard_normal((50, 8), dtype=np.float32), rng.standard_normal((50, 4), dtype=np.float32))))
    for use_gpu, on_gpu in ((True, True), (False, False)):
        settings = load_settings(workspace=tmp_path / str(use_gpu))
        settings = settings.model_copy(update={"index": IndexConfig(kind="flat", use_gpu=use_gpu)})
        rec = api.Recommender(settings, models=Models())
        index, _ = rec.load_index(ids, vectors)
        assert index.on_gpu is on_gpu
        index.search(vectors.fused(api.INDEX_WEIGHTS)[:2], 3)
        index, rebuilt = rec.load_index(ids, vectors)  # loaded from disk: a GPU copy again
        assert not rebuilt and index.on_gpu is on_gpu
    assert copies == [50]


# --- the script ----------------------------------------------------------------------------------


def test_gpu_check_answers_help():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--help"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "usage:" in proc.stdout


@no_cuda
def test_gpu_check_without_cuda_prints_the_cpu_rows_and_exits_0():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAISS flat search" in proc.stdout and "embed timbre" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("no CUDA device here")


# --- on a CUDA machine ---------------------------------------------------------------------------


@needs_cuda
def test_cuda_embedding_matches_cpu(tmp_path):
    from recsys.encoders import melody_encoder, timbre_encoder
    from recsys.studies.trainers import untrained_encoders

    settings = load_settings(workspace=tmp_path)
    songs = [s.features for s in _songs(settings.features.n_mels, n=3, frames=400)]
    t, m = untrained_encoders(settings)
    enc = timbre_encoder(t)
    cpu = enc.embed_songs(songs).numpy()
    gpu = enc.to("cuda").embed_songs(songs)
    assert gpu.is_cuda
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=2e-3)
    assert melody_encoder(m).dim > 0


@needs_cuda
def test_cuda_training_steps_in_mixed_precision(tmp_path):
    from recsys.training.contrastive import train_timbre

    settings = load_settings(workspace=tmp_path)
    timbre = settings.timbre.model_copy(update={"epochs": 1, "steps_per_epoch": 2, "songs_per_batch": 2,
                                                "chunks_per_song": 2, "chunk_frames": 64})
    result = train_timbre(_songs(settings.features.n_mels), timbre, settings.features, settings.audio.sample_rate,
                          tmp_path, device="cuda", resume=False)
    assert np.isfinite(result.final_loss) and MixedPrecision(torch.device("cuda")).enabled


@needs_cuda
@pytest.mark.skipif(not hasattr(faiss, "StandardGpuResources"), reason="needs faiss-gpu")
def test_cuda_faiss_gpu_index_matches_cpu():
    from recsys.index import VectorIndex

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((5000, 64), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(5000, dtype=np.int64)
    for cfg in (IndexConfig(kind="flat", exact_max=5000), IndexConfig(kind="ivf", nlist=32, nprobe=32)):
        gpu = VectorIndex.build(ids, xb, cfg.model_copy(update={"use_gpu": True}))
        cpu = VectorIndex.build(ids, xb, cfg.model_copy(update={"use_gpu": False}))
        assert gpu.on_gpu
        np.testing.assert_array_equal(gpu.search(xb[:20], 5)[1][:, 0], cpu.search(xb[:20], 5)[1][:, 0])
