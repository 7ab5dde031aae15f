"""Audio front-end: decode, down-mix, resample, drop silence, normalise, cut voiced chunks.

Every file goes through the same path::

    soundfile decode (blocks of `block_seconds`) -> mono -> cfg.sample_rate (16 kHz)
        -> RMS frames of `frame_seconds` -> voiced frames only -> loudness/peak gain
        -> chunks of `chunk_seconds` every `chunk_hop_seconds`  (B, chunk_samples)

Files are streamed, so memory does not grow with their length: silence removal and
normalisation need whole-file statistics, so a path is decoded twice. Pass 1 keeps
one power and one peak value per RMS frame (about 4 KB per minute of audio); pass 2
decodes again and emits the voiced, normalised audio. Resampling is blockwise and
sample-exact with resampling the whole file at once (see :class:`StreamResampler`).

Functions that take a tensor expect (N,) mono float32 at `cfg.sample_rate`; use
:func:`to_mono_resampled` to get there from in-memory audio of any rate and layout.

With a `separator` (recsys.separation, accompaniment suppression) the mono stream is
separated before silence detection, so silence, level and chunks are those of the
estimated voice. A file is then separated once, in pass 1, and the separated samples
are spilled to an anonymous temporary file that pass 2 reads back (4 bytes per sample
on disk, none kept in memory).
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from recsys.config import AUDIO_EXTENSIONS, AudioConfig

if TYPE_CHECKING:
    from recsys.separation import Separator

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
MAX_GAIN_DB = 40.0  # normalisation never amplifies more than this: quiet noise must stay quiet
SILENCE_POWER = 1e-12  # mean power of digital silence in frame_rms_db: -120 dBFS, finite
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


# ---------------------------------------------------------------------------- files


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


# ---------------------------------------------------------------------------- resampling


def resampled_length(n: int, orig_freq: int, new_freq: int) -> int:
    """Samples that n samples at orig_freq become at new_freq: ceil(n * new / orig), as torchaudio rounds."""
    if orig_freq == new_freq:
        return n
    gcd = math.gcd(orig_freq, new_freq)
    return math.ceil(new_freq // gcd * n / (orig_freq // gcd))


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int, device: str = "cpu") -> torchaudio.transforms.Resample:
    """One torchaudio sinc resampler per (orig, new, device); its kernel is costly to build."""
    return torchaudio.transforms.Resample(orig_freq, new_freq).to(device)


class StreamResampler:
    """Resample a stream of (n,) blocks; the concatenated output equals resampling it whole.

    torchaudio's resampler is a strided convolution (stride `orig`, one filter per output
    phase) over the signal padded with `width` zeros on the left and `width + orig` on
    the right, with orig/new the rates divided by their gcd. Here the same padding is
    applied to the stream's two ends and each convolution position is computed once,
    as soon as its whole window has arrived, so block edges leave no trace::

        [0]*width | block 1 | block 2 | ... | block k | [0]*(width + orig)
        positions  0, orig, 2*orig, ...    each reads kernel_size samples
    """

    def __init__(self, orig_freq: int, new_freq: int):
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
        self.identity = orig_freq == new_freq
        self.orig_freq, self.new_freq = orig_freq, new_freq
        if self.identity:
            return
        transform = _resampler(orig_freq, new_freq)
        self.kernel = transform.kernel  # (new, 1, kernel_size)
        self.width = transform.width
        self.stride = orig_freq // transform.gcd
        self.phases = new_freq // transform.gcd
        self._buffer = torch.zeros(self.width)
        self._n_in = 0
        self._n_out = 0

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """(n,) input samples -> (m,) output samples that are now final (m may be 0)."""
        if self.identity:
            return block
        self._n_in += block.numel()
        self._buffer = torch.cat([self._buffer, block.to(torch.float32)])
        return self._drain()

    def flush(self) -> torch.Tensor:
        """The output samples still owed at the end of the stream; the resampler is then spent."""
        if self.identity:
            return torch.zeros(0)
        owed = resampled_length(self._n_in, self.orig_freq, self.new_freq) - self._n_out
        self._buffer = torch.cat([self._buffer, torch.zeros(self.width + self.stride)])
        return self._drain()[: max(0, owed)]

    def _drain(self) -> torch.Tensor:
        size = self.kernel.shape[-1]
        if self._buffer.numel() < size:
            return torch.zeros(0)
        positions = (self._buffer.numel() - size) // self.stride + 1
        window = self._buffer[: (positions - 1) * self.stride + size]
        out = F.conv1d(window[None, None], self.kernel, stride=self.stride)  # (1, phases, positions)
        out = out[0].transpose(0, 1).reshape(-1)  # (positions * phases,) in time order
        self._buffer = self._buffer[positions * self.stride :]
        self._n_out += out.numel()
        return out


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
    return _resampler(sample_rate, cfg.sample_rate, str(x.device))(x)


# ---------------------------------------------------------------------------- silence and level


def _frame_samples(cfg: AudioConfig) -> int:
    return max(1, round(cfg.frame_seconds * cfg.sample_rate))


def _frame_stats(wave: torch.Tensor, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) -> mean power (n_frames,) float64 and peak |x| (n_frames,) of consecutive frames.

    The last frame may be partial; its power is averaged over the samples it has.
    """
    n = wave.numel()
    n_frames = -(-n // frame)
    if n_frames == 0:
        return torch.zeros(0, dtype=torch.float64, device=wave.device), torch.zeros(0, device=wave.device)
    padded = F.pad(wave, (0, n_frames * frame - n)).view(n_frames, frame)  # (n_frames, frame)
    energy = padded.square().sum(dim=1).double()  # float32 sums of one frame are exact enough
    counts = torch.full((n_frames,), frame, dtype=torch.float64, device=wave.device)
    counts[-1] = n - (n_frames - 1) * frame
    return energy / counts, padded.abs().amax(dim=1)


def _power_db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(power.clamp_min(SILENCE_POWER))


def frame_rms_db(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (n_frames,) float32 RMS level in dBFS of frames of cfg.frame_seconds (silence: -120)."""
    power, _ = _frame_stats(_check_wave(wave), _frame_samples(cfg))
    return _power_db(power).to(torch.float32)


def _threshold_db(loudest_db: float, cfg: AudioConfig) -> float:
    return max(loudest_db + cfg.silence_threshold_db, cfg.silence_floor_db)


def _voiced(power: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(n_frames,) frame powers -> (n_frames,) bool: within silence_threshold_db of the reference level, above the floor."""
    if power.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=power.device)
    db = _power_db(power)
    return db >= _threshold_db(_reference_db(db, cfg), cfg)


def _reference_db(db: torch.Tensor, cfg: AudioConfig) -> float:
    """The level silence is measured against: a high percentile of the frame levels rather than
    the maximum, so that a brief loud transient (a click, a clap) cannot mark the singing as silence."""
    return float(torch.quantile(db.double().cpu(), cfg.silence_reference_percentile / 100.0))


def voiced_mask(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (n_frames,) bool, True for voiced frames of cfg.frame_seconds."""
    power, _ = _frame_stats(_check_wave(wave), _frame_samples(cfg))
    return _voiced(power, cfg)


def _keep_frames(wave: torch.Tensor, mask: torch.Tensor, frame: int) -> torch.Tensor:
    """(N,) samples, (ceil(N / frame),) frame mask -> the samples of the kept frames."""
    return wave[mask.repeat_interleave(frame)[: wave.numel()]]


def remove_silence(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (M,) the voiced frames concatenated; M may be 0 (nothing voiced)."""
    return _keep_frames(wave, voiced_mask(wave, cfg), _frame_samples(cfg))


def _gain(power: float, peak: float, cfg: AudioConfig) -> float:
    """Gain that brings audio of mean `power` and `peak` |x| to cfg's level.

    Loudness mode reaches target_rms_db unless that would push the peak over
    peak_level; no mode amplifies by more than MAX_GAIN_DB.
    """
    if cfg.normalization == "none" or peak <= 0 or power <= 0:
        return 1.0
    if cfg.normalization == "loudness":
        gain = min(10 ** ((cfg.target_rms_db - 10 * math.log10(power)) / 20), cfg.peak_level / peak)
    elif cfg.normalization == "peak":
        gain = cfg.peak_level / peak
    else:
        raise ValueError(f"unknown audio.normalization {cfg.normalization!r}; valid: loudness, peak, none")
    return min(gain, 10 ** (MAX_GAIN_DB / 20))


def normalize(wave: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """(N,) -> (N,) scaled to cfg's loudness or peak level. Apply to voiced audio only,
    so that silence does not lower the measured level."""
    wave = _check_wave(wave)
    if wave.numel() == 0:
        return wave
    power = float(wave.double().square().mean())
    return wave * _gain(power, float(wave.abs().max()), cfg)


def _check_wave(wave: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(wave) or wave.ndim != 1 or not wave.is_floating_point():
        shape = tuple(wave.shape) if hasattr(wave, "shape") else type(wave).__name__
        raise ValueError(
            f"expected a (N,) float tensor at the working rate, got {shape}; see to_mono_resampled"
        )
    return wave.to(torch.float32)


# ---------------------------------------------------------------------------- voiced streams


@dataclass(frozen=True)
class _VoicedPlan:
    """Pass-1 result: which frames are voiced, and the gain for the voiced audio."""

    mask: torch.Tensor  # (n_frames,) bool
    gain: float


def _frame_aligned(blocks: Iterable[torch.Tensor], frame: int) -> Iterator[torch.Tensor]:
    """Re-cut a stream so every block but the last holds a whole number of frames."""
    rest = torch.zeros(0)
    for block in blocks:
        if rest.numel():
            block = torch.cat([rest.to(block.device), block])
        cut = block.numel() // frame * frame
        if cut:
            yield block[:cut]
        rest = block[cut:]
    if rest.numel():
        yield rest


def _plan(
    blocks: Iterable[torch.Tensor], cfg: AudioConfig, name: str | Path, n_samples_hint: int
) -> _VoicedPlan:
    """Pass 1: per-frame power and peak of the whole stream -> voiced frames and gain.

    The statistics go into tensors allocated once, sized from `n_samples_hint` (the
    header's length), rather than a list of small tensors: small long-lived allocations
    between the blocks' large temporaries fragment the heap, and memory would then grow
    with file length.
    """
    frame = _frame_samples(cfg)
    power = peak = harmonicity = torch.zeros(0)
    n_frames = n_samples = 0
    for block in _frame_aligned(blocks, frame):
        block_power, block_peak = _frame_stats(block, frame)
        end = n_frames + block_power.numel()
        if end > power.numel():  # first block, or more audio than the header declared
            size = max(end, -(-n_samples_hint // frame), 2 * power.numel())
            power = _grown(power, size, torch.float64, block.device)
            peak = _grown(peak, size, torch.float32, block.device)
            if cfg.vocal_activity:
                harmonicity = _grown(harmonicity, size, torch.float32, block.device)
        power[n_frames:end] = block_power
        peak[n_frames:end] = block_peak
        if cfg.vocal_activity:
            harmonicity[n_frames:end] = _harmonicity(block, frame, cfg.sample_rate)
        n_frames, n_samples = end, n_samples + block.numel()
    if n_frames == 0:
        raise AudioError(name, "empty", "audio holds no samples")
    power, peak = power[:n_frames], peak[:n_frames]  # (n_frames,) each
    mask = _voiced(power, cfg)
    if not mask.any():  # only when the loudest frame is under the absolute floor
        loudest = float(_power_db(power).max())
        raise AudioError(
            name,
            "silent",
            f"no voiced audio (all frames below {cfg.silence_floor_db:g} dBFS; the loudest is {loudest:.1f} dBFS)",
        )
    if cfg.vocal_activity:
        mask &= harmonicity[:n_frames] >= cfg.min_harmonicity
        if not mask.any():
            raise AudioError(
                name,
                "silent",
                f"no singing: no loud frame is periodic enough (harmonicity >= {cfg.min_harmonicity:g}; "
                f"audio.vocal_activity is on)",
            )
    # The last frame may be partial: weight powers by frame length for the voiced mean.
    lengths = torch.full_like(power, frame)
    lengths[-1] = n_samples - (power.numel() - 1) * frame
    voiced_power = float((power[mask] * lengths[mask]).sum() / lengths[mask].sum())
    return _VoicedPlan(mask=mask, gain=_gain(voiced_power, float(peak[mask].max()), cfg))


def _harmonicity(block: torch.Tensor, frame: int, sample_rate: int) -> torch.Tensor:
    """(n,) -> (ceil(n / frame),) periodicity of each frame (recsys.separation.frame_harmonicity)."""
    from recsys.separation import frame_harmonicity

    return frame_harmonicity(block, frame, sample_rate).to(torch.float32)


def _grown(values: torch.Tensor, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(size, dtype=dtype, device=device)
    out[: values.numel()] = values
    return out


def _iter_voiced(source: _Source, cfg: AudioConfig) -> Iterator[torch.Tensor]:
    """Two passes over the source's blocks: plan (frame powers), then emit voiced samples x gain."""
    plan = _plan(source.blocks(), cfg, source.name, source.n_samples)
    frame = _frame_samples(cfg)
    first = 0
    for block in _frame_aligned(source.blocks(), frame):
        n_frames = -(-block.numel() // frame)
        if first + n_frames > plan.mask.numel():
            raise AudioError(source.name, "unreadable", "the file changed while it was being read")
        voiced = _keep_frames(block, plan.mask[first : first + n_frames].to(block.device), frame)
        first += n_frames
        if voiced.numel():
            yield voiced * plan.gain


@dataclass(frozen=True)
class _Source:
    """A file or a tensor, as a stream of (n,) blocks at cfg.sample_rate that can be read twice."""

    blocks: Callable[[], Iterable[torch.Tensor]]
    name: str | Path
    n_samples: int  # expected stream length (from the header for files)


def _source(
    source: str | Path | torch.Tensor, cfg: AudioConfig, separator: Separator | None = None
) -> _Source:
    if torch.is_tensor(source):
        wave = _check_wave(source)
        if not torch.isfinite(wave).all():
            raise AudioError(IN_MEMORY, "non_finite", "contains NaN or infinite samples")
        if separator is not None:
            wave = _check_wave(separator.separate(wave, cfg.sample_rate))
        return _Source(lambda: [wave], IN_MEMORY, wave.numel())
    info = probe(source)
    n_samples = resampled_length(info.frames, info.sample_rate, cfg.sample_rate)
    if separator is None:
        return _Source(lambda: iter_mono_blocks(source, cfg), source, n_samples)
    spill = _SpilledStream(
        lambda: separator.separate_stream(iter_mono_blocks(source, cfg), cfg.sample_rate),
        max(1, round(cfg.block_seconds * cfg.sample_rate)),
    )
    return _Source(spill.blocks, source, n_samples)


class _SpilledStream:
    """A stream computed once and read any number of times: the first read computes the
    (n,) float32 blocks and writes them to an anonymous temporary file (deleted when
    closed), later reads replay that file in blocks of `block` samples."""

    def __init__(self, make_blocks: Callable[[], Iterable[torch.Tensor]], block: int):
        self._make_blocks = make_blocks
        self._block = block
        self._file = None  # set once the first read has finished
        self._n = 0

    def blocks(self) -> Iterator[torch.Tensor]:
        return self._record() if self._file is None else self._replay()

    def _record(self) -> Iterator[torch.Tensor]:
        f = tempfile.TemporaryFile(prefix="recsys-separated-")  # noqa: SIM115 (pass 2 reads and closes it)
        self._n = 0
        try:
            for block in self._make_blocks():
                block = block.detach().to("cpu", torch.float32)
                f.write(block.numpy().tobytes())
                self._n += block.numel()
                yield block
        except BaseException:
            f.close()
            raise
        self._file = f

    def _replay(self) -> Iterator[torch.Tensor]:
        f = self._file
        f.seek(0)
        left = self._n
        try:
            while left > 0:
                data = f.read(4 * min(self._block, left))
                if not data:
                    raise OSError(f"the temporary file of separated audio ended {left} samples early")
                block = torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())
                left -= block.numel()
                yield block
        finally:
            f.close()
            self._file = None


def iter_voiced_blocks(
    path: str | Path, cfg: AudioConfig, separator: Separator | None = None
) -> Iterator[torch.Tensor]:
    """Stream the voiced, normalised audio of a file as (n,) float32 blocks at cfg.sample_rate.

    Memory stays flat for any file length (two decoding passes). Raises AudioError
    ('silent' and those of iter_mono_blocks) before the first block is yielded. With a
    `separator`, the estimated voice is used (see the module docstring).
    """
    return _iter_voiced(_source(path, cfg, separator), cfg)


def voiced_audio(
    source: str | Path | torch.Tensor, cfg: AudioConfig, separator: Separator | None = None
) -> torch.Tensor:
    """All voiced audio of a file or a (N,) tensor at cfg.sample_rate, concatenated and normalised: (M,).

    A path is streamed, but the result lives in memory (4 bytes per voiced sample, 230 MB
    for an hour at 16 kHz): for hour-long files iterate iter_voiced_blocks instead. With
    a `separator` the accompaniment is suppressed first, before silence detection.
    """
    return torch.cat(list(_iter_voiced(_source(source, cfg, separator), cfg)))


# ---------------------------------------------------------------------------- chunks


def chunk_samples(cfg: AudioConfig) -> int:
    """Samples per voiced chunk (64000 with the defaults)."""
    return max(1, round(cfg.chunk_seconds * cfg.sample_rate))


def _hop_samples(cfg: AudioConfig) -> int:
    return max(1, round(cfg.chunk_hop_seconds * cfg.sample_rate))


def _min_chunk_samples(cfg: AudioConfig) -> int:
    return max(1, round(cfg.min_chunk_seconds * cfg.sample_rate))


def n_chunks(n_samples: int, cfg: AudioConfig) -> int:
    """Number of chunks voiced_chunks cuts from `n_samples` voiced samples (0: too short)."""
    size, hop, min_size = chunk_samples(cfg), _hop_samples(cfg), _min_chunk_samples(cfg)
    if n_samples < size:
        return int(n_samples >= min_size)
    n_grid = (n_samples - size) // hop + 1
    tail = n_samples - ((n_grid - 1) * hop + size)
    return n_grid + int(tail >= min_size)


def _chunks(
    blocks: Iterable[torch.Tensor], cfg: AudioConfig, name: str | Path, batch_size: int, n_samples_hint: int
) -> Iterator[torch.Tensor]:
    """Cut a stream into (b, chunk) batches: chunks every hop; then a last one for the tail.

    The final voiced stretch not covered by the hop grid is kept when it is at least
    min_chunk_seconds long, as one more chunk aligned to the end of the audio (it
    overlaps the previous one), so chunks never hold padding, except when all the
    voiced audio is shorter than one chunk: then it is one chunk, zero-padded at the end.
    Chunks are copied into a batch allocated once per batch (at most as many rows as
    `n_samples_hint` samples can give), so no block outlives its turn.
    """
    size, hop, min_size = chunk_samples(cfg), _hop_samples(cfg), _min_chunk_samples(cfg)
    capacity = max(1, min(batch_size, n_chunks(n_samples_hint, cfg)))
    buffer = torch.zeros(0)
    offset = 0  # stream position of buffer[0]
    start = 0  # stream position of the next chunk
    end = 0  # stream position after the last chunk emitted (0: none yet)
    batch, n = torch.zeros(0), 0
    for block in blocks:
        buffer = torch.cat([buffer.to(block.device), block])
        while start + size <= offset + buffer.numel():
            if n == 0:
                batch = torch.empty(capacity, size, device=block.device)
            batch[n] = buffer[start - offset : start - offset + size]
            n, end, start = n + 1, start + size, start + hop
            if n == capacity:
                yield batch
                n = 0
        drop = max(0, min(start - offset, buffer.numel() - size))  # keep the last chunk's worth for the tail
        buffer = buffer[drop:]
        offset += drop
    total = offset + buffer.numel()
    if end == 0 and total < min_size:
        raise AudioError(
            name,
            "silent",
            f"only {total / cfg.sample_rate:.2f} s of voiced audio; "
            f"at least audio.min_chunk_seconds={cfg.min_chunk_seconds:g} s is needed",
        )
    if end == 0 or total - end >= min_size:
        if n == 0:
            batch = torch.zeros(1, size, device=buffer.device)
        batch[n] = F.pad(buffer[-size:], (0, max(0, size - buffer.numel())))
        n += 1
    if n:
        yield batch[:n]


def iter_voiced_chunks(
    path: str | Path, cfg: AudioConfig, batch_size: int = 16, separator: Separator | None = None
) -> Iterator[torch.Tensor]:
    """Stream a file's voiced chunks as (b, chunk_samples) float32 batches, b <= batch_size (flat memory).

    With a `separator` the chunks are cut from the estimated voice.
    """
    src = _source(path, cfg, separator)
    return _chunks(_iter_voiced(src, cfg), cfg, src.name, batch_size, src.n_samples)


def voiced_chunks(
    source: str | Path | torch.Tensor, cfg: AudioConfig, separator: Separator | None = None
) -> torch.Tensor:
    """(B, chunk_samples) float32 voiced, normalised chunks of a file or a (N,) tensor at cfg.sample_rate.

    A path is streamed; the result holds B x chunk_samples floats (about twice the voiced
    audio with the default hop), so for hour-long files iterate iter_voiced_chunks.
    Raises AudioError('silent') when no voiced chunk remains. With a `separator` the
    chunks are cut from the estimated voice.
    """
    src = _source(source, cfg, separator)
    return torch.cat(list(_chunks(_iter_voiced(src, cfg), cfg, src.name, 256, src.n_samples)))
