"""The second synthetic voice of recsys.corpus: an LF-model glottal source and a parallel formant bank.

The first voice model (corpus.py) reads Rosenberg glottal pulses through a cascade of
formant resonators with unit gain at DC: the formant amplitudes follow from the formant
frequencies alone. Encoders tuned to one synthesiser may learn its fingerprint, so a
catalog can mix in singers made another way:

* source: the Liljencrants-Fant (LF) glottal-flow derivative, shaped by one parameter Rd
  (Fant 1995: ~0.3 pressed, ~1 modal, ~2.7 breathy), with a sharp closing excitation
  and an exponential return phase the Rosenberg pulse lacks;
* tract: a parallel bank (Klatt-style) of resonators, each normalised to unit gain at its
  centre and given its own amplitude and alternating sign, so that the formant levels
  and the valleys between them are the singer's own, not implied by the frequencies.
"""

from __future__ import annotations

import numpy as np

RD_RANGE = (0.6, 2.4)  # singers' Rd: from pressed to breathy-ish phonation


def lf_timing(rd: float) -> tuple[float, float, float]:
    """(tp, te, ta) as fractions of the period from Rd (Fant's 1995 regression)."""
    rap = (-1.0 + 4.8 * rd) / 100.0
    rkp = (22.4 + 11.8 * rd) / 100.0
    rgp = 0.25 * rkp / (0.11 * rd / (0.5 + 1.2 * rkp) - rap)
    tp = 1.0 / (2.0 * rgp)
    te = tp * (1.0 + rkp)
    return tp, min(te, 0.97), max(rap, 0.003)


def _return_epsilon(ta: float, te: float) -> float:
    """eps with eps * ta = 1 - exp(-eps * (1 - te)) (fixed point, converges from 1 / ta)."""
    eps = 1.0 / ta
    for _ in range(60):
        eps = (1.0 - np.exp(-eps * (1.0 - te))) / ta
    return float(eps)


def lf_derivative(phase: np.ndarray, rd: float) -> np.ndarray:
    """LF glottal-flow derivative over one cycle (phase in [0, 1)), zero net flow, peak |E| = 1."""
    tp, te, ta = lf_timing(rd)
    eps = _return_epsilon(ta, te)
    wg = np.pi / tp

    def wave(alpha: float) -> np.ndarray:
        open_part = np.exp(alpha * phase) * np.sin(wg * phase)
        ee = -np.exp(alpha * te) * np.sin(wg * te)  # > 0: the excitation strength at closure
        ret = -ee / (eps * ta) * (np.exp(-eps * (phase - te)) - np.exp(-eps * (1.0 - te)))
        return np.where(phase < te, open_part, ret)

    # alpha: the open-phase growth that makes the flow return to zero at the end of the cycle.
    lo, hi = -20.0, 60.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if wave(mid).mean() > 0.0:  # the net flow falls as alpha grows
            lo = mid
        else:
            hi = mid
    e = wave(0.5 * (lo + hi))
    return e / np.max(np.abs(e))


def lf_flow(phase: np.ndarray, rd: float) -> np.ndarray:
    """LF glottal flow in [0, 1] at `phase` (uniform grid over one cycle): the integral of the derivative."""
    flow = np.cumsum(lf_derivative(phase, rd))
    flow -= flow.min()
    return flow / max(float(flow.max()), 1e-12)


def parallel_formant_response(
    freqs: np.ndarray, bws: np.ndarray, omega: np.ndarray, amps_db: np.ndarray
) -> np.ndarray:
    """Sum of 2-pole resonators with unit gain at their centre, amplitude `amps_db` and alternating sign.

    freqs, bws: (T, F) radians/sample; omega: (K,) bin frequencies; amps_db: (F,) -> (T, K) complex64.
    """
    z1 = np.exp(-1j * omega)[None, :]
    z2 = z1 * z1
    h = np.zeros((freqs.shape[0], omega.size), dtype=np.complex128)
    for k in range(freqs.shape[1]):
        r = np.exp(-0.5 * bws[:, k])[:, None]
        a1 = -2.0 * r * np.cos(freqs[:, k])[:, None]
        a2 = r * r
        zc = np.exp(-1j * freqs[:, k])[:, None]
        peak = np.abs(1.0 + a1 * zc + a2 * zc * zc)  # |1 / R| at the centre: unit-gain normalisation
        sign = 1.0 if k % 2 == 0 else -1.0
        h += sign * 10.0 ** (amps_db[k] / 20.0) * peak / (1.0 + a1 * z1 + a2 * z2)
    return h.astype(np.complex64)
