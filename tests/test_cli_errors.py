"""First-run mistakes, tried as a new user would: each gives one line saying what is wrong and a hint
with the next step on stderr, a non-zero exit status, and no traceback (`--debug` shows one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny training: the tests need trained models, not good ones.
TINY_TRAINING = {"timbre": {"epochs": 1, "steps_per_epoch": 2}, "melody": {"epochs": 1}}
UNREACHABLE_DB = "postgresql+psycopg://user:secret@127.0.0.1:1/x"  # nothing listens on port 1


def recsys(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m recsys --workspace WS ARGS...` on the CPU, with nothing from the user's RECSYS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")} | {"RECSYS_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "recsys", "--workspace", str(ws), *args], check=False,
                          capture_output=True, text=True, env=env, timeout=600)


def _open(ws: Path, **overrides: object):
    """The workspace's Recommender (its own SQLite catalog, whatever RECSYS_DB_URL says)."""
    from recsys.api import Recommender

    return Recommender.open(workspace=ws, db_url=f"sqlite:///{(ws / 'catalog.db').resolve()}", device="cpu",
                            **overrides)


def assert_fails(out: subprocess.CompletedProcess, *expected: str, code: int | None = None) -> str:
    """Non-zero exit, `expected` pieces on stderr, one error line and at most one hint line, no traceback."""
    err = out.stderr
    assert out.returncode != 0, f"exit 0\nstdout: {out.stdout}\nstderr: {err}"
    if code is not None:
        assert out.returncode == code, err
    assert "Traceback" not in err + out.stdout, err
    assert err.count("error: ") == 1, err
    tail = [line for line in err[err.index("error: "):].splitlines() if line.strip()]
    assert len(tail) <= 2, err
    for piece in expected:
        assert piece in err, f"{piece!r} not in stderr:\n{err}"
    return err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 short songs (2 singers x 2) and their manifest, plus one.csv (one song) and ghost.csv (a missing file)."""
    from recsys.corpus import generate_corpus

    manifest = generate_corpus(tmp_path_factory.mktemp("corpus"), n_singers=2, songs_per_singer=2, song_seconds=4.0,
                               seed=0, workers=1)
    header, first, *_ = manifest.read_text().splitlines()
    (manifest.parent / "one.csv").write_text(f"{header}\n{first}\n")
    (manifest.parent / "ghost.csv").write_text(f"{header}\nghost.wav,singer_00{',' * (header.count(',') - 1)}\n")
    return manifest


@pytest.fixture(scope="module")
def query(corpus: Path) -> Path:
    return min(corpus.parent.glob("singer_*/*.wav"))


def ingest(ws: Path, manifest: Path) -> None:
    """Set-up through the library (the mistakes themselves go through the command line)."""
    _open(ws).ingest(manifest, workers=1)


@pytest.fixture(scope="module")
def ingested(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the corpus in its catalog and no models (read-only)."""
    ws = tmp_path_factory.mktemp("ingested") / "ws"
    ingest(ws, corpus)
    return ws


@pytest.fixture(scope="module")
def trained(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ingested workspace, trained (read-only)."""
    ws = tmp_path_factory.mktemp("trained") / "ws"
    shutil.copytree(ingested, ws)
    _open(ws, **TINY_TRAINING).train()
    return ws


# Before ingest, before training ----------------------------------------------------------------------------

NEEDS_MODELS = [("search", "{query}"), ("similar-singers", "singer_00"), ("index", "check"), ("embed",), ("app",)]


@pytest.mark.parametrize("command", [*NEEDS_MODELS, ("train",)], ids=lambda c: " ".join(c[:2]))
def test_before_ingest_says_to_ingest(command, query, tmp_path):
    ws = tmp_path / "ws"
    out = recsys(ws, *(a.format(query=query) for a in command))
    assert_fails(out, "no catalog", "recsys ingest")
    assert not (ws / "catalog.db").exists()  # a mistake leaves no empty catalog behind


@pytest.mark.parametrize("command", NEEDS_MODELS, ids=lambda c: " ".join(c[:2]))
def test_before_training_says_to_train(command, ingested, query):
    out = recsys(ingested, *(a.format(query=query) for a in command))
    assert_fails(out, "no trained", "recsys train")


def test_train_on_an_empty_catalog(corpus, tmp_path):
    ws = tmp_path / "ws"
    ingest(ws, corpus.parent / "ghost.csv")  # a catalog, with no song
    assert (ws / "catalog.db").exists()
    assert_fails(recsys(ws, "train"), "has no songs", "recsys ingest")


def test_train_on_a_catalog_with_one_song(corpus, tmp_path):
    ws = tmp_path / "ws"
    ingest(ws, corpus.parent / "one.csv")
    assert_fails(recsys(ws, "train"), "1 song", "at least 2", "recsys ingest")


# Wrong names and paths ---------------------------------------------------------------------------------------


def test_unknown_singer_suggests_the_closest_name(trained):
    err = assert_fails(recsys(trained, "similar-singers", "singr_01"), "no singer named 'singr_01'")
    hint = err.splitlines()[-1]
    assert "'singer_01'" in hint
    if "singer_00" in hint:
        assert hint.index("singer_01") < hint.index("singer_00")  # the closest name first


def test_missing_manifest(tmp_path):
    err = assert_fails(recsys(tmp_path / "ws", "ingest", str(tmp_path / "nope.csv")), "nope.csv", code=2)
    assert "no such manifest" in err
    assert not (tmp_path / "ws" / "catalog.db").exists()


def test_missing_data_manifest_and_config(tmp_path):
    assert_fails(recsys(tmp_path, "--manifest", str(tmp_path / "nope.yaml"), "config"), "--manifest", "nope.yaml",
                 code=2)
    assert_fails(recsys(tmp_path, "--config", str(tmp_path / "nope.yaml"), "config"), "nope.yaml", code=2)


def test_missing_audio_file(tmp_path, trained):
    for ws in (tmp_path / "ws", trained):  # the argument is checked first, models or not
        assert_fails(recsys(ws, "search", str(tmp_path / "nope.wav")), "nope.wav", "no such audio file", code=2)
    assert_fails(recsys(tmp_path / "ws", "embed", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "x.npz")),
                 "nope.wav", code=2)


def test_a_file_that_is_not_audio(trained, corpus):
    assert_fails(recsys(trained, "search", str(corpus)), corpus.name)


# The machine: database and device ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("catalog",), ("ingest", "{manifest}"), ("train",)], ids=lambda c: c[0])
def test_unreachable_database_names_host_and_port_never_the_password(command, corpus, tmp_path):
    out = recsys(tmp_path / "ws", "--db", UNREACHABLE_DB, *(a.format(manifest=corpus) for a in command))
    assert_fails(out, "127.0.0.1", ":1", "--db")
    assert "secret" not in out.stderr + out.stdout


def test_device_cuda_without_cuda(ingested, query):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for command in (["search", str(query)], ["train"]):
        assert_fails(recsys(ingested, "--device", "cuda", *command), "cuda", "--device cpu")
    out = recsys(ingested, "--device", "cuda", "catalog")  # a command that computes nothing does not care
    assert out.returncode == 0, out.stderr
    out = recsys(ingested, "--device", "cuda", "search", "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


# The error layer itself --------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(query, tmp_path):
    out = recsys(tmp_path / "ws", "--debug", "search", str(query))
    assert out.returncode != 0 and "Traceback" in out.stderr and "EmptyCatalogError" in out.stderr


def test_database_errors_are_one_line_without_the_password(capsys):
    from sqlalchemy.exc import InterfaceError, OperationalError

    from recsys.cli.errors import describe, show

    reason = Exception('connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs it running?')
    for error in (OperationalError("SELECT 1", {}, reason), InterfaceError("connect", {}, reason)):
        failure = describe(error, UNREACHABLE_DB)
        assert failure is not None and failure.code == 1
        show(failure, UNREACHABLE_DB)
        err = capsys.readouterr().err
        assert "127.0.0.1:1" in err and "Connection refused" in err and "secret" not in err
        assert len(err.strip().splitlines()) == 2


def test_known_errors_and_bugs():
    from pydantic import BaseModel, Field, ValidationError

    from recsys.cli.errors import FAILED, USAGE, describe, scrub
    from recsys.errors import InvalidOptionError, NoModelsError
    from recsys.manifest import ManifestError

    class Audio(BaseModel):
        sample_rate: int = Field(16000, gt=0)

    with pytest.raises(ValidationError) as bad:
        Audio(sample_rate=-5)
    failure = describe(bad.value)
    assert failure is not None and failure.code == USAGE and "sample_rate" in failure.message and "-5" in failure.message
    assert describe(NoModelsError("no models", "run `recsys train`")).hint == "run `recsys train`"
    assert describe(InvalidOptionError("--by: no")).code == USAGE
    assert describe(ManifestError("x.csv: no such manifest")).code == USAGE
    assert describe(FileNotFoundError(2, "No such file or directory", "x.wav")).message == (
        "x.wav: No such file or directory")
    assert describe(ValueError("k must be positive")).code == FAILED
    assert describe(KeyError("bug")) is None and describe(TypeError("bug")) is None  # bugs keep their traceback
    assert describe(ImportError("cannot import name 'x'", name="recsys.y")) is None
    assert scrub("postgresql+psycopg://user:pw@host/db failed") == "postgresql+psycopg://user:***@host/db failed"
