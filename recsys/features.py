"""Per-song features on shared frames: the log-mel, and the waveform pitch or speaker partials where an encoder reads them.

Log-mel defaults (recsys.config.FeatureConfig): 16 kHz, window and FFT 512, hop
256, 48 mel bands, so one frame is 16 ms and 30 s of audio is 1876 frames.

Every encoder (recsys.encoders) reads one :class:`SongFeatures` value and declares
the names of the features it needs (:data:`FEATURES`); :func:`song_features`
decodes a file once and computes only those, block by block from the voiced
stream (:func:`stream_features`): an hour-long file holds its features (n_mels +
N_PITCH floats a frame) but never its waveform or a spectrogram of all of it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torchaudio

from recsys.config import AudioConfig, FeatureConfig
from recsys.pitch import N_PITCH, PITCH_STRIDE, WAVE_N_FFT, wave_pitch, wave_pitch_frames

if TYPE_CHECKING:
    from recsys.audio import VoicedStream
    from recsys.separation import Separator


FEATURES = ("mel", "pitch", "speaker")  # what a SongFeatures can carry; an encoder's `needs` names some of them
_HOW = {
    "mel": "recsys.features.log_mel of the voiced audio",
    "pitch": "recsys.pitch.wave_pitch(voiced_wave, sample_rate, hop_length), e.g. "
    "recsys.features.song_features(..., needs=frozenset({'mel', 'pitch'}))",
    "speaker": "recsys.speaker.speaker_partials(voiced_wave, sample_rate), e.g. "
    "recsys.features.song_features(..., needs=frozenset({'mel', 'speaker'}))",
}
_WHAT = {"mel": "the log-mel", "pitch": "the waveform pitch", "speaker": "the speaker front end's partials"}


def check_needs(needs: Iterable[str]) -> frozenset[str]:
    """`needs` as a frozenset, after checking every name is one of FEATURES."""
    needs = frozenset(needs)
    unknown = sorted(needs - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown features {unknown}; valid: {', '.join(FEATURES)}")
    return needs


@dataclass(frozen=True, eq=False)
class SongFeatures:
    """One song's features on the log-mel's frames; what every encoder reads.

    mel: (n_mels, T) float32 natural-log mel power of the voiced audio.
    pitch: (N_PITCH, T) waveform pitch salience (recsys.pitch.wave_pitch) of the same
    audio, or None when no encoder asked for it. Arrays are turned into tensors.
    speaker: (K, 256) float32 d-vectors of the voiced audio's 1.6 s partials (recsys.speaker), not on
    the frames; None unless an encoder reads them (timbre.front_end: speaker).
    times: (T,) int64, each frame's position on the song's own timeline where the clean-up
    cut silence (recsys.audio.VoicedStream.timeline), strictly increasing; None when the
    frames are the timeline. The melody vector puts its frames back there: a melody's rests
    are part of it, and cutting them changes every note-to-note distance.
    """

    mel: torch.Tensor
    pitch: torch.Tensor | None = None
    times: torch.Tensor | None = None
    speaker: torch.Tensor | None = None

    def __post_init__(self) -> None:
        mel = torch.as_tensor(self.mel)
        if mel.dim() != 2:
            raise ValueError(f"expected one song's log-mel (n_mels, T), got shape {tuple(mel.shape)}")
        object.__setattr__(self, "mel", mel)
        if self.pitch is not None:
            pitch = torch.as_tensor(self.pitch)
            if pitch.shape != (N_PITCH, mel.shape[-1]):
                raise ValueError(
                    f"expected waveform pitch ({N_PITCH}, {mel.shape[-1]}) on the mel's frames, "
                    f"got {tuple(pitch.shape)}"
                )
            object.__setattr__(self, "pitch", pitch)
        if self.times is not None:
            times = torch.as_tensor(self.times, dtype=torch.int64)
            if times.shape != (mel.shape[-1],) or (times.numel() > 1 and not bool((times[1:] > times[:-1]).all())):
                raise ValueError(f"expected ({mel.shape[-1]},) strictly increasing frame times, "
                                 f"got shape {tuple(times.shape)}")
            object.__setattr__(self, "times", times)
        if self.speaker is not None:
            speaker = torch.as_tensor(self.speaker)
            if speaker.dim() != 2 or speaker.shape[0] < 1:
                raise ValueError(f"expected speaker partials (K >= 1, dim), got shape {tuple(speaker.shape)}")
            object.__setattr__(self, "speaker", speaker)

    @property
    def n_frames(self) -> int:
        return int(self.mel.shape[-1])

    @property
    def available(self) -> frozenset[str]:
        """The names of the features this value carries."""
        return frozenset({"mel"} | {name for name in ("pitch", "speaker") if getattr(self, name) is not None})

    def require(self, needs: Iterable[str]) -> None:
        """Raise ValueError naming each feature of `needs` this value lacks, and how to compute it."""
        missing = [name for name in FEATURES if name in check_needs(needs) - self.available]
        if missing:
            raise ValueError(
                "the encoder reads "
                + "; ".join(f"{_WHAT[name]} ({name!r}), which these song features lack: compute it with "
                            f"{_HOW[name]}" for name in missing)
            )

    def to(self, device: torch.device | str) -> SongFeatures:
        """The same features on `device`."""
        def moved(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device)

        return SongFeatures(self.mel.to(device), moved(self.pitch), moved(self.times), moved(self.speaker))

    def on_timeline(self, frames: torch.Tensor, fill: float) -> torch.Tensor:
        """(..., T) values on these frames -> (..., times[-1] + 1) on the song's own timeline, `fill` where
        silence was cut (the frames themselves when nothing was)."""
        if self.times is None:
            return frames
        times = self.times.to(frames.device)
        out = frames.new_full((*frames.shape[:-1], int(times[-1]) + 1), fill)
        out[..., times] = frames
        return out


def frames_for(n_samples: int, cfg: FeatureConfig) -> int:
    """Number of frames log_mel returns for `n_samples` samples (centred STFT)."""
    return n_samples // cfg.hop_length + 1


def seconds_per_frame(cfg: FeatureConfig, sample_rate: int) -> float:
    return cfg.hop_length / sample_rate


class _MelPower(torch.nn.Module):
    """torchaudio's MelSpectrogram(power=2.0), with |X|^2 taken as re^2 + im^2: torch's complex abs is a
    hypot, a third of the transform's CPU time (a 3-minute song's log-mel 1.4x faster; docs/benchmarks.md)."""

    def __init__(self, cfg: FeatureConfig, sample_rate: int, center: bool) -> None:
        super().__init__()
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=None,
            center=center, pad_mode="reflect",
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=cfg.n_mels, sample_rate=sample_rate, f_min=cfg.f_min, f_max=cfg.f_max,
            n_stft=cfg.n_fft // 2 + 1, norm="slaney", mel_scale="slaney",
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(wave)
        return self.mel_scale(torch.addcmul(spec.real.square(), spec.imag, spec.imag))


@functools.lru_cache(maxsize=8)
def _mel_transform(cfg: FeatureConfig, sample_rate: int, center: bool = True) -> _MelPower:
    return _MelPower(cfg, sample_rate, center)


def log_mel(wave: torch.Tensor, cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(..., N) waveform -> (..., n_mels, T) natural-log mel power, computed on wave's device.

    The transform runs in float32 on whatever device `wave` is on, so CPU and CUDA
    give the same result up to float rounding.
    """
    if not torch.is_tensor(wave):
        wave = torch.as_tensor(wave)
    if wave.shape[-1] < cfg.n_fft // 2 + 1:
        raise ValueError(f"audio of {wave.shape[-1]} samples is too short for n_fft={cfg.n_fft}")
    transform = _mel_transform(cfg, sample_rate).to(wave.device)
    mel = transform(wave.to(torch.float32))
    return torch.log(mel + cfg.log_floor)


def song_mel(
    source, audio_cfg: AudioConfig, cfg: FeatureConfig, separator: Separator | None = None
) -> torch.Tensor:
    """A file path or (N,) wave at audio_cfg.sample_rate -> (n_mels, T) log-mel of its voiced audio.

    With a `separator` the accompaniment is suppressed first; then silence is removed
    and loudness normalised (recsys.audio.voiced_audio). Raises recsys.audio.AudioError
    when the source has no voiced audio.
    """
    from recsys.audio import voiced_audio

    return log_mel(voiced_audio(source, audio_cfg, separator), cfg, audio_cfg.sample_rate)


def wave_features(
    wave: torch.Tensor, needs: Iterable[str], audio_cfg: AudioConfig, feature_cfg: FeatureConfig
) -> SongFeatures:
    """(N,) voiced waveform at audio_cfg.sample_rate -> SongFeatures: the log-mel, plus what `needs` names.

    The waveform pitch (needs 'pitch') lands on the log-mel's frames (same hop, centred); the speaker
    partials (needs 'speaker') are spread over the whole wave (features.speaker_partials).
    """
    needs = check_needs(needs)
    wave = torch.as_tensor(wave)
    if wave.dim() != 1:
        raise ValueError(f"expected one song's (N,) waveform, got shape {tuple(wave.shape)}")
    mel = log_mel(wave, feature_cfg, audio_cfg.sample_rate)
    pitch = wave_pitch(wave, audio_cfg.sample_rate, feature_cfg.hop_length) if "pitch" in needs else None
    speaker = None
    if "speaker" in needs:
        from recsys.speaker import speaker_partials

        speaker = speaker_partials(wave, audio_cfg.sample_rate, feature_cfg.speaker_partials, wave.device)
    return SongFeatures(mel, pitch, speaker=speaker)


def voiced_wave_features(
    source, needs: Iterable[str], audio_cfg: AudioConfig, feature_cfg: FeatureConfig, separator: Separator | None = None
) -> tuple[torch.Tensor, SongFeatures]:
    """A file path or (N,) wave -> its voiced audio (M,), in memory, and that audio's features with their
    timeline (SongFeatures.times): for studies that also transform the voiced wave (song_features streams)."""
    from recsys.audio import voiced_stream

    stream = voiced_stream(source, audio_cfg, separator)
    times = stream.timeline(feature_cfg.hop_length)
    wave = torch.cat(list(stream.blocks))
    feats = wave_features(wave, needs, audio_cfg, feature_cfg)
    return wave, SongFeatures(feats.mel, feats.pitch, times, feats.speaker)


def derived_times(base: SongFeatures, derived: SongFeatures, tempo: float = 1.0) -> torch.Tensor | None:
    """Frame times for features of audio derived from `base`'s voiced audio (a pitch-shifted, noisier or
    `tempo` times faster copy, cleaned up again): on `base`'s own timeline at the copy's tempo, so the copy
    keeps the rests `base`'s clean-up cut. Strictly increasing; None when `base` has no times."""
    if base.times is None:
        return derived.times
    own = derived.times if derived.times is not None else torch.arange(derived.n_frames)
    source = torch.round(own.double() * tempo).long().clamp(0, base.n_frames - 1)  # the base frame each came from
    out = torch.round(base.times[source].double() / tempo).long()
    steps = torch.arange(out.numel())
    return torch.cummax(out - steps, 0).values + steps  # strictly increasing where rounding met


def song_features(
    source,
    audio_cfg: AudioConfig,
    feature_cfg: FeatureConfig,
    separator: Separator | None = None,
    needs: Iterable[str] = frozenset({"mel"}),
) -> SongFeatures:
    """A file path or (N,) wave at audio_cfg.sample_rate -> the SongFeatures of its voiced audio.

    One decode (recsys.audio.voiced_stream: with `separator` the accompaniment is
    suppressed first, then silence removed and loudness normalised), then only the
    features `needs` names (an encoder's or recsys.registry.Models' `needs`), computed
    block by block (:func:`stream_features`), so memory holds the features but never
    the whole waveform or its spectrogram. Raises recsys.audio.AudioError when the
    source has no voiced audio.
    """
    from recsys.audio import voiced_stream

    needs = check_needs(needs)
    return stream_features(voiced_stream(source, audio_cfg, separator), needs, audio_cfg, feature_cfg)


def stream_features(
    stream: VoicedStream, needs: Iterable[str], audio_cfg: AudioConfig, feature_cfg: FeatureConfig
) -> SongFeatures:
    """The features of a voiced stream, equal to wave_features of its concatenated blocks (to float rounding).

    The frames are cut in blocks of about audio_cfg.block_seconds (recsys.audio.framing),
    with the centred STFTs' edge padding at the stream's true ends only, and written
    into (n_mels, T) and (N_PITCH, T) outputs allocated once. A stream no longer than
    one block is simply concatenated.
    """
    from recsys.audio.framing import CentredFrames

    needs = check_needs(needs)
    block = max(1, round(audio_cfg.block_seconds * audio_cfg.sample_rate))
    n, sr, hop = stream.n_samples, audio_cfg.sample_rate, feature_cfg.hop_length
    times = stream.timeline(hop)
    if n <= max(block, WAVE_N_FFT, feature_cfg.n_fft):
        short = wave_features(torch.cat(list(stream.blocks)), needs, audio_cfg, feature_cfg)
        return SongFeatures(short.mel, short.pitch, times, short.speaker)
    blocks = iter(stream.blocks)
    head = next(blocks)
    device = head.device
    n_frames = frames_for(n, feature_cfg)
    mel = torch.empty(feature_cfg.n_mels, n_frames, device=device)
    mel_frames = CentredFrames(n, feature_cfg.n_fft, hop, max(1, block // hop))
    transform = _mel_transform(feature_cfg, sr, center=False).to(device)

    def put_mel(segments) -> None:
        for seg in segments:
            mel[:, seg.first : seg.first + seg.n_frames] = torch.log(transform(seg.samples) + feature_cfg.log_floor)

    parts = [(mel_frames, put_mel)]
    pitch = None
    if "pitch" in needs:
        pitch = torch.empty(N_PITCH, n_frames, device=device)
        pitch_hop = hop * PITCH_STRIDE
        pitch_frames = CentredFrames(n, WAVE_N_FFT, pitch_hop, max(1, block // pitch_hop))

        def put_pitch(segments) -> None:
            for seg in segments:
                lo, hi = seg.first * PITCH_STRIDE, min((seg.first + seg.n_frames) * PITCH_STRIDE, n_frames)
                held = wave_pitch_frames(seg.samples, sr, hop, PITCH_STRIDE).repeat_interleave(PITCH_STRIDE, dim=-1)
                pitch[:, lo:hi] = held[:, : hi - lo]

        parts.append((pitch_frames, put_pitch))
    speaker = None
    if "speaker" in needs:  # only the chosen partials' samples are kept (recsys.speaker.StreamPartials)
        from recsys.speaker import StreamPartials

        speaker = StreamPartials(sr, n, feature_cfg.speaker_partials, device)
    for wave in itertools.chain([head], blocks):
        for piece in wave.split(block):
            for frames, put in parts:
                put(frames.push(piece))
            if speaker is not None:
                speaker.push(piece)
    for frames, put in parts:
        put(frames.finish())
    return SongFeatures(mel, pitch, times, None if speaker is None else speaker.finish())
