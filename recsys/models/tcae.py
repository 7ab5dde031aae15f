"""TCAE: temporal convolutional autoencoder over log-mel frames, the learned melody model.

    log-mel (B, n_mels, T)
      -> front end (fixed, per frame): normalised log-mel and/or pitch salience
         (or, key-invariant, the interval profile of recsys.pitch.relative_chroma)  (B, C_in, T)
      -> encoder: 1x1 -> n_blocks x n_layers gated residual causal convs, dilations 1, 2, 4, ...
         -> skip sum -> 1x1 bottleneck                                               (B, latent_dim, T)
      -> decoder: the same kind of stack, shallower -> 1x1                           (B, C_in, T)

Every layer is causal, so: songs of any length batch by right padding plus a
mask with exact results on the real frames; a long song is encoded chunk by
chunk (:meth:`TCAE.encode_chunk`) carrying each layer's last inputs, equal to
encoding it whole. A song vector pools the latents over valid frames (mean and
std, L2-normalised; :func:`masked_pool`); frame latents stay available for melody
matching.

The config's `pool` also names the learning-free interval-lag descriptors
(PROFILE_POOLS), which read no latents: recsys.encoders.IntervalLagMelody computes
them, and recsys.encoders.melody_encoder picks it or the latent pooling from `pool`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys import pitch
from recsys.config import FeatureConfig, MelodyConfig
from recsys.modules.conv import GatedResidualBlock, receptive_field

INPUTS = ("mel", "pitch", "mel+pitch")
LATENT_POOLS = ("stats", "stats+lag")  # song vectors pooled from the latents
PROFILE_POOLS = ("interval-lag", "voiced-interval-lag")  # chroma profiles, no latents (recsys.encoders)
POOLS = LATENT_POOLS + PROFILE_POOLS
PITCH_SOURCES = ("waveform", "mel")
EPS = 1e-5


@dataclass(frozen=True)
class TCAEConfig:
    """Model dimensions, saved in the checkpoint and rebuilt from it."""

    # Features the model was built for (the pitch front end depends on the mel filterbank).
    n_mels: int = 48
    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float | None = None
    # What the encoder sees: 'mel' | 'pitch' | 'mel+pitch'; key_invariant swaps pitch for intervals.
    input: str = "mel"
    key_invariant: bool = False
    context_frames: int = 125  # interval context for key_invariant (125 x 16 ms = 2 s)
    channels: int = 64
    latent_dim: int = 16
    kernel_size: int = 3
    n_layers: int = 8  # dilations 1, 2, ..., 2**(n_layers-1) per block
    n_blocks: int = 1
    decoder_layers: int = 4
    # Song vector: 'stats' = mean and std of latents; 'stats+lag' adds their autocorrelation at
    # n_lags lags spaced geometrically up to max_lag_frames (rhythm and phrase structure);
    # 'interval-lag' = recsys.pitch.interval_lag_profile of the harmonic-sum chroma at those lags
    # (key- and timbre-invariant, no latents); 'voiced-interval-lag' = the same over near-hard pitch
    # classes of a 1/3-semitone harmonic sum, loud (voiced) frames weighted up
    # (recsys.pitch.voiced_interval_lag_profile; the default, compared in docs/melody.md).
    # The two profiles are computed by recsys.encoders.IntervalLagMelody.
    pool: str = "voiced-interval-lag"
    n_lags: int = 24
    max_lag_frames: int = 256  # 256 x 16 ms = 4.1 s
    # Where 'voiced-interval-lag' reads pitch: 'waveform' = recsys.pitch.wave_pitch of the voiced audio,
    # passed beside the mel (a 1024-point STFT resolves every harmonic, which 48 mel bands cannot);
    # 'mel' = the harmonic sum of the log-mel itself (what checkpoints saved before the option used).
    pitch_source: str = "waveform"
    # Whether 'voiced-interval-lag' keeps the same-pitch-class interval (held notes look alike in
    # every song; checkpoints saved before the option kept it).
    unison: bool = False
    # Whether each lag of 'voiced-interval-lag' pools the frame lags of its band (recsys.pitch.lag_bands,
    # about +-11 %): tolerance to tempo changes.
    lag_bands: bool = True

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"melody input {self.input!r} is not one of {', '.join(INPUTS)}")
        if self.key_invariant and self.input == "mel":
            raise ValueError(
                "melody key_invariant needs a pitch representation: set input to 'pitch' or 'mel+pitch'"
            )
        for name in ("channels", "latent_dim", "n_layers", "n_blocks", "decoder_layers", "context_frames",
                     "n_lags", "max_lag_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"TCAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pool not in POOLS:
            raise ValueError(f"melody pool {self.pool!r} is not one of {', '.join(POOLS)}")
        if self.pitch_source not in PITCH_SOURCES:
            raise ValueError(f"melody pitch_source {self.pitch_source!r} is not one of {', '.join(PITCH_SOURCES)}")
        if self.kernel_size < 2:
            raise ValueError(f"TCAEConfig.kernel_size must be >= 2, got {self.kernel_size}")

    @classmethod
    def from_settings(cls, melody: MelodyConfig, features: FeatureConfig, sample_rate: int) -> TCAEConfig:
        return cls(
            n_mels=features.n_mels,
            sample_rate=sample_rate,
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            f_min=features.f_min,
            f_max=features.f_max,
            input=melody.input,
            key_invariant=melody.key_invariant,
            context_frames=max(1, round(2.0 * sample_rate / features.hop_length)),
            channels=melody.channels,
            latent_dim=melody.latent_dim,
            kernel_size=melody.kernel_size,
            n_layers=melody.n_layers,
            n_blocks=melody.n_blocks,
            n_lags=30,  # 26 distinct lags
            max_lag_frames=max(1, round(8.0 * sample_rate / features.hop_length)),  # 8 s: phrases, not notes
            pool=melody.pool,
            pitch_source=melody.pitch_source,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TCAEConfig:
        data = {"pitch_source": "mel", "unison": True, "lag_bands": False, **data}  # saved before these options
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"TCAE config is missing {sorted(missing)}; got keys {sorted(data)}")
        return cls(**{k: data[k] for k in names})

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(
            n_fft=self.n_fft, win_length=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
            f_min=self.f_min, f_max=self.f_max,
        )

    @property
    def lags(self) -> list[int]:
        """Distinct lags in frames, geometric from 1 to max_lag_frames."""
        return pitch.geometric_lags(self.n_lags, self.max_lag_frames)

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.n_layers)] * self.n_blocks


def _frame_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T) -> (B, C, T) standardised over C within each frame (loudness and offset removed)."""
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True, unbiased=False) + EPS)


class FrontEnd(nn.Module):
    """Fixed per-frame features: (B, n_mels, T) log-mel -> (B, C_in, T); no trainable weights."""

    def __init__(self, cfg: TCAEConfig):
        super().__init__()
        self.cfg = cfg
        self.use_mel = cfg.input in ("mel", "mel+pitch")
        self.use_pitch = cfg.input in ("pitch", "mel+pitch")
        self.register_buffer("harmonics", pitch.harmonic_matrix(cfg.feature_config(), cfg.sample_rate))
        self.context_pad = cfg.context_frames - 1  # frames of chroma history carried between chunks

    @property
    def out_channels(self) -> int:
        n_pitch = pitch.N_CHROMA if self.cfg.key_invariant else pitch.N_PITCH
        return self.use_mel * self.cfg.n_mels + self.use_pitch * n_pitch

    def forward(self, mel: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, t) -> (B, C_in, t) and the context cache for the next chunk."""
        parts = []
        if self.use_mel:
            parts.append(_frame_norm(mel))
        if self.use_pitch:
            sal = pitch.pitch_salience(mel, self.harmonics)  # (B, N_PITCH, t)
            if self.cfg.key_invariant:
                p = pitch.chroma_distribution(pitch.fold_chroma(sal))  # (B, 12, t)
                q, cache = self._context(p, cache)
                sal = pitch.circular_correlation(p, q)  # (B, 12, t)
            parts.append(_frame_norm(sal))
        return torch.cat(parts, dim=1), cache

    def _context(self, p: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal moving mean of chroma distributions: (B, 12, t), cache (B, 12, W-1) -> (B, 12, t), cache.

        Zero history before the song starts; dividing by the window's total mass
        turns the moving sum into the mean over the frames seen so far.
        """
        if cache is None:
            cache = p.new_zeros(p.shape[0], pitch.N_CHROMA, self.context_pad)
        full = torch.cat([cache, p], dim=-1)  # (B, 12, W-1+t)
        ones = full.new_ones(pitch.N_CHROMA, 1, self.context_pad + 1)
        moving = F.conv1d(full, ones, groups=pitch.N_CHROMA)  # (B, 12, t) depthwise moving sum
        q = moving / moving.sum(1, keepdim=True).clamp_min(EPS)
        return q, full[..., full.shape[-1] - self.context_pad :]


class _Stack(nn.Module):
    """1x1 in -> gated residual causal blocks -> ReLU(skip sum) -> 1x1 out: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, channels: int, c_out: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.inp = nn.Conv1d(c_in, channels, 1)
        self.blocks = nn.ModuleList(GatedResidualBlock(channels, kernel_size, d) for d in dilations)
        self.out = nn.Conv1d(channels, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        skips = 0
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        return self.out(F.relu(skips))

    def stream(self, x: torch.Tensor, caches: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.inp(x)
        skips, new = 0, []
        for block, cache in zip(self.blocks, caches):
            (x, skip), cache = block.stream(x, cache)
            skips = skips + skip
            new.append(cache)
        return self.out(F.relu(skips)), new


def _check_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match (batch, frames) {shape}")
    mask = mask.bool()
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("mask must mark a prefix of each row valid (right padding only); the model is causal")
    if not mask.any(1).all():
        raise ValueError("every row of the mask needs at least one valid frame")
    return mask


def masked_pool(z: torch.Tensor, mask: torch.Tensor, lags: list[int] | None = None) -> torch.Tensor:
    """(B, L, T) latents, (B, T) bool mask -> (B, 2L [+ L * len(lags)]) L2-normalised song vectors.

    [mean, std] over valid frames; with `lags`, also the autocorrelation of the
    per-song standardised latents at each lag, mean_t z(t) * z(t - lag) over
    pairs of valid frames: how the melody repeats and moves, whatever the mean
    spectrum. The two parts are normalised separately and weighted equally.
    """
    w = mask.unsqueeze(1).to(z.dtype)  # (B, 1, T)
    n = w.sum(-1).clamp_min(1.0)
    mean = (z * w).sum(-1) / n  # (B, L)
    std = ((((z - mean.unsqueeze(-1)) ** 2) * w).sum(-1) / n + EPS).sqrt()
    stats = F.normalize(torch.cat([mean, std], dim=1), dim=1)
    if not lags:
        return stats
    zn = (z - mean.unsqueeze(-1)) / std.unsqueeze(-1) * w  # (B, L, T), zero on padding
    acf = []
    for lag in lags:
        pairs = (w[..., lag:] * w[..., :-lag]).sum(-1).clamp_min(1.0) if lag < z.shape[-1] else n
        prod = (zn[..., lag:] * zn[..., :-lag]).sum(-1) if lag < z.shape[-1] else torch.zeros_like(mean)
        acf.append(prod / pairs)  # (B, L)
    lag_part = F.normalize(torch.cat(acf, dim=1), dim=1)
    return torch.cat([stats, lag_part], dim=1) / 2**0.5


class TCAE(nn.Module):
    """Melody autoencoder. Public: forward, reconstruction_loss, encode_frames, encode_chunk, pool_latents."""

    def __init__(self, cfg: TCAEConfig):
        super().__init__()
        self.cfg = cfg
        self.front = FrontEnd(cfg)
        c_in = self.front.out_channels
        self.encoder = _Stack(c_in, cfg.channels, cfg.latent_dim, cfg.kernel_size, cfg.dilations)
        self.decoder = _Stack(
            cfg.latent_dim, cfg.channels, c_in, cfg.kernel_size, [2**i for i in range(cfg.decoder_layers)]
        )

    # --- shapes and sizes -------------------------------------------------------------
    @property
    def latent_lags(self) -> list[int] | None:
        """The lags pool_latents adds autocorrelations at ('stats+lag'), else None (mean and std only)."""
        return self.cfg.lags if self.cfg.pool == "stats+lag" else None

    @property
    def pooled_dim(self) -> int:
        """Size of a song vector pooled from the latents (pool_latents)."""
        return (2 + len(self.latent_lags or [])) * self.cfg.latent_dim

    @property
    def receptive_field(self) -> int:
        """Mel frames one latent frame depends on (encoder convs; plus the interval context if key_invariant)."""
        rf = receptive_field(self.cfg.kernel_size, self.cfg.dilations)
        if self.cfg.key_invariant:
            rf += self.cfg.context_frames - 1
        return rf

    def summary(self, sample_rate: int | None = None, hop: int | None = None) -> str:
        sample_rate = sample_rate or self.cfg.sample_rate
        hop = hop or self.cfg.hop_length
        n_params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        c = self.cfg
        rf_s = self.receptive_field * hop / sample_rate
        pooling = "stats+lag" if self.latent_lags else "stats"
        lines = [
            f"TCAE input={c.input} key_invariant={c.key_invariant} in_channels={self.front.out_channels}",
            f"  encoder: {c.n_blocks} x {c.n_layers} gated causal convs, kernel {c.kernel_size}, "
            + f"dilations {c.dilations}, {c.channels} channels -> latent {c.latent_dim}",
            f"  decoder: {c.decoder_layers} gated causal convs -> {self.front.out_channels}",
            f"  receptive field: {self.receptive_field} frames = {rf_s:.2f} s (hop {hop} at {sample_rate} Hz)",
            f"  pooled latents: {self.pooled_dim} ({pooling}); song vector pool: {c.pool}; "
            + f"parameters: {n_params:,}",
        ]
        return "\n".join(lines)

    # --- training path ----------------------------------------------------------------
    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) -> target (B, C_in, T), reconstruction (B, C_in, T), latents (B, L, T)."""
        x, _ = self.front(mel)
        z = self.encoder(x)
        return x, self.decoder(z), z

    def reconstruction_loss(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error over valid frames only; (B, n_mels, T), (B, T) bool -> scalar."""
        target, recon, _ = self(mel)
        err = (recon - target).pow(2).mean(1)  # (B, T)
        if mask is None:
            return err.mean()
        mask = _check_mask(mask, tuple(err.shape)).to(err.dtype)
        return (err * mask).sum() / mask.sum()

    # --- inference --------------------------------------------------------------------
    def _check_mel(self, mel: torch.Tensor, batched: bool) -> torch.Tensor:
        want = 3 if batched else 2
        if mel.dim() != want or mel.shape[-2] != self.cfg.n_mels:
            shape = "(B, n_mels, T)" if batched else "(n_mels, T)"
            raise ValueError(f"expected log-mel {shape} with n_mels={self.cfg.n_mels}, got {tuple(mel.shape)}")
        return mel.to(self.front.harmonics.device, torch.float32)

    def init_state(self) -> list[torch.Tensor | None]:
        """Streaming state before the first chunk: one cache per causal layer (None = start of song)."""
        return [None] * (1 + len(self.encoder.blocks))

    @torch.no_grad()
    def encode_chunk(
        self, mel: torch.Tensor, state: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One chunk of a stream: (B, n_mels, t), state -> latents (B, L, t), next state."""
        x, front_cache = self.front(mel, state[0])
        z, caches = self.encoder.stream(x, state[1:])
        return z, [front_cache, *caches]

    @torch.no_grad()
    def encode_frames(self, mel: torch.Tensor, chunk_frames: int | None = 4096) -> torch.Tensor:
        """(n_mels, T) -> (T, latent_dim) frame latents, streamed in chunks so long songs stay in memory."""
        mel = self._check_mel(mel, batched=False).unsqueeze(0)
        if chunk_frames is None or mel.shape[-1] <= chunk_frames:
            x, _ = self.front(mel)
            return self.encoder(x)[0].T
        state, out = self.init_state(), []
        for chunk in torch.split(mel, chunk_frames, dim=-1):
            z, state = self.encode_chunk(chunk, state)
            out.append(z)
        return torch.cat(out, dim=-1)[0].T

    @torch.no_grad()
    def pool_latents(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_mels, T) right-padded log-mel, (B, T) bool mask of real frames -> (B, pooled_dim) unit vectors."""
        mel = self._check_mel(mel, batched=True)
        mask = (
            torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.bool)
            if mask is None
            else _check_mask(mask, (mel.shape[0], mel.shape[-1]))
        ).to(mel.device)
        x, _ = self.front(mel)
        return masked_pool(self.encoder(x), mask, self.latent_lags)

    @torch.no_grad()
    def pool_song(self, mel: torch.Tensor, chunk_frames: int | None = 4096) -> torch.Tensor:
        """(n_mels, T) log-mel of one song, any length -> (pooled_dim,) unit vector of its streamed latents."""
        z = self.encode_frames(mel, chunk_frames).T.unsqueeze(0)  # (1, L, T)
        return masked_pool(z, torch.ones(1, z.shape[-1], dtype=torch.bool, device=z.device), self.latent_lags)[0]
