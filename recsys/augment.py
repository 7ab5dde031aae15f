"""Augmentations for contrastive training, and the pair policies that give each one a role.

Two implementations of pitch shift and time stretch, both torchaudio / plain torch
(Apache-2.0 compatible; Rubber Band / pedalboard are GPL-3 and not used):

* waveform (`pitch_shift_wave`, `time_stretch_wave`): phase vocoder on the complex
  STFT, pitch shift = stretch by 1/ratio then resample by ratio. The reference.
* log-mel (`mel_pitch_shift`, `mel_time_stretch`): pitch shift = warp of the mel
  frequency axis by the frequency ratio; time stretch = linear interpolation of the
  frames. The trainer uses these: SongFeatures carry log-mel only, and they run
  ~1000x faster than the waveform path (figures in docs/augmentation.md).

Pair policies: every augmentation has a role, `positive` (the encoder should ignore
it: an augmented view is pulled towards the original), `negative` (the augmented
copy counts as another voice) or `off`, and a range of magnitudes:

* pitch shift: |semitones| drawn uniformly in [low, high], sign random;
* time stretch: rate = f or 1/f with f log-uniform in [low, high] (low >= 1), so
  (1.1, 1.25) means rates 0.8..0.91 or 1.1..1.25, never ~1.

A negative augmentation must exclude "no change" (pitch low > 0, stretch low > 1).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as nnf
import torchaudio.functional as AF

from recsys.config import AugmentPolicy, FeatureConfig, TimbreConfig

# --- waveform (reference) -------------------------------------------------------------

WAVE_N_FFT = 512  # 32 ms at 16 kHz: resolves singing harmonics (> 80 Hz) well enough
WAVE_HOP = 128  # 75 % overlap, the usual phase-vocoder choice
RESAMPLE_STEP_HZ = 20  # pitch-shift resampling rates are rounded to this (<= 0.02 semitone at 16 kHz)


def time_stretch_wave(
    wave: torch.Tensor, rate: float, n_fft: int = WAVE_N_FFT, hop_length: int = WAVE_HOP
) -> torch.Tensor:
    """(..., N) -> (..., round(N / rate)): phase-vocoder time stretch, pitch unchanged.

    rate > 1 plays faster (shorter), rate < 1 slower (longer).
    """
    if rate <= 0:
        raise ValueError(f"time-stretch rate must be > 0, got {rate}")
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length, window=window, return_complex=True)  # (..., F, frames)
    phase_advance = torch.linspace(0, math.pi * hop_length, n_fft // 2 + 1, device=wave.device)[:, None]
    stretched = AF.phase_vocoder(spec, rate, phase_advance)
    length = round(wave.shape[-1] / rate)
    return torch.istft(stretched, n_fft, hop_length, window=window, length=length)


def pitch_shift_wave(
    wave: torch.Tensor,
    sample_rate: int,
    semitones: float,
    n_fft: int = WAVE_N_FFT,
    hop_length: int = WAVE_HOP,
) -> torch.Tensor:
    """(..., N) -> (..., N): shift every frequency (harmonics and formants) by 2**(semitones/12).

    Stretch by 1/ratio (longer), then resample so it plays back `ratio` faster; the
    resampling rate is rounded to RESAMPLE_STEP_HZ to keep torchaudio's polyphase
    kernel small.
    """
    if semitones == 0:
        return wave.clone()
    ratio = 2.0 ** (semitones / 12.0)
    stretched = time_stretch_wave(wave, 1.0 / ratio, n_fft, hop_length)
    orig_freq = int(round(sample_rate * ratio / RESAMPLE_STEP_HZ) * RESAMPLE_STEP_HZ)
    shifted = AF.resample(stretched, orig_freq, sample_rate)
    n = wave.shape[-1]
    if shifted.shape[-1] >= n:
        return shifted[..., :n]
    return nnf.pad(shifted, (0, n - shifted.shape[-1]))


# --- log-mel (training) ---------------------------------------------------------------


def _hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    # Slaney scale (recsys.features uses mel_scale="slaney"): linear below 1 kHz, log above.
    f = torch.as_tensor(f, dtype=torch.float64)
    linear = 3.0 * f / 200.0
    log = 15.0 + 27.0 * torch.log(torch.clamp(f, min=1e-10) / 1000.0) / math.log(6.4)
    return torch.where(f >= 1000.0, log, linear)


def mel_band_positions(freqs_hz: torch.Tensor, feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """Fractional mel-band index (0 = centre of band 0) of each frequency, as log_mel lays them out."""
    f_max = feat_cfg.f_max if feat_cfg.f_max is not None else sample_rate / 2
    m_min, m_max = _hz_to_mel_slaney(torch.tensor(feat_cfg.f_min)), _hz_to_mel_slaney(torch.tensor(f_max))
    step = (m_max - m_min) / (feat_cfg.n_mels + 1)  # n_mels + 2 equally spaced points, centres are 1..n
    return (_hz_to_mel_slaney(freqs_hz) - m_min) / step - 1.0


def mel_band_centres(feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(n_mels,) centre frequency in Hz of each mel band."""
    f_max = feat_cfg.f_max if feat_cfg.f_max is not None else sample_rate / 2
    m = torch.linspace(
        float(_hz_to_mel_slaney(torch.tensor(feat_cfg.f_min))),
        float(_hz_to_mel_slaney(torch.tensor(f_max))),
        feat_cfg.n_mels + 2,
        dtype=torch.float64,
    )[1:-1]
    linear = 200.0 * m / 3.0
    log = 1000.0 * torch.exp((m - 15.0) * math.log(6.4) / 27.0)
    return torch.where(m >= 15.0, log, linear)


def mel_pitch_shift(
    mel: torch.Tensor, semitones: float | torch.Tensor, feat_cfg: FeatureConfig, sample_rate: int
) -> torch.Tensor:
    """(B, n_mels, T) or (n_mels, T) log-mel -> same shape, every frequency scaled by 2**(s/12).

    Band b of the output takes the input at the band position of centre_b / ratio
    (linear interpolation between bands). Bands whose source lies above the top band
    get the input's minimum (nothing there, as after a real downward shift); below
    the lowest band the edge value is repeated. `semitones`: a float or (B,) tensor.
    """
    squeeze = mel.dim() == 2
    x = mel[None] if squeeze else mel
    n, n_mels, _ = x.shape
    if n_mels != feat_cfg.n_mels:
        raise ValueError(f"mel has {n_mels} bands but feat_cfg.n_mels is {feat_cfg.n_mels}")
    s = torch.as_tensor(semitones, dtype=torch.float64).reshape(-1).expand(n)
    centres = mel_band_centres(feat_cfg, sample_rate)  # (F,)
    src = mel_band_positions(centres[None, :] / (2.0 ** (s[:, None] / 12.0)), feat_cfg, sample_rate)  # (B, F)
    src = src.to(device=x.device, dtype=torch.float32)
    above = src > n_mels - 1
    src = src.clamp(0.0, n_mels - 1)
    lo = src.floor().long().clamp(max=n_mels - 2)
    w = (src - lo)[..., None]  # (B, F, 1)
    t = x.shape[-1]
    x_lo = torch.gather(x, 1, lo[..., None].expand(n, n_mels, t))
    x_hi = torch.gather(x, 1, (lo + 1)[..., None].expand(n, n_mels, t))
    out = (1 - w) * x_lo + w * x_hi
    floor = x.amin(dim=(1, 2), keepdim=True).expand_as(out)
    out = torch.where(above[..., None].expand_as(out), floor, out)
    return out[0] if squeeze else out


ENVELOPE_COEFFS = 12  # cepstral coefficients kept for the spectral envelope (formants, tilt)


def mel_envelope(mel: torch.Tensor, n_coeffs: int = ENVELOPE_COEFFS) -> torch.Tensor:
    """(..., n_mels, T) log-mel -> same shape: its spectral envelope, the cepstrally smoothed frame.

    The low-quefrency part of each frame (the first `n_coeffs` DCT coefficients over
    the mel axis) is the vocal tract's response; what is left is the harmonic fine
    structure of the source.
    """
    n_mels = mel.shape[-2]
    dct = AF.create_dct(n_coeffs, n_mels, norm="ortho").to(device=mel.device, dtype=mel.dtype)  # (n_mels, k)
    coeffs = torch.einsum("...mt,mk->...kt", mel, dct)
    return torch.einsum("...kt,mk->...mt", coeffs, dct)


def mel_key_shift(
    mel: torch.Tensor, semitones: float | torch.Tensor, feat_cfg: FeatureConfig, sample_rate: int
) -> torch.Tensor:
    """Formant-preserving pitch shift on log-mel: the same voice singing `semitones` higher.

    A singer changing key moves the harmonics, not the vocal tract: only the fine
    structure (log-mel minus its envelope) is shifted, the envelope stays. Written as
    shift(mel) - shift(envelope) + envelope so that bands the shift empties get the
    original envelope. Unlike mel_pitch_shift (formants move too: another voice).
    """
    env = mel_envelope(mel)
    return mel_pitch_shift(mel, semitones, feat_cfg, sample_rate) - mel_pitch_shift(
        env, semitones, feat_cfg, sample_rate
    ) + env


def mel_time_stretch(mel: torch.Tensor, rate: float, length: int | None = None) -> torch.Tensor:
    """(..., n_mels, T) -> (..., n_mels, length or round(T / rate)): linear interpolation of frames."""
    if rate <= 0:
        raise ValueError(f"time-stretch rate must be > 0, got {rate}")
    length = length if length is not None else max(1, round(mel.shape[-1] / rate))
    shape = mel.shape
    x = mel.reshape(-1, shape[-2], shape[-1])
    out = nnf.interpolate(x, size=length, mode="linear", align_corners=False)
    return out.reshape(*shape[:-1], length)


def crop_stretch(mel_song: torch.Tensor, start: int, chunk_frames: int, rate: float = 1.0) -> torch.Tensor:
    """(n_mels, T) song -> (n_mels, chunk_frames): the window at `start` played at `rate`.

    Reads round(chunk_frames * rate) source frames (moved back to fit the song; a song
    shorter than that is tiled) and resamples them to chunk_frames.
    """
    need = max(2, round(chunk_frames * rate))
    t = mel_song.shape[-1]
    if t < need:
        mel_song = mel_song.repeat(1, math.ceil(need / t))
        t = mel_song.shape[-1]
    start = max(0, min(start, t - need))
    window = mel_song[:, start : start + need]
    if need == chunk_frames:
        return window
    return mel_time_stretch(window, rate, length=chunk_frames)


# --- extra positive augmentations on log-mel ---------------------------------------------

_DB = math.log(10.0) / 10.0  # natural-log power per dB
GAIN_DB = 6.0  # gain uniform in +-6 dB
NOISE_SNR_DB = (10.0, 30.0)  # white noise, SNR against the view's mean power
EQ_TILT_DB = 6.0  # spectral tilt uniform in +-6 dB from lowest to highest band
REVERB_DECAY_S = (0.1, 0.6)  # exponential tail time constant, per band
REVERB_WET = (0.1, 0.5)  # tail power relative to the dry signal

KEY_SEMITONES = 3.0  # key change uniform in +-3 semitones (formants kept)

# `chain`: a recording and mixing chain of its own per view (recsys.production's distribution).
CHAIN_BANK_SIZE = 512  # chains drawn once per feature layout; each view picks one
CHAIN_BANK_SEED = 20261201
CHAIN_NOISE_SNR_DB = (15.0, 40.0)  # the chain's noise floor below the view's mean power
CHAIN_IMPULSE_SAMPLES = 8192  # long enough for a 50 Hz 4th-order high-pass to ring out

REPITCH_SEMITONES = 2.0  # a re-upload's pitch change, formants moving: uniform in +-2 semitones

EXTRA_AUGMENTATIONS = ("gain", "noise", "eq", "reverb", "key", "chain", "repitch")


def _fine_mel_filterbank(feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(CHAIN_IMPULSE_SAMPLES // 2 + 1, n_mels) the features' mel filters on a fine frequency grid."""
    return AF.melscale_fbanks(
        CHAIN_IMPULSE_SAMPLES // 2 + 1,
        feat_cfg.f_min,
        feat_cfg.f_max if feat_cfg.f_max is not None else sample_rate / 2,
        feat_cfg.n_mels,
        sample_rate,
        norm="slaney",
        mel_scale="slaney",
    ).double()


def _band_log_power(power: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """(..., n_freqs) power spectrum -> (..., n_mels) natural-log power relative to a flat spectrum."""
    return torch.log((power @ fb).clamp(min=1e-30) / fb.sum(0).clamp(min=1e-30))


def chain_mel_response(chain, feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(n_mels,) natural-log power gain of a production chain's EQ and band limit in each mel band.

    The chain's filters (recsys.production.equalise, band_limit) run on an impulse; the
    power response is averaged under each mel filter. Linear and time-invariant, so on
    log-mel the chain is this offset added to every frame.
    """
    from recsys.production import band_limit, equalise

    impulse = np.zeros(CHAIN_IMPULSE_SAMPLES)
    impulse[0] = 1.0
    h = band_limit(equalise(impulse, sample_rate, chain), sample_rate, chain)
    power = torch.fft.rfft(torch.as_tensor(h)).abs() ** 2
    return _band_log_power(power, _fine_mel_filterbank(feat_cfg, sample_rate)).float()


def noise_mel_shapes(feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(3, n_mels) log power per mel band of white, pink and brown noise, each of mean power 1."""
    f = torch.linspace(0, sample_rate / 2, CHAIN_IMPULSE_SAMPLES // 2 + 1, dtype=torch.float64).clamp(min=20.0)
    spectra = torch.stack([torch.ones_like(f), 1.0 / f, 1.0 / f**2])
    shapes = _band_log_power(spectra, _fine_mel_filterbank(feat_cfg, sample_rate))
    return (shapes - torch.logsumexp(shapes, dim=1, keepdim=True) + math.log(feat_cfg.n_mels)).float()


@functools.lru_cache(maxsize=4)
def chain_bank(feat_cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(CHAIN_BANK_SIZE, n_mels) responses of chains drawn with a fixed seed: the same bank every run."""
    from recsys.production import draw_chain

    rng = np.random.default_rng(CHAIN_BANK_SEED)
    return torch.stack(
        [chain_mel_response(draw_chain(rng, sample_rate), feat_cfg, sample_rate) for _ in range(CHAIN_BANK_SIZE)]
    )


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def apply_extra(
    mel: torch.Tensor,
    name: str,
    gen: torch.Generator,
    frame_seconds: float,
    feat_cfg: FeatureConfig | None = None,
    sample_rate: int | None = None,
) -> torch.Tensor:
    """(B, n_mels, T) log-mel -> same shape with one random extra augmentation per view.

    `key` (formant-preserving key change) needs the features' config and sample rate.
    """
    n, n_mels, t = mel.shape

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=mel.device, dtype=mel.dtype)[:, None, None]

    if name == "gain":
        return mel + col(_uniform(n, -GAIN_DB, GAIN_DB, gen) * _DB)
    if name == "eq":
        slope = col(_uniform(n, -EQ_TILT_DB, EQ_TILT_DB, gen) * _DB)
        ramp = torch.linspace(-0.5, 0.5, n_mels, device=mel.device, dtype=mel.dtype)[None, :, None]
        return mel + slope * ramp
    if name == "noise":
        snr = col(_uniform(n, *NOISE_SNR_DB, gen) * _DB)
        mean_power = torch.logsumexp(mel.reshape(n, -1), dim=1)[:, None, None] - math.log(n_mels * t)
        return torch.logaddexp(mel, mean_power - snr)
    if name == "reverb":
        tau = _uniform(n, *REVERB_DECAY_S, gen)
        decay = col(torch.exp(-frame_seconds / tau))  # per-frame power decay
        wet = col(_uniform(n, *REVERB_WET, gen))
        power = mel.exp()
        return torch.log(power + wet * reverb_tail(power, decay[..., 0]))
    if name in ("key", "chain", "repitch") and (feat_cfg is None or sample_rate is None):
        raise ValueError(f"the {name!r} augmentation needs feat_cfg and sample_rate")
    if name == "key":
        semitones = _uniform(n, -KEY_SEMITONES, KEY_SEMITONES, gen)
        return mel_key_shift(mel, semitones, feat_cfg, sample_rate)
    if name == "repitch":
        # The plain pitch change of a sped-up or pitched re-upload (formants move with it): the
        # same singer, whatever a pitch-shift policy says of larger shifts.
        semitones = _uniform(n, -REPITCH_SEMITONES, REPITCH_SEMITONES, gen)
        return mel_pitch_shift(mel, semitones, feat_cfg, sample_rate)
    if name == "chain":
        # EQ and band limit of a chain of the view's own, then that chain's noise floor.
        bank = chain_bank(feat_cfg, sample_rate).to(mel.device, mel.dtype)
        shapes = noise_mel_shapes(feat_cfg, sample_rate).to(mel.device, mel.dtype)
        pick = torch.randint(len(bank), (n,), generator=gen)
        colour = torch.randint(len(shapes), (n,), generator=gen)
        snr = col(_uniform(n, *CHAIN_NOISE_SNR_DB, gen) * _DB)
        out = mel + bank[pick.to(mel.device)][:, :, None]
        mean_power = torch.logsumexp(out.reshape(n, -1), dim=1)[:, None, None] - math.log(n_mels * t)
        return torch.logaddexp(out, mean_power - snr + shapes[colour.to(mel.device)][:, :, None])
    raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(EXTRA_AUGMENTATIONS)}")


def reverb_tail(power: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """(B, C, T) linear power, (B, 1) per-frame power decay -> each view's exponential tail, of unit gain:
    tail[t] = (1 - decay) * sum over k >= 0 of decay^k * power[t - k] (a first-order recursion over frames)."""
    tail = torch.zeros_like(power)
    acc = torch.zeros_like(power[..., 0])
    for i in range(power.shape[-1]):
        acc = acc * decay + power[..., i]
        tail[..., i] = acc
    return tail * (1 - decay)[..., None]


# --- production on a pitch salience (the melody encoder's views) -----------------------------

SALIENCE_TILT_DB = 6.0  # tilt uniform in +-6 dB from the lowest to the highest pitch candidate
SALIENCE_CUT_HZ = (60.0, 250.0)  # a band limit's high-pass: fundamentals below it lose weight
SALIENCE_CUT_DB = 10.0  # at most this much, one octave or more under the cut
SALIENCE_SNR_DB = (10.0, 30.0)  # noise floor below the view's mean salience
SALIENCE_REVERB_S = (0.05, 0.5)  # tail time constant
SALIENCE_REVERB_WET = (0.1, 0.6)


def produce_salience(
    salience: torch.Tensor, gen: torch.Generator, frame_seconds: float, midi: torch.Tensor
) -> torch.Tensor:
    """(B, P, T) log pitch salience, (P,) MIDI pitch of each row -> each view as if recorded through
    a chain of its own: a tilt over pitch and a high-pass's loss of low fundamentals (EQ and band
    limit), a room's tail over time, and a fluctuating noise floor.

    Why: the melody encoder's views otherwise differ only in key and tempo, so it never learns
    what production does to the pitch it refines; on a produced catalog each song has its own.
    Done on the salience, not the waveform: the trainer keeps features, not audio.
    """
    n, p = salience.shape[:2]

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=salience.device, dtype=salience.dtype)[:, None, None]

    ramp = torch.linspace(-0.5, 0.5, p, device=salience.device, dtype=salience.dtype)[None, :, None]
    gain = col(_uniform(n, -SALIENCE_TILT_DB, SALIENCE_TILT_DB, gen)) * ramp
    f0 = (440.0 * 2.0 ** ((midi.to(salience.device, salience.dtype) - 69.0) / 12.0))[None, :, None]
    cut = col(_uniform(n, *SALIENCE_CUT_HZ, gen))
    gain = gain - SALIENCE_CUT_DB * torch.log2(cut / f0).clamp(0.0, 1.0)
    power = (salience + gain * _DB).exp()
    tau = _uniform(n, *SALIENCE_REVERB_S, gen)
    decay = torch.exp(-frame_seconds / tau).to(power)[:, None]
    power = power + col(_uniform(n, *SALIENCE_REVERB_WET, gen)) * reverb_tail(power, decay)
    mean_power = power.mean(dim=(1, 2), keepdim=True)
    snr = col(_uniform(n, *SALIENCE_SNR_DB, gen) * _DB)
    noise = torch.empty(power.shape, dtype=power.dtype).exponential_(generator=gen).to(power.device)
    return torch.log(power + mean_power * torch.exp(-snr) * noise + 1e-5)


SALIENCE_VIBRATO_CENTS = (30.0, 100.0)  # peak deviation: sustained pop notes to opera and gospel
SALIENCE_VIBRATO_HZ = (4.5, 7.0)


def vibrato_salience(salience: torch.Tensor, gen: torch.Generator, frame_seconds: float) -> torch.Tensor:
    """(B, P, T) log pitch salience, one semitone a row -> each view sung with a vibrato of its own: the
    rows moved by depth x sin(2 pi rate t + phase) semitones, between rows by linear interpolation of
    the power.

    Why: a singer's vibrato swings the pitch by up to a semitone either side, and a semitone salience
    reads the swing as neighbouring notes; a melody is the same sung with or without it, so a view
    with a vibrato of its own is a positive of its song, and the encoder learns to read the note at
    the swing's centre.
    """
    n, p, t = salience.shape

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=salience.device, dtype=salience.dtype)[:, None]

    depth = col(_uniform(n, *SALIENCE_VIBRATO_CENTS, gen) / 100.0)
    rate = col(_uniform(n, *SALIENCE_VIBRATO_HZ, gen))
    phase = col(_uniform(n, 0.0, 2 * math.pi, gen))
    seconds = torch.arange(t, device=salience.device, dtype=salience.dtype)[None] * frame_seconds
    offset = depth * torch.sin(2 * math.pi * rate * seconds + phase)  # (B, T) semitones up
    whole = torch.floor(offset)
    frac = (offset - whole)[:, None]
    rows = torch.arange(p, device=salience.device)[None, :, None] - whole.long()[:, None]  # (B, P, T) source row
    power = salience.exp()
    below = power.gather(1, rows.clamp(0, p - 1))
    further = power.gather(1, (rows - 1).clamp(0, p - 1))
    return torch.log((1 - frac) * below + frac * further)


# --- pair policies ----------------------------------------------------------------------

PITCH_POSITIVE = AugmentPolicy(role="positive", low=0.0, high=2.0)  # semitones
# A negative pitch shift starts at 3 semitones: a re-upload's +-2 (formants moving) is still its singer
# (issue 15); 3-6 semitones moves the formants as far as another voice's.
PITCH_NEGATIVE = AugmentPolicy(role="negative", low=3.0, high=6.0)
STRETCH_POSITIVE = AugmentPolicy(role="positive", low=1.0, high=1.15)  # rate factor, either way
STRETCH_NEGATIVE = AugmentPolicy(role="negative", low=1.1, high=1.25)


@dataclass(frozen=True)
class PairPolicy:
    """Role and range of pitch shift and time stretch, plus extra always-positive augmentations."""

    pitch_shift: AugmentPolicy
    time_stretch: AugmentPolicy
    extra_positives: tuple[str, ...] = ()

    def roles(self, role: Literal["positive", "negative"]) -> list[str]:
        """Names of the pitch/stretch augmentations with `role`, in a fixed order."""
        return [name for name in ("pitch_shift", "time_stretch") if getattr(self, name).role == role]


PAIR_POLICIES: dict[str, PairPolicy] = {
    "ps_pos_ts_pos": PairPolicy(PITCH_POSITIVE, STRETCH_POSITIVE),
    "ps_pos_ts_neg": PairPolicy(PITCH_POSITIVE, STRETCH_NEGATIVE),
    "ps_neg_ts_pos": PairPolicy(PITCH_NEGATIVE, STRETCH_POSITIVE),
    "ps_neg_ts_neg": PairPolicy(PITCH_NEGATIVE, STRETCH_NEGATIVE),
}


def _check(name: str, p: AugmentPolicy, no_change: float) -> None:
    if p.role == "off":
        return
    if p.low < no_change:
        raise ValueError(
            f"{name} range low={p.low} must be >= {no_change} (it is a magnitude; sign is random)"
        )
    if p.role == "negative" and p.low <= no_change:
        raise ValueError(
            f"{name} is negative but its range low={p.low} includes no change ({no_change}); "
            f"a negative copy must differ audibly: use low > {no_change}"
        )


def resolve_policy(cfg: TimbreConfig) -> PairPolicy:
    """The named policy of `cfg`, with its pitch_shift / time_stretch / extra overrides, validated."""
    try:
        base = PAIR_POLICIES[cfg.policy]
    except KeyError as e:
        raise ValueError(f"unknown pair policy {cfg.policy!r}; valid: {', '.join(PAIR_POLICIES)}") from e
    unknown = [x for x in cfg.extra_positives if x not in EXTRA_AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown extra_positives {unknown}; valid: {', '.join(EXTRA_AUGMENTATIONS)}")
    policy = PairPolicy(
        pitch_shift=cfg.pitch_shift or base.pitch_shift,
        time_stretch=cfg.time_stretch or base.time_stretch,
        extra_positives=tuple(cfg.extra_positives),
    )
    _check("pitch_shift", policy.pitch_shift, 0.0)
    _check("time_stretch", policy.time_stretch, 1.0)
    return policy


def draw_semitones(p: AugmentPolicy, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) semitone shifts: magnitude uniform in [low, high], random sign."""
    sign = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return sign * _uniform(n, p.low, p.high, gen)


def draw_rates(p: AugmentPolicy, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) stretch rates: f or 1/f, log f uniform in [log low, log high]."""
    sign = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return torch.exp(sign * _uniform(n, math.log(p.low), math.log(p.high), gen))
