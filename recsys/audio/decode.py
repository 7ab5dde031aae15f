"""Files and in-memory audio to (N,) mono float32 at the working rate, or an AudioError saying why not."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from recsys.audio.resample import StreamResampler, resample_transform
from recsys.config import AUDIO_EXTENSIONS, AudioConfig

AUDIO_ERROR_CAUSES = (
    "empty",  # 0-byte file, or a header with no audio frames
    "unreadable",  # not an audio file libsndfile can open
    "truncated",  # fewer frames readable than the header declares, or decoding broke off
    "non_finite",  # NaN or infinite samples
    "silent",  # nothing left after silence removal (or too little for one chunk)
    "too_long",  # longer than AudioConfig.max_file_seconds
    "unsupported",  # extension not in AUDIO_EXTENSIONS, or a bad in-memory array
    "not_found",  # no such file
)
IN_MEMORY = "<in-memory audio>"  # the .path of errors about arrays and tensors
_WAV_UNKNOWN_SIZE = 0x7FFFF000  # streaming writers put this or more in a data chunk of unknown size


class AudioError(ValueError):
    """A file (or array) that cannot be used, with a short machine-readable `cause`.

    The message is "<path>: <human explanation>"; `cause` is one of AUDIO_ERROR_CAUSES.
    """

    def __init__(self, path: str | Path, cause: str, explanation: str):
        if cause not in AUDIO_ERROR_CAUSES:
            raise ValueError(f"unknown AudioError cause {cause!r}; valid: {', '.join(AUDIO_ERROR_CAUSES)}")
        self.path = path
        self.cause = cause
        self.explanation = explanation
        super().__init__(f"{path}: {explanation}")

    def __reduce__(self):  # keep path and cause across process boundaries (ingest workers, Ray)
        return (type(self), (self.path, self.cause, self.explanation))


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says; `frames` and `duration` are at the file's own rate."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    duration: float
    format: str
    subtype: str



def probe(path: str | Path) -> AudioInfo:
    """Check that `path` is a supported, non-empty, complete audio file and read its header.

    Raises AudioError: 'not_found', 'unsupported' (extension), 'empty', 'unreadable',
    'truncated' (a WAV whose data chunk runs past the end of the file).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not an audio file" if path.is_dir() else "no such file"
        raise AudioError(path, "not_found", what)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(
            path,
            "unsupported",
            f"unsupported file type {path.suffix or '(no extension)'!r}; valid: {', '.join(AUDIO_EXTENSIONS)}",
        )
    if path.stat().st_size == 0:
        raise AudioError(path, "empty", "file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(
            path, "unreadable", f"not a readable audio file (libsndfile: {_sf_reason(e)})"
        ) from e
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(
            path, "unreadable", f"header declares {info.samplerate} Hz and {info.channels} channels"
        )
    if info.frames <= 0:
        raise AudioError(path, "empty", "file holds no audio frames")
    if info.format in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path)
        if declared is not None and declared > info.frames:
            raise AudioError(path, "truncated", _truncated(declared, info.frames))
    return AudioInfo(
        path=path,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        duration=info.frames / info.samplerate,
        format=info.format,
        subtype=info.subtype,
    )


def content_hash(path: str | Path, block_size: int = 1 << 20) -> str:
    """sha256 hex digest of the file's bytes, read in blocks (identifies a song across renames)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(block_size):
                digest.update(block)
    except FileNotFoundError as e:
        raise AudioError(path, "not_found", "no such file") from e
    except OSError as e:
        raise AudioError(path, "unreadable", f"cannot read file: {e.strerror or e}") from e
    return digest.hexdigest()


def iter_mono_blocks(path: str | Path, cfg: AudioConfig) -> Iterator[torch.Tensor]:
    """Decode `path` block by block: yields (n,) float32 mono blocks at cfg.sample_rate.

    Blocks hold about `cfg.block_seconds` of audio (their lengths vary with resampling);
    concatenated they equal decoding and resampling the whole file at once. Raises
    AudioError ('non_finite', 'truncated', 'too_long', and those of :func:`probe`);
    truncation is only known at the end, after earlier blocks were yielded.
    """
    info = probe(path)
    path = info.path
    if cfg.max_file_seconds is not None and info.duration > cfg.max_file_seconds:
        raise AudioError(
            path,
            "too_long",
            f"{info.duration:.0f} s is longer than audio.max_file_seconds={cfg.max_file_seconds}",
        )
    block = max(1, round(cfg.block_seconds * info.sample_rate))
    resampler = StreamResampler(info.sample_rate, cfg.sample_rate)
    n_read = 0
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(
            path, "unreadable", f"not a readable audio file (libsndfile: {_sf_reason(e)})"
        ) from e
    with f:
        while True:
            try:
                # read() rather than blocks(): blocks() pads a short read with stale data
                x = f.read(block, dtype="float32", always_2d=True)  # (n, C)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(
                    path,
                    "truncated",
                    f"truncated or corrupt: decoding stopped after {n_read} of {info.frames} frames "
                    f"(libsndfile: {_sf_reason(e)})",
                ) from e
            if len(x) == 0:
                break
            if not np.isfinite(x).all():
                at = (n_read + int(np.argmax(~np.isfinite(x).all(axis=1)))) / info.sample_rate
                raise AudioError(
                    path, "non_finite", f"contains NaN or infinite samples (first at {at:.2f} s)"
                )
            n_read += len(x)
            mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
            out = resampler.push(torch.from_numpy(np.ascontiguousarray(mono)))
            if out.numel():
                yield out
            if len(x) < block:
                break
    if n_read < info.frames:
        raise AudioError(path, "truncated", _truncated(info.frames, n_read))
    out = resampler.flush()
    if out.numel():
        yield out


def load_audio(path: str | Path, cfg: AudioConfig) -> torch.Tensor:
    """The whole file as (N,) mono float32 at cfg.sample_rate (for short clips such as queries)."""
    return torch.cat(list(iter_mono_blocks(path, cfg)))


def _sf_reason(e: Exception) -> str:
    """libsndfile's own words, without soundfile's "Error opening '<path>': " prefix."""
    text = str(e)
    if text.startswith("Error opening") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.removeprefix("Error : ").strip()


def _truncated(declared: int, readable: int) -> str:
    return f"truncated: header declares {declared} frames but only {readable} could be read"


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the data chunk of a RIFF/WAVE header declares; None when it says nothing usable.

    libsndfile quietly shortens a WAV whose data chunk runs past the end of the file,
    so a cut-off WAV is only visible by reading the header ourselves.
    """
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RF64, RIFX: leave it to libsndfile
        block_align = 0
        while len(chunk := f.read(8)) == 8:
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                body = f.read(size + size % 2)
                if len(body) >= 14:
                    block_align = struct.unpack("<H", body[12:14])[0]
            elif chunk_id == b"data":
                if block_align == 0 or size == 0 or size >= _WAV_UNKNOWN_SIZE:
                    return None
                return size // block_align
            else:
                f.seek(size + size % 2, 1)
    return None



def to_mono_resampled(wave: np.ndarray | torch.Tensor, sample_rate: int, cfg: AudioConfig) -> torch.Tensor:
    """In-memory audio (N,) or (N, C) at `sample_rate` -> (N',) float32 mono at cfg.sample_rate.

    Integer arrays are scaled to [-1, 1). Runs on the tensor's device. Raises AudioError
    for NaN/inf ('non_finite'), audio longer than cfg.max_file_seconds ('too_long') or a
    layout that is not (N,) / (N, C) ('unsupported').
    """
    x = torch.as_tensor(wave)
    if not x.is_floating_point():
        if x.dtype not in (torch.int16, torch.int32, torch.int8, torch.uint8):
            raise AudioError(
                IN_MEMORY, "unsupported", f"unsupported sample type {x.dtype}; use float or int16/32"
            )
        x = (
            (x.to(torch.float32) - 128) / 128
            if x.dtype == torch.uint8
            else x / -float(torch.iinfo(x.dtype).min)
        )
    x = x.to(torch.float32)
    if x.ndim == 2:
        if x.shape[1] > 64:
            raise AudioError(
                IN_MEMORY,
                "unsupported",
                f"expected (N, C) frames x channels, got shape {tuple(x.shape)}; transpose a (C, N) array",
            )
        x = x.mean(dim=1)
    elif x.ndim != 1:
        raise AudioError(
            IN_MEMORY, "unsupported", f"expected (N,) or (N, C) audio, got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise AudioError(IN_MEMORY, "empty", "audio holds no samples")
    if not torch.isfinite(x).all():
        raise AudioError(IN_MEMORY, "non_finite", "contains NaN or infinite samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    seconds = x.numel() / sample_rate
    if cfg.max_file_seconds is not None and seconds > cfg.max_file_seconds:
        raise AudioError(
            IN_MEMORY,
            "too_long",
            f"{seconds:.0f} s is longer than audio.max_file_seconds={cfg.max_file_seconds}",
        )
    if sample_rate == cfg.sample_rate:
        return x
    return resample_transform(sample_rate, cfg.sample_rate, str(x.device))(x)

