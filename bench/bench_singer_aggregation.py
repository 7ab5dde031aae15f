"""Singer profiles: mean of a singer's songs vs multi-vector max-similarity, on a workspace's catalog.

    python bench/bench_singer_aggregation.py --workspace demo-workspace [--k 5] [--weights fused,timbre]

Each labelled song in turn is left out of the catalog: the singers' profiles are
rebuilt from the remaining songs (recsys.search.Searcher) and the song asks "who
sings like this?" (Searcher.similar_singers). A singer with no other song is
skipped. Reported per aggregation and weighting: singer P@1 (the top singer is the
song's own), MRR over the top k, and the mean query time. Needs a workspace whose
catalog has been embedded (`recsys demo` or `recsys embed`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.api import Recommender
from recsys.config import IndexConfig
from recsys.embedding import Vectors, Weights
from recsys.evaluation import format_table
from recsys.search import AGGREGATIONS, Searcher

WEIGHTINGS = {
    "fused": None,
    "timbre": Weights(timbre=1.0, melody=0.0),
    "melody": Weights(timbre=0.0, melody=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--weights", default="fused,timbre", help=f"comma list of {', '.join(WEIGHTINGS)}")
    args = ap.parse_args()

    rec = Recommender.open(workspace=args.workspace)
    full = rec.searcher
    singers = [s if not s.startswith("song:") else None for s in full.singer_of]
    counts = Counter(s for s in singers if s is not None)
    queries = [r for r, s in enumerate(singers) if s is not None and counts[s] >= 2]
    rows = []
    for wname in [w.strip() for w in args.weights.split(",") if w.strip()]:
        weights = WEIGHTINGS[wname] or rec.default_weights()
        for aggregation in AGGREGATIONS:
            hits1, rr, seconds = [], [], 0.0
            for r in queries:
                keep = np.array([i for i in range(len(full)) if i != r])
                searcher = Searcher(
                    full.ids[keep],
                    [singers[i] for i in keep],
                    [full.titles[i] for i in keep],
                    Vectors(full.vectors.timbre[keep], full.vectors.melody[keep]),
                    IndexConfig(kind="flat"),
                    aggregation=aggregation,
                )
                t0 = time.perf_counter()
                ranked = searcher.similar_singers(
                    full.vectors.timbre[r], full.vectors.melody[r], k=args.k, weights=weights
                )
                seconds += time.perf_counter() - t0
                names = [h.singer for h in ranked]
                hits1.append(bool(names) and names[0] == singers[r])
                rr.append(1.0 / (names.index(singers[r]) + 1) if singers[r] in names else 0.0)
            rows.append(
                {
                    "weights": f"{wname} (timbre {weights.timbre:g}, melody {weights.melody:g})",
                    "aggregation": aggregation,
                    "p_at_1": float(np.mean(hits1)),
                    "mrr": float(np.mean(rr)),
                    "ms": 1e3 * seconds / len(queries),
                }
            )
    print(
        f"\n{len(queries)} leave-one-out queries, {len(counts)} singers, workspace {args.workspace}, "
        f"model {rec.model_version}\n"
    )
    print(
        format_table(
            rows,
            [
                ("weights", "weights"),
                ("aggregation", "aggregation"),
                ("p_at_1", "singer P@1"),
                ("mrr", f"MRR@{args.k}"),
                ("ms", "ms / query"),
            ],
        )
    )


if __name__ == "__main__":
    main()
