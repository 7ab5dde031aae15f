"""The pitch-equivariant TCAE: the melody model whose trained latents give the song's melody vector.

    waveform pitch salience (N_PITCH semitones, T frames; recsys.pitch.wave_pitch)
      -> every `frame_stride`-th frame (the salience is computed at that rate and held between)
      -> standardised over the song, one channel                                  (B, 1, P, t)
      -> 1x1-in-time conv, then n_layers gated residual 2-D convs: pitch_kernel
         semitones x time_kernel frames, dilated 1, 2, 4, ... in time and causal in
         time, weights shared along the pitch axis                                 (B, C, P, t)
      -> latent map: ReLU(skip sum)                                                (B, C, P, t)
      -> refined salience = input + a 1x1 residual of the latents (its weights start at 0)
         decoder: a 1x1 conv that reconstructs the standardised input from the latents
    song vector = recsys.pitch.voiced_interval_lag_profile of recsys.pitch.voiced_chroma of
    the refined salience: interval x lag statistics of the pitch classes the latents sing.

Why this shape (docs/melody.md): a melody vector must be key-invariant and tempo
tolerant. Convolutions shared along the pitch axis move with a transposition, so a
key change moves the refined salience alike and the interval profile over it stays
put; training can change what the profile is computed from, never its structure.
The residual starts at zero, so an untrained model gives exactly the learning-free
descriptor (recsys.encoders.IntervalLagMelody), and training (recsys.training.melody)
moves it from there with a contrastive loss on song vectors beside the reconstruction.

Every layer is causal in time, so a song of any length is refined chunk by chunk
(:meth:`PitchTCAE.refine`, chunks of `chunk_frames` with each layer's last inputs
carried), equal to refining it whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys import pitch

ARCH = "pitch-equivariant"  # what a checkpoint's config says; recsys.models.restore dispatches on it
EPS = 1e-5
# Activations and weights channels-last: oneDNN's backward pass of these 8-channel convolutions is 5x faster
# so (a training step 1.4x; docs/benchmarks.md); the values are the same up to float rounding.
LAYOUT = torch.channels_last


@dataclass(frozen=True)
class PitchTCAEConfig:
    """Model dimensions and song-vector settings, saved in the checkpoint and rebuilt from it."""

    arch: str = ARCH
    sample_rate: int = 16000
    hop_length: int = 256
    channels: int = 8
    n_layers: int = 6  # time dilations 1, 2, ..., 2**(n_layers-1)
    pitch_kernel: int = 3  # semitones
    time_kernel: int = 3  # frames (at the model's rate: every frame_stride-th log-mel frame)
    frame_stride: int = pitch.PITCH_STRIDE  # 32 ms, the rate the waveform pitch is computed at (docs/melody.md)
    # The song vector: voiced interval-lag profile at geometric lags up to max_lag_frames (log-mel frames).
    n_lags: int = 30
    max_lag_frames: int = 500
    unison: bool = False
    lag_bands: bool = True
    smooth_frames: int = pitch.SMOOTH_FRAMES  # the chroma's moving mean (log-mel frames): a vibrato cycle

    def __post_init__(self) -> None:
        if self.arch != ARCH:
            raise ValueError(f"PitchTCAEConfig.arch must be {ARCH!r}, got {self.arch!r}")
        for name in ("channels", "n_layers", "frame_stride", "n_lags", "max_lag_frames", "smooth_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"PitchTCAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pitch_kernel < 1 or self.pitch_kernel % 2 == 0:
            raise ValueError(f"PitchTCAEConfig.pitch_kernel must be odd and >= 1, got {self.pitch_kernel}")
        if self.time_kernel < 2:
            raise ValueError(f"PitchTCAEConfig.time_kernel must be >= 2, got {self.time_kernel}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PitchTCAEConfig:
        names = {f.name for f in fields(cls)}
        # Saved before the chroma smoothing was a field: those models (and their catalogs' vectors) read 3 frames.
        data = {"smooth_frames": pitch.LEGACY_SMOOTH_FRAMES, **data}
        missing = names - set(data)
        if missing:
            raise ValueError(f"pitch TCAE config is missing {sorted(missing)}; got keys {sorted(data)}")
        return cls(**{k: data[k] for k in names})

    @property
    def lags(self) -> list[int]:
        """Distinct lags in log-mel frames, geometric from 1 to max_lag_frames."""
        return pitch.geometric_lags(self.n_lags, self.max_lag_frames)

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.n_layers)]

    @property
    def vector_dim(self) -> int:
        return (pitch.N_CHROMA - (0 if self.unison else 1)) * len(self.lags)


class _GatedLayer(nn.Module):
    """tanh(filter) * sigmoid(gate), 2-D, causal in time by left padding: (B, C, P, t + pad) -> (B, C, P, t)."""

    def __init__(self, channels: int, pitch_kernel: int, time_kernel: int, dilation: int) -> None:
        super().__init__()
        self.pad = (time_kernel - 1) * dilation  # frames of history the layer reads
        self.conv = nn.Conv2d(channels, 2 * channels, (pitch_kernel, time_kernel),
                              padding=(pitch_kernel // 2, 0), dilation=(1, dilation))
        # tanh(f) = 2 sigmoid(2 f) - 1: the filter half's pre-activations doubled, so one sigmoid over the whole
        # (dense) conv output serves both halves. Not saved: checkpoints hold the plain conv.
        scale = torch.cat([torch.full((channels,), 2.0), torch.ones(channels)])
        self.register_buffer("half_scale", scale, persistent=False)

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        # On the CPU, tanh costs 6x a sigmoid, and a channels-last tensor's halves are strided (the activations
        # ran 8x slower on them than on dense copies): one sigmoid over the dense output, then a single
        # fused multiply-add on the halves (a 3-minute song's latents 1.6x faster; docs/benchmarks.md).
        conv = self.conv
        s = torch.sigmoid(F.conv2d(padded, conv.weight * self.half_scale[:, None, None, None],
                                   conv.bias * self.half_scale, padding=conv.padding, dilation=conv.dilation))
        sf, sg = s.chunk(2, dim=1)
        return torch.addcmul(-sg, sf, sg, value=2.0)  # (2 sf - 1) * sg = tanh(f) * sigmoid(g)


class PitchTCAE(nn.Module):
    """Pitch-equivariant causal autoencoder. Public: forward, refine, song_vector, init_state, encode_chunk."""

    def __init__(self, cfg: PitchTCAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Conv2d(1, cfg.channels, (cfg.pitch_kernel, 1), padding=(cfg.pitch_kernel // 2, 0))
        self.layers = nn.ModuleList(
            _GatedLayer(cfg.channels, cfg.pitch_kernel, cfg.time_kernel, d) for d in cfg.dilations
        )
        self.residual = nn.Conv2d(cfg.channels, 1, 1)
        nn.init.zeros_(self.residual.weight)  # untrained: refined == input, the descriptor exactly
        nn.init.zeros_(self.residual.bias)
        self.decoder = nn.Conv2d(cfg.channels, 1, 1)
        self.to(memory_format=LAYOUT)

    @property
    def device(self) -> torch.device:
        return self.inp.weight.device

    @property
    def dim(self) -> int:
        return self.cfg.vector_dim

    @property
    def receptive_field(self) -> int:
        """Log-mel frames one latent frame depends on."""
        return (1 + sum(layer.pad for layer in self.layers)) * self.cfg.frame_stride

    def summary(self) -> str:
        c = self.cfg
        n_params = sum(p.numel() for p in self.parameters())
        seconds = self.receptive_field * c.hop_length / c.sample_rate
        return "\n".join([
            f"pitch-equivariant TCAE: {pitch.N_PITCH} semitones x every {c.frame_stride} frames",
            (f"  {c.n_layers} gated causal 2-D convs, {c.pitch_kernel} semitones x {c.time_kernel} frames, "
             f"dilations {c.dilations}, {c.channels} channels, weights shared along pitch"),
            f"  receptive field: {self.receptive_field} frames = {seconds:.2f} s; parameters: {n_params:,}",
            (f"  song vector: voiced interval-lag profile of the refined salience, {self.dim} values "
             f"({len(c.lags)} lags to {c.max_lag_frames} frames)"),
        ])

    # --- normalisation and the stack --------------------------------------------------
    @staticmethod
    def song_stats(salience: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, T) salience -> per-song mean and std (B, 1, 1): the standardisation every chunk shares."""
        return salience.mean((1, 2), keepdim=True), salience.std((1, 2), keepdim=True) + EPS

    def init_state(self) -> list[torch.Tensor | None]:
        """Streaming state before the first chunk: one cache per causal layer (None = start of song)."""
        return [None] * len(self.layers)

    def _stack(
        self, x: torch.Tensor, state: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, P, t) standardised, subsampled salience, state -> latents (B, C, P, t), next state."""
        h = self.inp(x[:, None]).contiguous(memory_format=LAYOUT)
        skips: torch.Tensor | float = 0.0
        new_state = []
        for layer, cache in zip(self.layers, state):
            # Start of the song: silence before it. F.pad keeps the channels-last layout, where a cat with a
            # plain zeros tensor would hand the convolution a plain one to convert back.
            padded = F.pad(h, (layer.pad, 0)) if cache is None else torch.cat([cache, h], dim=-1)
            new_state.append(padded[..., padded.shape[-1] - layer.pad :].contiguous(memory_format=LAYOUT))
            z = layer(padded)
            h = h + z  # h is also the next layer's input, and `padded` a copy of it: a new tensor
            skips = z if isinstance(skips, float) else skips.add_(z)  # nothing saves z or the sum for backward
        return F.relu(skips), new_state

    def _upsample(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(..., t) at the model's rate -> (..., n_frames) log-mel frames, each value held for frame_stride frames."""
        return x.repeat_interleave(self.cfg.frame_stride, dim=-1)[..., :n_frames]

    # --- training path ----------------------------------------------------------------
    def forward(self, salience: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, P, T) salience on log-mel frames -> refined (B, P, T), reconstruction and its target (B, P, t)."""
        self._check(salience, batched=True)
        mean, std = self.song_stats(salience)
        x = (salience[..., :: self.cfg.frame_stride] - mean) / std
        z, _ = self._stack(x, self.init_state())
        refined = salience + self._upsample(self.residual(z)[:, 0], salience.shape[-1])
        return refined, self.decoder(z)[:, 0], x

    def song_vector(self, refined: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(P, T) refined salience, (T,) voicing weight -> (dim,) unit melody vector (differentiable)."""
        c = self.cfg
        chroma = pitch.voiced_chroma(refined, c.smooth_frames)
        return pitch.voiced_interval_lag_profile(chroma, weight, c.lags, c.unison, c.lag_bands)

    # --- inference --------------------------------------------------------------------
    @torch.no_grad()
    def encode_chunk(
        self, x: torch.Tensor, state: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One chunk of a stream: (B, P, t) standardised model-rate salience, state -> latents (B, C, P, t), state."""
        return self._stack(x, state)

    @torch.no_grad()
    def refine(self, salience: torch.Tensor, chunk_frames: int | None = 4096) -> torch.Tensor:
        """(P, T) salience of one song, any length -> (P, T) refined salience, streamed `chunk_frames`
        log-mel frames at a time (equal to the whole song at once)."""
        sal = self._check(salience, batched=False)[None]
        mean, std = self.song_stats(sal)
        x = (sal[..., :: self.cfg.frame_stride] - mean) / std
        step = None if chunk_frames is None else max(1, chunk_frames // self.cfg.frame_stride)
        state, out = self.init_state(), []
        for chunk in [x] if step is None else torch.split(x, step, dim=-1):
            z, state = self.encode_chunk(chunk, state)
            out.append(self.residual(z)[:, 0])
        return (sal + self._upsample(torch.cat(out, dim=-1), sal.shape[-1]))[0]

    def _check(self, salience: torch.Tensor, batched: bool) -> torch.Tensor:
        want = 3 if batched else 2
        if salience.dim() != want or salience.shape[-2] != pitch.N_PITCH:
            shape = "(B, N_PITCH, T)" if batched else "(N_PITCH, T)"
            raise ValueError(f"expected waveform pitch salience {shape} with N_PITCH={pitch.N_PITCH}, "
                             f"got {tuple(salience.shape)}")
        return salience.to(self.device, torch.float32)
