"""The one encoder contract: a song's features -> a unit vector of a fixed size.

Every encoder declares the features it reads (`needs`, names from
recsys.features.FEATURES), takes a batch of recsys.features.SongFeatures and
returns (B, dim) float32 L2-normalised rows on its device, with no autograd
history. The embedder, the jobs and the studies hold encoders only through this
contract, so a learned model and a learning-free descriptor are interchangeable:

- :class:`TimbreSongEncoder`  the contrastive timbre model (recsys.models.timbre), all
  songs' chunks batched through it;
- :class:`SpeakerTimbreEncoder`  the contrastive back end over the pretrained speaker front
  end's partials (recsys.models.speaker_timbre; `timbre.front_end: speaker`);
- :class:`CombinedTimbreEncoder`  both, their vectors weighted and concatenated
  (`timbre.front_end: log-mel+speaker`);
- :class:`PitchTCAEMelody`  the pitch-equivariant TCAE (recsys.models.pitch_tcae): the
  interval-lag profile of the pitch its trained latents refine, the default melody vector;
- :class:`TCAEMelodyEncoder`  the per-frame TCAE's pooled latents (recsys.models.tcae);
- :class:`IntervalLagMelody`  the learning-free interval-lag descriptors (recsys.pitch),
  the baseline the equivariant TCAE starts from.

:func:`timbre_encoder` and :func:`melody_encoder` wrap a loaded model; a per-frame TCAE
whose config names a profile pool gives the descriptor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from recsys import pitch
from recsys.config import FeatureConfig, MelodyConfig
from recsys.features import SongFeatures
from recsys.models.melody import MelodyModel
from recsys.models.pitch_tcae import PitchTCAE
from recsys.models.speaker_timbre import CombinedTimbre, SpeakerBackEnd, pad_partials
from recsys.models.tcae import PITCH_SOURCES, PROFILE_POOLS, TCAE, TCAEConfig
from recsys.models.timbre import TimbreEncoder

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time

MAX_TIMBRE_CHUNKS_PER_PASS = 512  # chunks per timbre forward pass on a GPU (bounds GPU memory)
CPU_TIMBRE_CHUNKS_PER_PASS = 128  # on the CPU: as fast per chunk, and a quarter of the activations in memory
MEL = frozenset({"mel"})
MEL_AND_PITCH = frozenset({"mel", "pitch"})
SPEAKER = frozenset({"speaker"})


class SongEncoder(Protocol):
    """What every encoder offers: its needs, its size, and batched song vectors."""

    needs: frozenset[str]  # the SongFeatures fields it reads, e.g. {"mel"} or {"mel", "pitch"}

    @property
    def dim(self) -> int: ...

    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        """B songs -> (B, dim) float32 unit rows on the encoder's device, no grad."""
        ...

    def to(self, device: torch.device | str) -> SongEncoder: ...


def _check_songs(songs: Sequence[SongFeatures], needs: frozenset[str]) -> None:
    for song in songs:
        song.require(needs)


class _ModelEncoder:
    """What the learned encoders share: the model they wrap, its size and device, moving it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Self:
        """Moves the model (in place, as nn.Module.to does) and returns self."""
        self.model.to(device)
        return self


class TimbreSongEncoder(_ModelEncoder):
    """Timbre vectors: the normalised mean of a song's chunk embeddings (TimbreEncoder.chunk_song).

    All chunks of a batch go through the model in few forward passes (at most
    `chunks_per_pass` chunks each, grouped by chunk length): what makes a GPU pay
    off, and what bounds memory for long songs. In eval mode a chunk's embedding does not depend on its batch, so a song's
    vector is the same whichever songs share its batch.
    """

    needs = MEL

    def __init__(
        self,
        model: TimbreEncoder,
        max_chunks_per_pass: int | None = None,
        pitch_pool: Sequence[float] = (),
        feat_cfg: FeatureConfig | None = None,
        sample_rate: int | None = None,
        pitch_pool_chunks: str = "every",
    ) -> None:
        if max_chunks_per_pass is not None and max_chunks_per_pass < 1:
            raise ValueError(f"max_chunks_per_pass must be >= 1, got {max_chunks_per_pass}")
        if pitch_pool and (feat_cfg is None or sample_rate is None):
            raise ValueError("pitch_pool needs the features' config and sample rate (the mel bands it shifts)")
        if pitch_pool_chunks not in ("every", "rotate"):
            raise ValueError(f"pitch_pool_chunks must be 'every' or 'rotate', got {pitch_pool_chunks!r}")
        super().__init__(model)  # TimbreEncoder.embed runs it in eval mode, whatever its mode
        self.max_chunks_per_pass = max_chunks_per_pass  # None: by device (chunks_per_pass)
        self.pitch_pool = tuple(float(s) for s in pitch_pool)  # (): the plain vector
        self.pitch_pool_chunks = pitch_pool_chunks
        self.feat_cfg, self.sample_rate = feat_cfg, sample_rate

    @property
    def chunks_per_pass(self) -> int:
        """Chunks per forward pass: max_chunks_per_pass, else MAX_TIMBRE_CHUNKS_PER_PASS on a GPU
        and CPU_TIMBRE_CHUNKS_PER_PASS on the CPU."""
        if self.max_chunks_per_pass is not None:
            return self.max_chunks_per_pass
        return CPU_TIMBRE_CHUNKS_PER_PASS if self.device.type == "cpu" else MAX_TIMBRE_CHUNKS_PER_PASS

    @torch.no_grad()
    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        """B songs' (n_mels, T_i) log-mels -> (B, dim) unit rows on the model's device.

        Each pass copies only its own chunks out of the log-mels, so an hour-long song
        never has all its chunk copies in memory at once; the chunk embeddings
        (dim floats each) are kept and averaged per song.
        """
        _check_songs(songs, self.needs)
        if not songs:
            return torch.zeros(0, self.dim, device=self.device)
        if not self.pitch_pool:
            return self._embed(songs, (0.0,))
        if self.pitch_pool_chunks == "rotate":
            return self._embed(songs, _rotation(self.pitch_pool))
        # timbre.pitch_pool: the mean of the song's unit vectors at each shift, renormalised.
        return F.normalize(sum(self._embed(songs, (shift,)) for shift in self.pitch_pool), dim=-1)

    def _embed(self, songs: Sequence[SongFeatures], shifts: tuple[float, ...]) -> torch.Tensor:
        """The songs' unit vectors: the mean over max(n, len(shifts)) reads of a song's n chunks, read m
        being chunk m % n shifted by shifts[m % len(shifts)] semitones (0: as it is). So every shift is
        read at least once, and a song of n >= len(shifts) chunks costs n embeddings."""
        from recsys.augment import mel_pitch_shift

        # Which frames each read takes: TimbreEncoder.chunk_song applied to frame positions, the chunks of a
        # song shorter than the pool read again (a 15 s song has 3-5 chunks: rotating five shifts over them
        # left out the last ones, and the pooled vector leaned to one side).
        frames = [self.model.chunk_song(torch.arange(s.n_frames)[None])[:, 0] for s in songs]  # (n_i, F_i)
        frames = [f[torch.arange(max(len(f), len(shifts))) % len(f)] for f in frames]  # (reads_i, F_i)
        by_frames: dict[int, list[int]] = defaultdict(list)  # songs shorter than a chunk keep their length
        for i, f in enumerate(frames):
            by_frames[f.shape[-1]].append(i)
        z = [torch.empty(f.shape[0], self.dim, device=self.device) for f in frames]
        for idx in by_frames.values():
            for part in _passes([(i, frames[i].shape[0]) for i in idx], self.chunks_per_pass):
                batch = torch.cat([_chunks(songs[i].mel, frames[i][lo:hi]).to(self.device) for i, lo, hi in part])
                if any(shifts):
                    per_chunk = torch.tensor([shifts[j % len(shifts)] for _, lo, hi in part for j in range(lo, hi)])
                    batch = mel_pitch_shift(batch, per_chunk, self.feat_cfg, self.sample_rate)
                out = self.model.embed(batch)  # (sum hi - lo, dim)
                for (i, lo, hi), zi in zip(part, out.split([hi - lo for _, lo, hi in part])):
                    z[i][lo:hi] = zi
        return torch.stack([F.normalize(zi.mean(0), dim=-1) for zi in z])  # (B, dim)


class SpeakerTimbreEncoder(_ModelEncoder):
    """Timbre vectors from the speaker front end: each song's partials through the trained back end, one
    song a pass (a song's attention spans all its partials; padding other songs' would change nothing)."""

    needs = SPEAKER

    def __init__(self, model: SpeakerBackEnd) -> None:
        super().__init__(model.eval())

    @torch.no_grad()
    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        _check_songs(songs, self.needs)
        if not songs:
            return torch.zeros(0, self.dim, device=self.device)
        self.model.eval()
        return torch.cat([self.model(*pad_partials([s.speaker.float()], self.device)) for s in songs])


class CombinedTimbreEncoder:
    """[sqrt(1 - share) x the log-mel vector, sqrt(share) x the speaker vector]: a unit row whose cosine is the
    two cosines weighted by their shares."""

    def __init__(self, model: CombinedTimbre) -> None:
        self.model = model
        self.parts = (timbre_encoder(model.log_mel, model.log_mel_meta), SpeakerTimbreEncoder(model.speaker))
        self.weights = ((1.0 - model.share) ** 0.5, model.share ** 0.5)
        self.needs = frozenset().union(*(part.needs for part in self.parts))

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts)

    @property
    def device(self) -> torch.device:
        return self.parts[1].device

    def to(self, device: torch.device | str) -> CombinedTimbreEncoder:
        for part in self.parts:
            part.to(device)
        return self

    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        _check_songs(songs, self.needs)
        return torch.cat([w * part.embed_songs(songs) for w, part in zip(self.weights, self.parts)], dim=-1)


def _rotation(shifts: tuple[float, ...]) -> tuple[float, ...]:
    """The order chunks take the pool's shifts in (timbre.pitch_pool_chunks = 'rotate'): the smallest
    shifts first; a song of n chunks uses every shift about n / len(shifts) times, and at least once."""
    return tuple(sorted(shifts, key=lambda s: (abs(s), s)))


def _chunks(mel: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """(n_mels, T) log-mel, (n, F) frame positions -> (n, n_mels, F) chunks (a copy of those frames only)."""
    picked = mel.index_select(-1, frames.reshape(-1).to(mel.device))  # (n_mels, n * F)
    return picked.reshape(mel.shape[0], *frames.shape).transpose(0, 1)


def _passes(counts: list[tuple[int, int]], size: int) -> list[list[tuple[int, int, int]]]:
    """(song, n_chunks) in order -> passes of at most `size` chunks, each a list of (song, lo, hi) chunk ranges."""
    passes: list[list[tuple[int, int, int]]] = [[]]
    room = size
    for i, n in counts:
        lo = 0
        while lo < n:
            if room == 0:
                passes.append([])
                room = size
            hi = min(n, lo + room)
            passes[-1].append((i, lo, hi))
            room -= hi - lo
            lo = hi
    return [p for p in passes if p]


class TCAEMelodyEncoder(_ModelEncoder):
    """Melody vectors pooled from the TCAE's latents (mean and std, plus lag autocorrelations
    for pool 'stats+lag'); each song streamed through the encoder in chunks of `chunk_frames`."""

    needs = MEL

    def __init__(self, model: TCAE, chunk_frames: int | None = 4096) -> None:
        super().__init__(model)  # no layer of the TCAE depends on train / eval mode
        self.chunk_frames = chunk_frames

    @property
    def dim(self) -> int:
        return self.model.pooled_dim

    @torch.no_grad()
    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        _check_songs(songs, self.needs)
        if not songs:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.stack([self.model.pool_song(s.mel, self.chunk_frames) for s in songs])


class PitchTCAEMelody(_ModelEncoder):
    """Melody vectors of the pitch-equivariant TCAE: each song's waveform pitch refined by the
    model (streamed `chunk_frames` frames at a time, causal state carried), then its voiced
    interval-lag profile (PitchTCAE.song_vector). Depends on the trained weights; an untrained
    model gives the descriptor."""

    needs = MEL_AND_PITCH

    def __init__(self, model: PitchTCAE, chunk_frames: int | None = 4096) -> None:
        super().__init__(model)  # no layer depends on train / eval mode
        self.chunk_frames = chunk_frames

    @torch.no_grad()
    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        _check_songs(songs, self.needs)
        if not songs:
            return torch.zeros(0, self.dim, device=self.device)
        out = []
        for song in songs:
            salience, weight = melody_timeline(song, self.device)
            out.append(self.model.song_vector(self.model.refine(salience, self.chunk_frames), weight))
        return torch.stack(out).float()


def melody_timeline(song: SongFeatures, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A song's waveform pitch (N_PITCH, T') and voicing weight (T',) on its own timeline: where the
    clean-up cut silence (SongFeatures.times), the salience's floor and weight 0, so rests keep their length."""
    assert song.pitch is not None
    salience = song.pitch.to(device, torch.float32)
    weight = pitch.voicing_weight(song.mel.to(device, torch.float32))
    return song.on_timeline(salience, float(salience.min())), song.on_timeline(weight, 0.0)


@dataclass(frozen=True)
class IntervalLagConfig:
    """What the interval-lag descriptors depend on: the TCAEConfig fields they read."""

    lags: tuple[int, ...]  # distinct lags in frames, increasing
    pool: str = "voiced-interval-lag"  # one of PROFILE_POOLS
    unison: bool = False  # 'voiced-interval-lag': keep the same-pitch-class interval
    lag_bands: bool = True  # 'voiced-interval-lag': each lag pools the frame lags of its band
    pitch_source: str = "waveform"  # 'voiced-interval-lag': 'waveform' (SongFeatures.pitch) or 'mel'
    smooth_frames: int = pitch.SMOOTH_FRAMES  # 'voiced-interval-lag': the chroma's moving mean, in frames
    # The log-mel the harmonic sums are built for.
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.pool not in PROFILE_POOLS:
            raise ValueError(f"interval-lag pool {self.pool!r} is not one of {', '.join(PROFILE_POOLS)}")
        if self.pitch_source not in PITCH_SOURCES:
            raise ValueError(f"pitch_source {self.pitch_source!r} is not one of {', '.join(PITCH_SOURCES)}")
        lags = list(self.lags)
        if not lags or lags != sorted(set(lags)) or lags[0] < 1:
            raise ValueError(f"lags must be distinct increasing frame counts >= 1, got {lags}")

    @classmethod
    def from_tcae(cls, cfg: TCAEConfig) -> IntervalLagConfig:
        """The descriptor a TCAE config with a profile pool names."""
        return cls(
            lags=tuple(cfg.lags), pool=cfg.pool, unison=cfg.unison, lag_bands=cfg.lag_bands,
            pitch_source=cfg.pitch_source, features=cfg.feature_config(), sample_rate=cfg.sample_rate,
        )

    @classmethod
    def from_settings(
        cls, melody: MelodyConfig, features: FeatureConfig, sample_rate: int
    ) -> IntervalLagConfig:
        """The descriptor the melody settings name (their pool must be a profile pool)."""
        return cls.from_tcae(TCAEConfig.from_settings(melody, features, sample_rate))

    @property
    def reads_wave_pitch(self) -> bool:
        return self.pool == "voiced-interval-lag" and self.pitch_source == "waveform"


class IntervalLagMelody:
    """The learning-free melody descriptor: interval x lag statistics of the sung pitch classes.

    'voiced-interval-lag' (the default): near-hard pitch classes of a 1/3-semitone
    harmonic sum, from the waveform pitch (SongFeatures.pitch) or the log-mel, with
    loud frames weighted up (recsys.pitch.voiced_interval_lag_profile).
    'interval-lag': the same statistics of the 1-semitone harmonic-sum chroma of the
    log-mel (recsys.pitch.interval_lag_profile). Both are key- and timbre-invariant.

    `harmonics`: the (N_PITCH, n_mels) matrix 'interval-lag' reads; by default built
    from the config (a TCAE checkpoint carries its own, which melody_encoder passes on).
    """

    def __init__(self, cfg: IntervalLagConfig, harmonics: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.needs = MEL_AND_PITCH if cfg.reads_wave_pitch else MEL
        if harmonics is None:
            harmonics = pitch.harmonic_matrix(cfg.features, cfg.sample_rate)
        self.harmonics = harmonics.detach().clone()  # (N_PITCH, n_mels)
        self.fine_harmonics = pitch.harmonic_matrix(  # (N_PITCH * FINE_BINS, n_mels)
            cfg.features, cfg.sample_rate, bins_per_semitone=pitch.FINE_BINS
        )

    @property
    def dim(self) -> int:
        drops_unison = self.cfg.pool == "voiced-interval-lag" and not self.cfg.unison
        return (pitch.N_CHROMA - 1 if drops_unison else pitch.N_CHROMA) * len(self.cfg.lags)

    @property
    def device(self) -> torch.device:
        return self.harmonics.device

    def to(self, device: torch.device | str) -> IntervalLagMelody:
        """Moves the harmonic matrices (in place) and returns self."""
        self.harmonics = self.harmonics.to(device)
        self.fine_harmonics = self.fine_harmonics.to(device)
        return self

    @torch.no_grad()
    def embed_songs(self, songs: Sequence[SongFeatures]) -> torch.Tensor:
        _check_songs(songs, self.needs)
        if not songs:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.stack([self._profile(song) for song in songs])

    def _profile(self, song: SongFeatures) -> torch.Tensor:
        """One song -> (dim,) unit interval x lag profile."""
        n_mels = self.cfg.features.n_mels
        if song.mel.shape[0] != n_mels:
            raise ValueError(
                f"expected log-mel (n_mels, T) with n_mels={n_mels}, got {tuple(song.mel.shape)}"
            )
        mel = song.mel.to(self.device, torch.float32)
        lags = list(self.cfg.lags)
        if self.cfg.pool == "interval-lag":
            chroma = pitch.map_frames(  # (12, T), per frame: in blocks of frames
                lambda m: pitch.fold_chroma(pitch.pitch_salience(m, self.harmonics)), mel
            )
            return pitch.interval_lag_profile(chroma, lags)
        if self.cfg.reads_wave_pitch:  # the song's own timeline, rests kept: as the equivariant TCAE reads it
            salience, weight = melody_timeline(song, self.device)
        else:
            salience, weight = pitch.fine_semitone_salience(mel, self.fine_harmonics), pitch.voicing_weight(mel)
        chroma = pitch.voiced_chroma(salience, self.cfg.smooth_frames)
        return pitch.voiced_interval_lag_profile(chroma, weight, lags, self.cfg.unison, self.cfg.lag_bands)


def timbre_encoder(model: TimbreEncoder | SpeakerBackEnd | CombinedTimbre, meta: dict | None = None
                   ) -> TimbreSongEncoder | SpeakerTimbreEncoder | CombinedTimbreEncoder:
    """A loaded timbre model behind the encoder contract; `meta`, its version's recorded config, says
    whether its vector is pooled over pitch (training.pitch_pool) and the mel bands to shift."""
    if isinstance(model, SpeakerBackEnd):
        return SpeakerTimbreEncoder(model)
    if isinstance(model, CombinedTimbre):
        return CombinedTimbreEncoder(model)
    training = (meta or {}).get("training", {})
    shifts = tuple(training.get("pitch_pool", ()))
    if not shifts:
        return TimbreSongEncoder(model)
    return TimbreSongEncoder(model, pitch_pool=shifts, feat_cfg=FeatureConfig(**meta["features"]),
                             sample_rate=int(meta["sample_rate"]),
                             pitch_pool_chunks=training.get("pitch_pool_chunks", "every"))  # older models: every


def melody_encoder(tcae: MelodyModel) -> PitchTCAEMelody | TCAEMelodyEncoder | IntervalLagMelody:
    """A loaded melody model behind the encoder contract: the pitch-equivariant TCAE's refined-pitch
    profile (the default model); for a per-frame TCAE, the interval-lag descriptor when its config's
    pool is a profile pool, else its pooled latents."""
    if isinstance(tcae, PitchTCAE):
        return PitchTCAEMelody(tcae)
    if tcae.cfg.pool in PROFILE_POOLS:
        harmonics = tcae.front.harmonics
        return IntervalLagMelody(IntervalLagConfig.from_tcae(tcae.cfg), harmonics).to(harmonics.device)
    return TCAEMelodyEncoder(tcae)
