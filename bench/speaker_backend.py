"""A pretrained speaker encoder as the timbre front end, with a contrastive back end trained on the catalog.

Issue 15, item 5 (the approach of the SSL front-end study, ../shared/seeds/000): Resemblyzer's
GE2E encoder (its weights ship in its wheel) gives a 256-d d-vector for every 1.6 s partial of a
song; a small back end (a residual MLP per partial, attentive pooling, a 128-d projection) is
trained label-free with NT-Xent (pytorch-metric-learning) on the catalog, with the pair
policies at the waveform, as the timbre encoder's defaults draw them (`ps_neg_ts_pos`):

- positives of a song: the song itself, the song through a production chain of its own
  (recsys.production), and a copy time-stretched 1/1.15-1.15 (the tempo policy's positive);
- negatives: every other song, and a copy shifted 3-6 semitones (formants moving), which
  counts as another voice (the pitch policy's negative);
- each view is a crop of a few partials (recsys.training.speaker.crop_partials: since 2026-12-04
  drawn anywhere, before then a run of consecutive ones).

Unlike the product's trainer (since 2026-12-04), the study leaves no pseudo-singers out of the
negatives: it is plain instance discrimination, the objective of run 6 of docs/evaluation.md.

The study version, on the product's front end and back end model (recsys.speaker, recsys.models.speaker_timbre;
since 2026-12-03 the back end starts as the mean d-vector, so run 6 of docs/evaluation.md, with random
weights, is not reproduced exactly); the product option is `timbre.front_end: speaker` (recsys/training/speaker.py).
bench/study_timbre.py scores it beside the log-mel
encoder, Resemblyzer's own mean d-vector and MFCC statistics (`--speaker-backend`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.models.speaker_timbre import SpeakerBackEnd, SpeakerBackEndConfig, pad_partials
from recsys.speaker import speaker_partials
from recsys.training.speaker import crop_partials

PITCH_NEGATIVE = (3.0, 6.0)  # semitones, either way: another voice
STRETCH_POSITIVE = 1.15  # rate in 1/1.15 .. 1.15: the same voice
STEPS = 300
SONGS_PER_STEP = 32
TEMPERATURE = 0.1
LEARNING_RATE = 1e-3


class Partials:
    """Resemblyzer's partial d-vectors of a waveform: the product's front end (recsys.speaker)."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate

    def __call__(self, wave: np.ndarray) -> torch.Tensor:
        return speaker_partials(torch.from_numpy(np.asarray(wave, dtype=np.float32)), self.sample_rate)


def views_of(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The waveform views of one training song: positives (itself, re-produced, tempo) and its pitch negative."""
    from recsys.production import draw_chain, pitch_copy, produce, tempo_copy

    semitones = float(rng.uniform(*PITCH_NEGATIVE)) * (1 if rng.random() < 0.5 else -1)
    rate = float(np.exp(rng.uniform(-math.log(STRETCH_POSITIVE), math.log(STRETCH_POSITIVE))))
    return {
        "self": wave,
        "produced": produce(wave, sample_rate, draw_chain(rng, sample_rate)),
        "tempo": tempo_copy(wave, rate),
        "pitch": pitch_copy(wave, sample_rate, semitones),
    }


def train_backend(songs: Sequence[dict[str, torch.Tensor]], seed: int, steps: int = STEPS,
                  log: Callable[[str], None] | None = None) -> SpeakerBackEnd:
    """songs: per training song, the partials of its views (views_of's keys) -> the trained back end."""
    from pytorch_metric_learning.losses import NTXentLoss

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SpeakerBackEnd(SpeakerBackEndConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    loss_fn = NTXentLoss(temperature=TEMPERATURE)
    positives = ("self", "produced", "tempo")
    n = len(songs)
    for step in range(steps):
        picks = torch.randperm(n, generator=gen)[: min(SONGS_PER_STEP, n)].tolist()
        views, labels = [], []
        for i in picks:
            for _ in range(2):
                name = positives[int(torch.randint(len(positives), (1,), generator=gen))]
                views.append(crop_partials(songs[i][name], gen))
                labels.append(i)
        for i in picks[: len(picks) // 2]:  # the pitch negatives: identities of their own, two views each
            views += [crop_partials(songs[i]["pitch"], gen), crop_partials(songs[i]["pitch"], gen)]
            labels += [n + i, n + i]
        x, mask = pad_partials(views)
        loss = loss_fn(model(x, mask), torch.tensor(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and step % 100 == 0:
            log(f"speaker back end step {step}: loss {loss.item():.3f}")
    return model.eval()


def backend_embedder(model: SpeakerBackEnd, partials: Callable[[str], torch.Tensor]):
    """paths -> (n, dim) numpy song vectors: each song's partials through the back end."""

    def embed(paths: Sequence[str]) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([model(*pad_partials([partials(p)])) for p in paths]).double().numpy()

    return embed


def read(path: str) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("a module of bench/study_timbre.py: run `python bench/study_timbre.py --speaker-backend`")


if __name__ == "__main__":
    main()
