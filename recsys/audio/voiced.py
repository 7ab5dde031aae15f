"""The voiced stream: silence removed, level normalised, optionally separated, then cut into chunks.

Pass 1 reads the whole source for per-frame statistics (which frames are voiced, the
gain); pass 2 reads it again and emits the voiced samples times the gain, as blocks,
as one tensor, or as (B, chunk_samples) chunks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from recsys.audio.decode import IN_MEMORY, AudioError, iter_mono_blocks, probe
from recsys.audio.frames import (
    check_wave,
    frame_harmonicity,
    frame_samples,
    frame_stats,
    keep_frames,
    level_gain,
    power_db,
    voiced_frames,
)
from recsys.audio.resample import resampled_length
from recsys.config import AudioConfig


class Separator(Protocol):
    """A vocal estimator: (N,) mix -> (N,) voice, same rate and length (recsys.separation implements it)."""

    name: str

    def separate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor: ...

    def separate_stream(self, blocks: Iterable[torch.Tensor], sample_rate: int) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True)
class _VoicedPlan:
    """Pass-1 result: which frames are voiced, and the gain for the voiced audio."""

    mask: torch.Tensor  # (n_frames,) bool
    gain: float
    n_samples: int  # voiced samples pass 2 emits


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
    frame = frame_samples(cfg)
    power = peak = harmonicity = torch.zeros(0)
    n_frames = n_samples = 0
    for block in _frame_aligned(blocks, frame):
        block_power, block_peak = frame_stats(block, frame)
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
            harmonicity[n_frames:end] = frame_harmonicity(block, frame, cfg.sample_rate).to(torch.float32)
        n_frames, n_samples = end, n_samples + block.numel()
    if n_frames == 0:
        raise AudioError(name, "empty", "audio holds no samples")
    power, peak = power[:n_frames], peak[:n_frames]  # (n_frames,) each
    mask = voiced_frames(power, cfg)
    if not mask.any():  # only when the loudest frame is under the absolute floor
        loudest = float(power_db(power).max())
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
    n_voiced = float(lengths[mask].sum())
    voiced_power = float((power[mask] * lengths[mask]).sum() / n_voiced)
    gain = level_gain(voiced_power, float(peak[mask].max()), cfg)
    return _VoicedPlan(mask=mask, gain=gain, n_samples=round(n_voiced))


def _grown(values: torch.Tensor, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(size, dtype=dtype, device=device)
    out[: values.numel()] = values
    return out


def _iter_voiced(source: _Source, cfg: AudioConfig) -> Iterator[torch.Tensor]:
    """Two passes over the source's blocks: plan (frame powers), then emit voiced samples x gain."""
    yield from _emit(source, _plan(source.blocks(), cfg, source.name, source.n_samples), cfg)


def _emit(source: _Source, plan: _VoicedPlan, cfg: AudioConfig) -> Iterator[torch.Tensor]:
    """Pass 2: the voiced samples of the source's blocks, times the plan's gain."""
    frame = frame_samples(cfg)
    first = 0
    for block in _frame_aligned(source.blocks(), frame):
        n_frames = -(-block.numel() // frame)
        if first + n_frames > plan.mask.numel():
            raise AudioError(source.name, "unreadable", "the file changed while it was being read")
        voiced = keep_frames(block, plan.mask[first : first + n_frames].to(block.device), frame)
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
        wave = check_wave(source)
        if not torch.isfinite(wave).all():
            raise AudioError(IN_MEMORY, "non_finite", "contains NaN or infinite samples")
        if separator is not None:
            wave = check_wave(separator.separate(wave, cfg.sample_rate))
        return _Source(lambda: [wave], IN_MEMORY, wave.numel())
    info = probe(source)
    n_samples = resampled_length(info.frames, info.sample_rate, cfg.sample_rate)
    if separator is None:
        if n_samples <= cfg.decode_once_seconds * cfg.sample_rate:
            return _Source(_KeptStream(lambda: iter_mono_blocks(source, cfg)).blocks, source, n_samples)
        return _Source(lambda: iter_mono_blocks(source, cfg), source, n_samples)
    spill = _SpilledStream(
        lambda: separator.separate_stream(iter_mono_blocks(source, cfg), cfg.sample_rate),
        max(1, round(cfg.block_seconds * cfg.sample_rate)),
    )
    return _Source(spill.blocks, source, n_samples)


class _KeptStream:
    """A stream decoded once and replayed from memory: pass 2 of a file short enough to hold
    (AudioConfig.decode_once_seconds) does not decode and resample it again. A first read that
    stops early keeps nothing, and the next read decodes afresh."""

    def __init__(self, make_blocks: Callable[[], Iterable[torch.Tensor]]) -> None:
        self._make_blocks = make_blocks
        self._kept: list[torch.Tensor] | None = None

    def blocks(self) -> Iterator[torch.Tensor]:
        return iter(self._kept) if self._kept is not None else self._record()

    def _record(self) -> Iterator[torch.Tensor]:
        kept = []
        for block in self._make_blocks():
            kept.append(block)
            yield block
        self._kept = kept


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


@dataclass(frozen=True)
class VoicedStream:
    """The voiced audio of one source as a stream whose length is known before it starts.

    `n_samples` (from pass 1) lets a consumer size its output once and handle the
    true end of the audio (e.g. a centred STFT's edge padding) before reading it all.
    `blocks` is pass 2: (n,) float32 blocks at the working rate, readable once.
    """

    n_samples: int
    blocks: Iterator[torch.Tensor]
    kept: torch.Tensor | None = None  # (n_frames,) bool: the source's frames the blocks keep (None: all)
    frame: int = 0  # samples per frame of `kept`

    def timeline(self, hop: int) -> torch.Tensor | None:
        """Each feature frame's position (frames of `hop` samples) on the source's own timeline, where
        silence was cut: (frames_for(n_samples),) int64, strictly increasing; None when nothing was cut."""
        if self.kept is None or bool(self.kept.all()):
            return None
        return timeline_frames(self.kept, self.frame, self.n_samples, hop)


def timeline_frames(kept: torch.Tensor, frame: int, n_samples: int, hop: int) -> torch.Tensor:
    """(n_frames,) kept-frame mask of `frame` samples, voiced length, hop -> (n_samples // hop + 1,) int64:
    for the feature frame centred at voiced sample t * hop, the frame index of that sample in the source."""
    kept_frames = torch.nonzero(kept.cpu()).flatten()  # source frames, in order
    voiced = torch.arange(n_samples // hop + 1, dtype=torch.int64) * hop  # centred STFT frames
    which = (voiced // frame).clamp_max(kept_frames.numel() - 1)  # the last frame centres one past the end
    source = kept_frames[which] * frame + voiced - which * frame
    return torch.div(source + hop // 2, hop, rounding_mode="floor")


def voiced_stream(
    source: str | Path | torch.Tensor, cfg: AudioConfig, separator: Separator | None = None
) -> VoicedStream:
    """The voiced, normalised audio of a file or a (N,) tensor, streamed, with its length.

    Pass 1 runs here, so AudioError ('silent', and those of decoding) is raised by this
    call; the blocks hold what voiced_audio would concatenate. Memory stays flat for
    paths of any length.
    """
    src = _source(source, cfg, separator)
    plan = _plan(src.blocks(), cfg, src.name, src.n_samples)
    return VoicedStream(plan.n_samples, _emit(src, plan, cfg), plan.mask, frame_samples(cfg))


def voiced_audio(
    source: str | Path | torch.Tensor, cfg: AudioConfig, separator: Separator | None = None
) -> torch.Tensor:
    """All voiced audio of a file or a (N,) tensor at cfg.sample_rate, concatenated and normalised: (M,).

    A path is streamed, but the result lives in memory (4 bytes per voiced sample, 230 MB
    for an hour at 16 kHz): for hour-long files use voiced_stream (or iter_voiced_blocks). With
    a `separator` the accompaniment is suppressed first, before silence detection.
    """
    return torch.cat(list(_iter_voiced(_source(source, cfg, separator), cfg)))


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
