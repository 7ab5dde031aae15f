"""Study (not yet in the product): a pitch-equivariant TCAE whose latents are pitch classes, trained
contrastively, with the voiced interval-lag profile over its output as the song vector.

    python bench/study_melody_tcae.py [--epochs 6] [--steps 20] [--cache /tmp/melody-work/bench-full]

The melody model issue 16 asks for, in the shape that the first attempt (docs/melody.md) says is
needed: training may change only what the interval x lag structure is computed from.

- Model: the waveform pitch salience (44 semitones x T, recsys.pitch.wave_pitch) -> a gated
  residual stack of 2-D convolutions, 3 semitones x 3 frames, dilated 1, 2, 4, ... in time and
  causal in time, with weights shared along the pitch axis (a transposition moves the output
  alike) -> a refined salience = input + a residual whose last layer starts at zero, and a
  1x1 decoder that reconstructs the (standardised) input from the skip sum.
- Song vector: recsys.pitch.voiced_interval_lag_profile of recsys.pitch.voiced_chroma of the
  refined salience (differentiable), so the untrained model gives exactly the default descriptor.
- Training: NT-Xent (pytorch-metric-learning) over views of songs, each a whole song time-stretched
  by up to 15 % either way and shifted by up to 2 whole semitones (positives of their song), plus
  the descriptor's mutual top-2 neighbours as pseudo-cover positives; the 8 nearest songs by
  the descriptor are left out of the negatives; plus 0.1 x the reconstruction error.

Scored as bench/bench_melody.py does (same cached demo catalog and query sets): melody P@1
(nearest song by another singer sings the same melody), on the catalog and on takes sung 2
semitones up / down and the shared-melody songs stretched to 0.9 / 1.1 tempo.
Measured 2026-12-01 (docs/melody.md): untrained = descriptor 0.948 / 0.948 / 0.948 / 0.948 /
0.885; after 80 steps 1.000 / 0.979 / 0.990 / 0.969 / 0.969; about 10 s a step on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def build(ns: argparse.Namespace) -> None:
    import bench_melody as bm
    import torch
    import torch.nn.functional as F
    from pytorch_metric_learning.losses import NTXentLoss
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
    from torch import nn

    from recsys import pitch
    from recsys.augment import crop_stretch
    from recsys.studies.melody_variants import melody_precision_at_1

    torch.set_num_threads(ns.threads)
    sr, hop = bm.SR, bm.FEAT.hop_length
    lags = bm.TCAEConfig.from_settings(bm.MelodyConfig(), bm.FEAT, sr).lags

    cached = ns.cache / "data.pt"
    if cached.exists():
        data = torch.load(cached, weights_only=False)
    else:
        data = bm.demo_catalog(Path(tempfile.mkdtemp()) / "corpus", 24, 8, 30.0)
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, cached)
    bm.add_tempo_queries(data)
    every = data["cat"] + [q for qs in {**data["q"], **data["tempo"]}.values() for q in qs]
    for s in every:
        s["sal"] = pitch.wave_pitch(s["wave"], sr, hop)
        s["w"] = pitch.voicing_weight(s["mel"])

    class PitchTCAE(nn.Module):
        def __init__(self, ch: int, layers: int) -> None:
            super().__init__()
            self.inp = nn.Conv2d(1, ch, (3, 1), padding=(1, 0))
            self.dilations = [2**i for i in range(layers)]
            self.filt = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=(1, 0), dilation=(1, d)) for d in self.dilations)
            self.gate = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=(1, 0), dilation=(1, d)) for d in self.dilations)
            self.out = nn.Conv2d(ch, 1, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.dec = nn.Conv2d(ch, 1, 1)

        def forward(self, sal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = (sal - sal.mean((1, 2), keepdim=True)) / (sal.std((1, 2), keepdim=True) + 1e-5)
            h, skips = self.inp(x[:, None]), 0
            for d, f, g in zip(self.dilations, self.filt, self.gate):
                hp = F.pad(h, (2 * d, 0))  # causal in time
                z = torch.tanh(f(hp)) * torch.sigmoid(g(hp))
                h, skips = h + z, skips + z
            skips = F.relu(skips)
            return sal + self.out(skips)[:, 0], self.dec(skips)[:, 0], x

    def profile(sal: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return pitch.voiced_interval_lag_profile(pitch.voiced_chroma(sal), w, lags, False, True).float()

    @torch.no_grad()
    def embed(model: PitchTCAE | None, songs: list[dict]) -> torch.Tensor:
        return torch.stack([profile(model(s["sal"][None])[0][0] if model else s["sal"], s["w"]) for s in songs])

    def score(model: PitchTCAE | None, tag: str) -> None:
        cat = data["cat"]
        melody, singer = [s["melody"] for s in cat], [s["singer"] for s in cat]
        xb = embed(model, cat)
        row = {"P@1": melody_precision_at_1(xb, melody, singer)}
        for q, songs in {**data["q"], **data["tempo"]}.items():
            row[q] = melody_precision_at_1(xb, melody, singer, embed(model, songs), [s["source"] for s in songs])
        print(tag, {k: round(v, 3) for k, v in row.items()}, flush=True)

    def shift(sal: torch.Tensor, semitones: int) -> torch.Tensor:
        out = torch.full_like(sal, float(sal.min()))
        if semitones >= 0:
            out[semitones:] = sal[: sal.shape[0] - semitones]
        else:
            out[:semitones] = sal[-semitones:]
        return out

    def view(s: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = s["sal"].shape[-1]
        rate = math.exp((torch.rand(1, generator=gen).item() * 2 - 1) * math.log(1.15))
        semitones = round((torch.rand(1, generator=gen).item() * 2 - 1) * 2.0)
        frames = int(n / rate) - 1
        v = crop_stretch(torch.cat([s["sal"], s["w"][None]]), 0, frames, rate)
        return shift(v[:-1], semitones), v[-1]

    torch.manual_seed(ns.seed)
    gen = torch.Generator().manual_seed(ns.seed)
    model = PitchTCAE(ns.channels, ns.layers)
    score(None, "descriptor")
    score(model, "untrained")
    cat = data["cat"]
    xd = embed(None, cat)
    sims = xd @ xd.T
    sims.fill_diagonal_(-2)
    near = {(i, j) for i in range(len(cat)) for j in sims.topk(8, 1).indices[i].tolist()}
    near |= {(j, i) for i, j in near}
    top2 = sims.topk(2, 1).indices.tolist()
    partners = {i: [j for j in top2[i] if i in top2[j]] or [i] for i in range(len(cat))}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = NTXentLoss(temperature=0.1)
    began = time.time()
    for epoch in range(ns.epochs):
        for _ in range(ns.steps):
            idx, labels = [], []
            for a in torch.randperm(len(cat), generator=gen)[: ns.songs // 2].tolist():
                idx += [a, partners[a][int(torch.randint(0, len(partners[a]), (1,), generator=gen))]]
                labels += [a, a]
            views = [view(cat[j], gen) for j in idx + idx]
            label = torch.tensor(labels + labels)
            vectors, recon = [], 0.0
            for sal, w in views:
                refined, rec, target = model(sal[None])
                recon = recon + ((rec - target) ** 2).mean() / len(views)
                vectors.append(profile(refined[0], w))
            a1, p, a2, n = lmu.get_all_pairs_indices(label)
            keep = torch.tensor([(int(label[i]), int(label[j])) not in near for i, j in zip(a2.tolist(), n.tolist())])
            loss = loss_fn(torch.stack(vectors), label, indices_tuple=(a1, p, a2[keep], n[keep])) + 0.1 * recon
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: {time.time() - began:.0f} s, loss {loss.item():.3f}", flush=True)
        if epoch % 2 == 1 or epoch == ns.epochs - 1:
            score(model, f"after epoch {epoch}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch")
    ap.add_argument("--songs", type=int, default=16, help="songs per step (anchors and their pseudo-covers)")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/melody-work/bench-full"))
    build(ap.parse_args())


if __name__ == "__main__":
    main()
