"""Pitch features for the melody encoder, from the log-mel or the waveform.

Pitch is estimated by harmonic summation: a voiced
frame with fundamental f0 puts energy at f0, 2 f0, 3 f0, ...; the salience of a
candidate pitch is a weighted sum of the energy the mel bands hold at its
harmonics. From the log-mel, one band is too wide to tell semitones apart near
f0, but the upper harmonics land in different bands, so the sum resolves about
a semitone (not for low voices); from a 1024-point STFT of the waveform every
harmonic is resolved. Both are fixed linear maps plus a log, on any device.

- :func:`harmonic_matrix`  (n_pitch, n_mels): mel power -> pitch salience, one bin per semitone.
- :func:`pitch_salience`   (..., n_mels, T) log-mel -> (..., n_pitch, T) log salience.
- :func:`fold_chroma`      (..., n_pitch, T) -> (..., 12, T) pitch classes.
- :func:`relative_chroma`  transposition-invariant chroma: the current chroma
  circularly correlated with the chroma of the preceding seconds (the intervals
  between the note now and the notes just sung), causal.
- :func:`interval_lag_profile` key-invariant song descriptor: interval x lag statistics.
- :func:`voiced_interval_lag_profile` the same over near-hard pitch classes of a finer
  (1/3 semitone) harmonic sum, frames weighted by how loud (voiced) they are: the default
  melody vector (docs/melody.md).
- :func:`stft_pitch_salience` / :func:`wave_pitch` the same salience from a 1024-point STFT of
  the waveform (sharper pitch than the 48-band mel allows): what the default melody vector
  reads (``pitch_source='waveform'``, docs/melody.md).
- :func:`chroma_stats`     the chroma-statistics baseline melody vector.
- :func:`crepe_f0`         optional pretrained CREPE pitch track from the waveform
  (needs ``pip install singer-recsys[pitch]``).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio

from recsys.config import FeatureConfig
from recsys.modules.conv import pad_left

# Candidate fundamentals: MIDI 40 (E2, 82 Hz) .. 83 (B5, 988 Hz), the sung range, one bin per semitone.
MIDI_LOW = 40
MIDI_HIGH = 83
N_PITCH = MIDI_HIGH - MIDI_LOW + 1
N_CHROMA = 12
N_HARMONICS = 8
HARMONIC_DECAY = 0.85  # weight of harmonic h is HARMONIC_DECAY ** (h - 1)
FRAME_BLOCK = 1 << 16  # frames per block in the per-frame steps and lag sums: bounds long songs' temporaries


def midi_to_hz(midi: torch.Tensor | float) -> torch.Tensor:
    return 440.0 * 2.0 ** ((torch.as_tensor(midi, dtype=torch.float64) - 69.0) / 12.0)


def mel_filterbank(cfg: FeatureConfig, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) filters identical to recsys.features.log_mel's (Slaney scale and norm)."""
    return torchaudio.functional.melscale_fbanks(
        n_freqs=cfg.n_fft // 2 + 1,
        f_min=cfg.f_min,
        f_max=cfg.f_max if cfg.f_max is not None else sample_rate / 2,
        n_mels=cfg.n_mels,
        sample_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    ).double()


def _band_response(fbank: torch.Tensor, freqs: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(F, n_mels) response of every mel band to a pure tone at each of `freqs` (F,), interpolated."""
    n_freqs = fbank.shape[0]
    pos = freqs / (sample_rate / 2) * (n_freqs - 1)
    lo = pos.floor().long().clamp(0, n_freqs - 2)
    frac = (pos - lo).unsqueeze(-1)
    return fbank[lo] * (1 - frac) + fbank[lo + 1] * frac


def candidate_midi(bins_per_semitone: int = 1) -> torch.Tensor:
    """(N_PITCH * bins_per_semitone,) float64 candidate pitches, bins centred on each semitone MIDI_LOW..MIDI_HIGH."""
    b = bins_per_semitone
    return MIDI_LOW + (torch.arange(N_PITCH * b, dtype=torch.float64) - (b - 1) / 2) / b


def harmonic_matrix(
    cfg: FeatureConfig,
    sample_rate: int,
    n_harmonics: int = N_HARMONICS,
    decay: float = HARMONIC_DECAY,
    bins_per_semitone: int = 1,
) -> torch.Tensor:
    """(N_PITCH * bins_per_semitone, n_mels) float32 map from mel power to harmonic-sum salience.

    Row p is sum_h decay^(h-1) * r_h / |r_h|^2, with r_h the mel bands' response
    to a tone at h * f0(p): the least-squares estimate of that harmonic's power.
    Harmonics above Nyquist are left out. With bins_per_semitone > 1 the
    candidates are finer than a semitone (:func:`candidate_midi`), so a note
    sung a little sharp or flat still meets a candidate that fits all of its
    harmonics; :func:`semitone_salience` takes the best sub-bin per semitone.
    """
    fbank = mel_filterbank(cfg, sample_rate)
    f0 = midi_to_hz(candidate_midi(bins_per_semitone))
    rows = torch.zeros(len(f0), cfg.n_mels, dtype=torch.float64)
    for h in range(1, n_harmonics + 1):
        freqs = h * f0
        ok = freqs < 0.95 * sample_rate / 2
        if not ok.any():
            break
        resp = _band_response(fbank, freqs[ok], sample_rate)  # (n_ok, n_mels)
        rows[ok] += decay ** (h - 1) * resp / resp.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
    return rows.float()


def pitch_salience(log_mel: torch.Tensor, matrix: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """(..., n_mels, T) natural-log mel power -> (..., N_PITCH, T) log harmonic-sum salience."""
    power = log_mel.exp()
    return torch.log(torch.einsum("pm,...mt->...pt", matrix.to(power), power).clamp_min(0) + floor)


def semitone_salience(log_salience: torch.Tensor, bins_per_semitone: int) -> torch.Tensor:
    """(..., N_PITCH * b, T) fine log salience -> (..., N_PITCH, T): the best sub-bin of each semitone."""
    shape = log_salience.shape
    fine = log_salience.reshape(*shape[:-2], N_PITCH, bins_per_semitone, shape[-1])
    return fine.max(-2).values


def fold_chroma(log_salience: torch.Tensor) -> torch.Tensor:
    """(..., N_PITCH, T) log salience -> (..., 12, T) log chroma (power summed over octaves).

    Chroma bin 0 is pitch class C.
    """
    power = log_salience.exp()
    shape = power.shape
    start = MIDI_LOW % N_CHROMA  # pitch class of the first bin
    end = (-(N_PITCH + start)) % N_CHROMA
    power = F.pad(power, (0, 0, start, end))  # (..., 12 * octaves, T), row 0 is a C
    folded = power.reshape(*shape[:-2], -1, N_CHROMA, shape[-1]).sum(-3)
    return torch.log(folded + 1e-8)


def fold_chroma_max(log_salience: torch.Tensor) -> torch.Tensor:
    """(..., N_PITCH, T) log salience -> (..., 12, T): the strongest candidate of each pitch class.

    Unlike :func:`fold_chroma`'s sum over octaves, this does not let the
    sub-octave candidates, which the even harmonics feed, pile up on a class:
    the class of the single best-fitting f0 stays on top.
    """
    shape = log_salience.shape
    start = MIDI_LOW % N_CHROMA
    end = (-(N_PITCH + start)) % N_CHROMA
    padded = F.pad(log_salience, (0, 0, start, end), value=float("-inf"))
    return padded.reshape(*shape[:-2], -1, N_CHROMA, shape[-1]).max(-3).values


def chroma_distribution(log_chroma: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """(..., 12, T) log chroma -> (..., 12, T) per-frame distribution (softmax over pitch classes)."""
    return torch.softmax(sharpness * log_chroma, dim=-2)


def relative_chroma(log_chroma: torch.Tensor, context_frames: int, sharpness: float = 1.0) -> torch.Tensor:
    """(..., 12, T) log chroma -> (..., 12, T) transposition-invariant interval profile, causal.

    out[d, t] = sum_c p[(c + d) mod 12, t] * q[c, t] where p is frame t's chroma
    distribution and q the mean distribution over the `context_frames` frames
    before and including t: how likely the note now lies d semitones above what
    was just sung. Transposing the input circularly shifts p and q together, so
    the output does not change.
    """
    p = chroma_distribution(log_chroma, sharpness)
    shape = p.shape
    flat = p.reshape(-1, N_CHROMA, shape[-1])
    # Causal moving average, zero context before the start (weights still sum to the frames seen).
    csum = torch.cumsum(pad_left(flat, 1), dim=-1)
    t = torch.arange(shape[-1], device=p.device)
    lo = (t + 1 - context_frames).clamp_min(0)
    q = (csum[..., t + 1] - csum[..., lo]) / (t + 1 - lo).to(p.dtype)
    return circular_correlation(flat, q).reshape(shape)


def circular_correlation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(..., 12, T) x (..., 12, T) -> (..., 12, T): out[d] = sum_c p[(c + d) mod 12] * q[c] per frame."""
    pf = torch.fft.rfft(p, dim=-2)
    qf = torch.fft.rfft(q, dim=-2)
    return torch.fft.irfft(pf * qf.conj(), n=N_CHROMA, dim=-2)


def interval_lag_profile(log_chroma: torch.Tensor, lags: list[int]) -> torch.Tensor:
    """(12, T) log chroma -> (len(lags) * 12,) L2-normalised key-invariant melody descriptor.

    Entry (lag, d) is the mean over t of the chance that the note at t lies d
    semitones above the note at t - lag: intervals and rhythm together, with no
    key (both frames shift alike) and no order in time (averaged over t).
    Each interval profile is centred over lags so that what stays is how it
    changes with the lag.
    """
    p = chroma_distribution(log_chroma)
    profile = torch.stack([_mean_lag_correlation(p, lag) for lag in lags])  # (n_lags, 12)
    return F.normalize((profile - profile.mean(0, keepdim=True)).flatten(), dim=0)


def _mean_lag_correlation(p: torch.Tensor, lag: int, block: int | None = None) -> torch.Tensor:
    """(12, T) -> (12,) mean over t >= lag of circular_correlation(p[:, t], p[:, t - lag]), in blocks of frames."""
    block = FRAME_BLOCK if block is None else block
    n = p.shape[-1] - lag
    if n <= 0:
        return p.new_zeros(N_CHROMA)
    if n <= block:
        return circular_correlation(p[:, lag:], p[:, :-lag]).mean(-1)
    total = torch.zeros(N_CHROMA, dtype=torch.float64, device=p.device)
    for start in range(lag, p.shape[-1], block):
        stop = min(start + block, p.shape[-1])
        total += circular_correlation(p[:, start:stop], p[:, start - lag : stop - lag]).sum(-1, dtype=torch.float64)
    return (total / n).to(p.dtype)


# voiced-interval-lag front end and descriptor (docs/melody.md). Fixed by reasoning about sung
# audio, then checked on the demo catalog; not fitted to it.
FINE_BINS = 3  # candidates per semitone: 33-cent steps, so intonation and tuning offsets meet a bin
# Moving mean of the log chroma over 11 frames (176 ms at the 16 ms hop): about one cycle of a singer's vibrato
# (4.5-7 Hz), whose swing of 50-100 cents crosses into both neighbouring semitones, so that each frame reads the
# note at the centre of its swing. Notes last longer. (3 frames, 48 ms, until 2026-12-02: deep-vibrato singers'
# frames fell a semitone off for a quarter of the time; docs/melody.md.)
SMOOTH_FRAMES = 11
LEGACY_SMOOTH_FRAMES = 3  # what models saved before then read with (their catalogs' vectors were made so)
SHARPNESS = 10.0  # chroma distribution = salience ** 10, normalised: close to the single strongest class
VOICING_DB = 10.0  # frames this far below the song's loud frames count half (rests, breaths, reverb tails)
VOICING_SLOPE_DB = 2.0  # the weight goes from 0.27 to 0.73 over 2 x this many dB
LOUD_QUANTILE = 0.95
EPS_WEIGHT = 1e-6


def map_frames(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """fn(x) for a per-frame `fn` of (..., T) -> (..., T), computed on blocks of `block` (FRAME_BLOCK) frames.

    The same result (each frame is computed alike), with temporaries the size of one
    block instead of the song's: what keeps hour-long songs in bounded memory.
    """
    block = FRAME_BLOCK if block is None else block
    n = x.shape[-1]
    if n <= block:
        return fn(x)
    first = fn(x[..., :block])
    out = first.new_empty(*first.shape[:-1], n)
    out[..., :block] = first
    for start in range(block, n, block):
        out[..., start : start + block] = fn(x[..., start : start + block])
    return out


def voicing_weight(log_mel: torch.Tensor) -> torch.Tensor:
    """(n_mels, T) natural-log mel power -> (T,) weight in (0, 1): how loud each frame is next to the song's loud frames.

    A sigmoid of the frame level in dB relative to the song's 95th-percentile
    frame: rests, breaths and reverb tails carry no note, and their chroma is
    noise. Relative to the song itself, so recording level does not matter.
    """
    level_db = 10.0 / torch.log(torch.tensor(10.0)) * map_frames(lambda m: torch.logsumexp(m, dim=-2), log_mel)
    loud = torch.quantile(level_db, LOUD_QUANTILE)
    return torch.sigmoid((level_db - loud + VOICING_DB) / VOICING_SLOPE_DB)


def _smooth_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(C, T) -> (C, T) centred moving mean over `frames` frames (fewer at the edges)."""
    if frames <= 1 or x.shape[-1] < 2:
        return x
    return F.avg_pool1d(x.unsqueeze(0), frames, 1, frames // 2, count_include_pad=False)[0, :, : x.shape[-1]]


def fine_semitone_salience(log_mel: torch.Tensor, fine_matrix: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """(n_mels, T) log-mel, (N_PITCH * b, n_mels) matrix -> (N_PITCH, T) log salience of each semitone's best sub-bin.

    Same as semitone_salience(pitch_salience(...)), with the log taken after the max (fewer rows).
    """
    matrix = fine_matrix.to(log_mel)

    def block(mel: torch.Tensor) -> torch.Tensor:
        power = torch.einsum("pm,mt->pt", matrix, mel.exp()).clamp_min(0)
        return torch.log(power.reshape(N_PITCH, -1, power.shape[-1]).amax(1) + floor)

    return map_frames(block, log_mel)


def voiced_chroma(semitone_log_salience: torch.Tensor, smooth_frames: int = SMOOTH_FRAMES) -> torch.Tensor:
    """(N_PITCH, T) log salience -> (12, T) per-frame pitch-class distribution, near one-hot, smoothed over
    `smooth_frames` frames (default: a vibrato cycle)."""
    return chroma_distribution(
        _smooth_time(map_frames(fold_chroma_max, semitone_log_salience), smooth_frames), SHARPNESS
    )


def _lag_correlation(x: torch.Tensor, lags: list[int], block: int | None = None) -> torch.Tensor:
    """(C, T) -> (C, len(lags)): out[d, k] = sum_t sum_c x[(c + d) mod C, t] x[c, t - lags[k]].

    2-D FFTs for all lags: circular over C (intervals), zero-padded over time so
    that the time lags do not wrap. A song longer than `block` frames is summed
    block by block: each block's frames t with the max lag of frames before them
    (the pairs of those leading frames alone are taken out again), so the FFTs stay
    the size of a block.
    """
    block = FRAME_BLOCK if block is None else block
    n_frames, reach = x.shape[-1], max(lags)
    if n_frames <= block:
        return _acf(x.double(), lags).to(x.dtype)  # float64: the profile is a small difference of sums
    total = x.new_zeros(x.shape[0], len(lags), dtype=torch.float64)
    for start in range(0, n_frames, block):
        lead = min(start, reach)
        window = x[:, start - lead : start + block].double()
        total += _acf(window, lags)
        if lead:
            total -= _acf(window[:, :lead], lags)
    return total.to(x.dtype)


def _acf(x: torch.Tensor, lags: list[int]) -> torch.Tensor:
    """(C, T) float64 -> (C, len(lags)) sum_t sum_c x[(c + d) mod C, t] x[c, t - lag], with x = 0 before t = 0."""
    n = _fast_fft_length(x.shape[-1] + max(lags))  # any n >= T + max lag is exact; smooth sizes are fast
    spec = torch.fft.rfft2(x, s=(x.shape[0], n))
    acf = torch.fft.irfft2(spec.abs().pow(2), s=(x.shape[0], n))  # (C, n): acf[d, L]
    return acf[:, lags]


def _fast_fft_length(n: int) -> int:
    """The smallest m >= n of the form 2^a 3^b 5^c (FFTs of such lengths are fastest)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def geometric_lags(n_lags: int, max_lag_frames: int) -> list[int]:
    """The distinct frame lags of `n_lags` geometric steps from 1 to max_lag_frames (rounding merges short ones)."""
    raw = [max_lag_frames ** (i / max(n_lags - 1, 1)) for i in range(n_lags)]
    return sorted({max(1, round(x)) for x in raw})


def lag_bands(lags: list[int]) -> list[list[int]]:
    """For each of the sorted distinct `lags`, the whole-frame lags nearer to it than to its neighbours on a log axis.

    Geometric lags with ratio r then each stand for [L / sqrt(r), L * sqrt(r)]
    (about +-11 % for the default 26 lags to 8 s), and the bands tile the lag
    axis: a tempo change within that factor moves a note-to-note distance
    inside its band instead of past the lag that samples it (docs/melody.md).
    """
    logs = [math.log(lag) for lag in lags]
    edges = [(a + b) / 2 for a, b in itertools.pairwise(logs)]
    top = logs[-1] + (logs[-1] - logs[-2]) / 2 if len(logs) > 1 else logs[-1]
    bands: list[list[int]] = [[] for _ in lags]
    for m in range(1, math.floor(math.exp(top) + 1e-9) + 1):
        bands[bisect.bisect_left(edges, math.log(m))].append(m)
    return bands


@functools.lru_cache(maxsize=8)
def _band_membership(lags: tuple[int, ...], bands: bool) -> tuple[list[int], torch.Tensor]:
    """Sorted frame lags and their (n_frame_lags, len(lags)) 0/1 band membership (one band each)."""
    groups = lag_bands(list(lags)) if bands else [[lag] for lag in lags]
    frame_lags = [m for group in groups for m in group]  # bands are contiguous and in order
    member = torch.zeros(len(frame_lags), len(lags))
    member[torch.arange(len(frame_lags)), torch.tensor([i for i, g in enumerate(groups) for _ in g])] = 1.0
    return frame_lags, member


def voiced_interval_lag_profile(
    chroma: torch.Tensor, weight: torch.Tensor, lags: list[int], unison: bool = False, bands: bool = False
) -> torch.Tensor:
    """(12, T) pitch-class distributions, (T,) frame weights -> (len(lags) * (11 or 12),) L2-normalised melody descriptor.

    As :func:`interval_lag_profile`, but each pair of frames counts by the
    product of their weights (voiced frames), and the distributions are near
    one-hot, so the profile is a histogram of the intervals actually sung.
    Lags at or beyond the song's length give zeros. Without `unison` the
    same-pitch-class interval is left out: how long notes are held dominates it
    in every song alike (and with the singer's phrasing), so it says little about
    which melody is sung. With `bands` each lag pools every frame lag of its
    :func:`lag_bands` band (tolerance to tempo changes; docs/melody.md).
    """
    frame_lags, member = _band_membership(tuple(lags), bands)
    k = bisect.bisect_left(frame_lags, chroma.shape[-1])  # frame lags shorter than the song
    profile = chroma.new_zeros(len(lags), N_CHROMA)
    if k:
        member = member[:k].to(chroma)  # (k, n_lags): which band each frame lag counts in
        pairs = _lag_correlation(weight.unsqueeze(0), frame_lags[:k])[0] @ member  # sum_t w(t) w(t - lag)
        sums = _lag_correlation(chroma * weight, frame_lags[:k]) @ member  # (12, n_lags)
        profile = (sums / pairs.clamp_min(EPS_WEIGHT)).T
    if not unison:
        profile = profile[:, 1:]
    return F.normalize((profile - profile.mean(0, keepdim=True)).flatten(), dim=0)


WAVE_N_FFT = 1024  # 15.6 Hz bins at 16 kHz: every harmonic of a sung note lands in its own bins
WAVE_DECAY = 0.8


def stft_pitch_salience(
    wave: torch.Tensor,
    sample_rate: int,
    hop_length: int,
    n_fft: int = WAVE_N_FFT,
    bins_per_semitone: int = FINE_BINS,
    n_harmonics: int = N_HARMONICS,
    decay: float = WAVE_DECAY,
) -> torch.Tensor:
    """(N,) waveform -> (N_PITCH * b, T) log harmonic-sum salience from a linear-frequency STFT.

    The waveform front end: with n_fft 1024 at 16 kHz (15.6 Hz bins) every
    harmonic is resolved, which the 48-band mel is not. Salience of f0 is the
    decayed sum of the square-root magnitude interpolated at h * f0. Frames
    match recsys.features.log_mel's (centred, same hop) when hop_length does.
    """
    return torch.log(_harmonic_sum(wave, sample_rate, hop_length, n_fft, bins_per_semitone, n_harmonics, decay) + 1e-5)


def _harmonic_sum(
    wave: torch.Tensor, sample_rate: int, hop_length: int, n_fft: int, bins_per_semitone: int, n_harmonics: int,
    decay: float, center: bool = True,
) -> torch.Tensor:
    """(N,) -> (N_PITCH * b, T) linear harmonic-sum salience (stft_pitch_salience before the log).

    center=False: `wave` is already padded (frames start at 0, as recsys.audio.framing cuts them).
    """
    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if center and wave.numel() < n_fft // 2 + 1:  # reflect padding needs half a window
        wave = F.pad(wave, (0, n_fft // 2 + 1 - wave.numel()))
    spec = torch.stft(
        wave, n_fft, hop_length, window=_hann(n_fft, wave.device), center=center, return_complex=True
    )
    mag = torch.addcmul(spec.real.square(), spec.imag, spec.imag).sqrt_().sqrt_()  # sqrt |X|; 2x abs().sqrt()
    comb = harmonic_comb(n_fft, sample_rate, bins_per_semitone, n_harmonics, decay).to(mag.device)
    return comb @ mag  # dense: a BLAS matmul beats torch's sparse kernels here


PITCH_STRIDE = 2  # pitch every 2 log-mel frames (32 ms): notes last far longer, and it halves the STFT


def wave_pitch(wave: torch.Tensor, sample_rate: int, hop_length: int, stride: int = PITCH_STRIDE) -> torch.Tensor:
    """(N,) voiced waveform -> (N_PITCH, T) log salience of each semitone's best 1/3-semitone candidate.

    What a melody model with ``pitch_source='waveform'`` reads beside the log-mel
    (recsys.features.song_features computes both from the same voiced audio). T is
    log_mel's frame count for hop_length; the salience is computed every `stride`
    frames (frame k * stride, centred alike) and held for the frames between.
    """
    n_frames = torch.as_tensor(wave).numel() // hop_length + 1  # log_mel's frames (centred STFT)
    power = _harmonic_sum(wave, sample_rate, hop_length * stride, WAVE_N_FFT, FINE_BINS, N_HARMONICS, WAVE_DECAY)
    return _best_semitone(power).repeat_interleave(stride, dim=-1)[:, :n_frames]


def _best_semitone(power: torch.Tensor) -> torch.Tensor:
    """(N_PITCH * FINE_BINS, k) linear salience -> (N_PITCH, k) log of each semitone's best sub-bin.

    The log after the max: the same as before it, on a third of the rows.
    """
    return torch.log(power.reshape(N_PITCH, FINE_BINS, -1).amax(1) + 1e-5)


def wave_pitch_frames(segment: torch.Tensor, sample_rate: int, hop_length: int, stride: int = PITCH_STRIDE) -> torch.Tensor:
    """Padded samples of k pitch frames (a recsys.audio.framing segment, n_fft WAVE_N_FFT, hop
    hop_length * stride) -> (N_PITCH, k): wave_pitch's salience before it is held for `stride` frames."""
    power = _harmonic_sum(
        segment, sample_rate, hop_length * stride, WAVE_N_FFT, FINE_BINS, N_HARMONICS, WAVE_DECAY, center=False
    )
    return _best_semitone(power)


@functools.lru_cache(maxsize=4)
def _hann(n_fft: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(n_fft, device=device)


@functools.lru_cache(maxsize=4)
def harmonic_comb(
    n_fft: int, sample_rate: int, bins_per_semitone: int, n_harmonics: int, decay: float
) -> torch.Tensor:
    """(N_PITCH * b, n_fft // 2 + 1) float32: row p sums decay^(h-1) |X| linearly interpolated at h * f0(p)."""
    n_bins = n_fft // 2 + 1
    f0 = midi_to_hz(candidate_midi(bins_per_semitone))
    comb = torch.zeros(len(f0), n_bins, dtype=torch.float64)
    rows = torch.arange(len(f0))
    for h in range(1, n_harmonics + 1):
        pos = h * f0 * n_fft / sample_rate
        ok = pos < n_bins - 1
        lo = pos.floor().long().clamp(0, n_bins - 2)
        frac = pos - lo
        weight = decay ** (h - 1) * ok
        comb.index_put_((rows, lo), weight * (1 - frac), accumulate=True)
        comb.index_put_((rows, lo + 1), weight * frac, accumulate=True)
    return comb.float()


def chroma_stats(log_mel: torch.Tensor, matrix: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Chroma-statistics baseline: (n_mels, T) log-mel -> (24,) L2-normalised mean and std of chroma."""
    chroma = chroma_distribution(fold_chroma(pitch_salience(log_mel, matrix)))  # (12, T)
    if mask is not None:
        chroma = chroma[:, mask]
    vec = torch.cat([chroma.mean(-1), chroma.std(-1, unbiased=False)])
    return F.normalize(vec, dim=0)


def crepe_f0(
    wave: torch.Tensor, sample_rate: int, hop_length: int, device: str | torch.device = "cpu", model: str = "tiny"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretrained CREPE pitch track: (N,) waveform -> f0 in Hz (T,) and periodicity (T,).

    torchcrepe is an optional extra; its weights ship inside the pip package.
    """
    try:
        import torchcrepe
    except ImportError as e:
        raise ImportError(
            "CREPE pitch tracking needs torchcrepe: pip install singer-recsys[pitch]"
        ) from e
    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(1, -1)
    f0, periodicity = torchcrepe.predict(
        wave,
        sample_rate,
        hop_length,
        fmin=float(midi_to_hz(MIDI_LOW)),
        fmax=float(midi_to_hz(MIDI_HIGH)),
        model=model,
        return_periodicity=True,
        batch_size=512,
        device=str(device),
    )
    return f0[0], periodicity[0]


def f0_to_chroma(f0: torch.Tensor, periodicity: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """(T,) f0 in Hz and periodicity -> (12, T) one-hot chroma of voiced frames (zeros elsewhere)."""
    midi = 69 + 12 * torch.log2(f0.clamp_min(1e-3) / 440.0)
    pc = torch.round(midi).long() % N_CHROMA
    out = torch.zeros(N_CHROMA, f0.shape[-1], dtype=torch.float32)
    voiced = periodicity >= threshold
    out[pc[voiced], voiced.nonzero().flatten()] = 1.0
    return out

