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

    recsys/audio/
        decode.py    probe, content_hash, iter_mono_blocks, load_audio, to_mono_resampled, AudioError
        resample.py  StreamResampler: blockwise resampling, exact with the whole signal's
        frames.py    per-frame level, silence, gain and periodicity (vocal activity)
        voiced.py    the two-pass voiced stream (with its length known up front) and its chunks
        framing.py   CentredFrames: a centred STFT's frames cut from a stream, block by block

Separation sits above this package: the `Separator` protocol the voiced stream calls is
defined here, and recsys.separation implements it; nothing here imports separation.
"""

from recsys.audio.decode import (
    AUDIO_ERROR_CAUSES,
    IN_MEMORY,
    AudioError,
    AudioInfo,
    content_hash,
    iter_mono_blocks,
    load_audio,
    probe,
    to_mono_resampled,
)
from recsys.audio.frames import (
    MAX_GAIN_DB,
    SILENCE_POWER,
    frame_harmonicity,
    frame_rms_db,
    normalize,
    remove_silence,
    voiced_mask,
)
from recsys.audio.resample import StreamResampler, resampled_length
from recsys.audio.voiced import (
    Separator,
    VoicedStream,
    chunk_samples,
    iter_voiced_blocks,
    iter_voiced_chunks,
    n_chunks,
    voiced_audio,
    voiced_chunks,
    voiced_stream,
)

__all__ = [
    "AUDIO_ERROR_CAUSES",
    "IN_MEMORY",
    "MAX_GAIN_DB",
    "SILENCE_POWER",
    "AudioError",
    "AudioInfo",
    "Separator",
    "StreamResampler",
    "VoicedStream",
    "chunk_samples",
    "content_hash",
    "frame_harmonicity",
    "frame_rms_db",
    "iter_mono_blocks",
    "iter_voiced_blocks",
    "iter_voiced_chunks",
    "load_audio",
    "n_chunks",
    "normalize",
    "probe",
    "remove_silence",
    "resampled_length",
    "to_mono_resampled",
    "voiced_audio",
    "voiced_chunks",
    "voiced_mask",
    "voiced_stream",
]
