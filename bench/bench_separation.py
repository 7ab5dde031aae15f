"""Benchmark accompaniment suppression on generated mixes whose stems are known.

    python bench/bench_separation.py [--songs 4] [--seconds 20] [--weights PATH [--architecture NAME]]

Each song is a synthetic singer (recsys.corpus.sing) over its backing track
(recsys.corpus.accompany) at 0 dB voice-to-accompaniment. For each method: the SDR
improvement over the unprocessed mix (mir_eval bss_eval_sources, and SI-SDR), per
song and on average, and speed as x real time (audio seconds / wall seconds; the
mix-generation time is not counted). 'neural' runs only with --weights (a local
file; nothing is downloaded); without weights an untrained 'mask_net' is timed so
the plumbing's speed is known (its SDR means nothing). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys import corpus
from recsys.separation import MaskNet, NeuralSeparator, make_separator, resolve_device

SR = 16000


@dataclass
class Row:
    method: str
    sdr_gain: list[float]
    si_sdr_gain: list[float]
    speed: float
    note: str = ""


def song_stems(index: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    voice = corpus.make_singers(index + 1, seed=seed)[index]
    melody = corpus.make_melodies(index + 1, seed=seed + 1)[index]
    vocal = corpus.sing(voice, melody, seconds, SR, seed=index)
    backing = corpus.accompany(melody, corpus.key_for(voice, melody), seconds, SR, seed=index)
    backing = backing * np.sqrt(np.mean(vocal**2) / np.mean(backing**2))
    return vocal.astype(np.float64), backing.astype(np.float64)


def bss_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    import mir_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in mir_eval 0.8
        return float(mir_eval.separation.bss_eval_sources(reference[None], estimate[None])[0][0])


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    return 10.0 * math.log10(np.sum(target**2) / max(np.sum((estimate - target) ** 2), 1e-20))


def measure(
    name: str, separator, songs: list[tuple[np.ndarray, np.ndarray]], device: torch.device, note: str = ""
) -> Row:
    sdr_gain, si_gain, elapsed, total = [], [], 0.0, 0.0
    for vocal, backing in songs:
        mix = vocal + backing
        wave = torch.from_numpy(mix).float().to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        estimate = separator.separate(wave, SR)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        total += len(mix) / SR
        estimate = estimate.double().cpu().numpy()
        sdr_gain.append(bss_sdr(vocal, estimate) - bss_sdr(vocal, mix))
        si_gain.append(si_sdr(vocal, estimate) - si_sdr(vocal, mix))
    return Row(name, sdr_gain, si_gain, total / elapsed, note)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=None, help="local neural separator file")
    parser.add_argument("--architecture", default=None, help="architecture of a state-dict --weights")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    songs = [song_stems(i, args.seconds, args.seed) for i in range(args.songs)]
    rows = [
        measure("none", make_separator("none"), songs, device),
        measure("classical (REPET-SIM, defaults)", make_separator("classical"), songs, device),
        measure(
            "classical, 8 s blocks",
            make_separator("classical", block_seconds=8.0, overlap_seconds=2.0),
            songs,
            device,
        ),
    ]
    if args.weights is not None:
        separator = make_separator(
            "neural", weights=args.weights, architecture=args.architecture, device=args.device
        )
        rows.append(measure(f"neural ({args.weights.name})", separator, songs, device))
    else:
        untrained = NeuralSeparator(MaskNet(), device=args.device)
        rows.append(measure("neural (untrained mask_net)", untrained, songs, device, "speed only"))

    print(
        f"{args.songs} generated songs x {args.seconds:.0f} s at {SR} Hz, 0 dB voice-to-accompaniment, "
        f"device {device}, {torch.get_num_threads()} CPU threads\n"
    )
    print("| method | SDR gain dB (mean) | per song | SI-SDR gain dB (mean) | speed x RT | note |")
    print("|---|---:|---|---:|---:|---|")
    for r in rows:
        per_song = " ".join(f"{g:+.1f}" for g in r.sdr_gain)
        print(
            f"| {r.method} | {np.mean(r.sdr_gain):+.2f} | {per_song} | {np.mean(r.si_sdr_gain):+.2f} "
            f"| {r.speed:.1f} | {r.note} |"
        )


if __name__ == "__main__":
    main()
