"""The pair-policy study: one timbre encoder per pair policy, scored on held-out songs.

A pair policy (recsys.augment.PAIR_POLICIES) says whether a pitch shift or a time
stretch makes a positive (the same voice) or a negative (a new voice) in contrastive
training. Each policy trains its own encoder on the same songs, in its own folder
(the product's timbre model is untouched); each is scored by same-singer retrieval,
and by how well that survives pitch-shifted and time-stretched queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys.augment import PAIR_POLICIES, mel_pitch_shift, mel_time_stretch
from recsys.config import Settings
from recsys.evaluation import retrieval_metrics
from recsys.features import SongFeatures
from recsys.studies.catalog import TEST_FRACTION, split_training_songs
from recsys.studies.trainers import TRAINERS, EpochLog, Trainer
from recsys.training.data import TrainingSong

PITCH_QUERIES = (2.0, -2.0)  # semitones
STRETCH_QUERIES = (1.1, 0.9)  # rates: 10 % faster, 10 % slower


def _policy_settings(settings: Settings, policy: str) -> Settings:
    timbre = settings.timbre.model_copy(update={"policy": policy, "pitch_shift": None, "time_stretch": None})
    return settings.model_copy(update={"timbre": timbre})


def compare_pair_policies(
    train_songs: list[TrainingSong],
    eval_songs: list[TrainingSong],
    settings: Settings,
    workspace: Path,
    policies: Sequence[str] | None = None,
    trainer: Trainer = TRAINERS["timbre"],
    log: EpochLog | None = None,
) -> list[dict[str, Any]]:
    """Train one encoder per pair policy on `train_songs`; score same-singer retrieval on `eval_songs`.

    Each model lives in `workspace/experiments/pair-policies/<policy>`. Rows: policy,
    version, final_loss, epochs, p_at_1 and map on eval_songs (leave-one-out), and
    p_at_1_<query> when every query is pitch-shifted (ps+2, ps-2 semitones) or
    time-stretched (ts1.1, ts0.9) on the log-mel against the unaltered songs.
    """
    from recsys.encoders import timbre_encoder

    if any(s.singer is None for s in eval_songs):
        raise ValueError("compare_pair_policies needs singer labels on every eval song")
    names = list(policies) if policies is not None else list(PAIR_POLICIES)
    unknown = [p for p in names if p not in PAIR_POLICIES]
    if unknown:
        raise ValueError(f"unknown pair policies {unknown}; valid: {', '.join(PAIR_POLICIES)}")
    feat, sr = settings.features, settings.audio.sample_rate
    singers = [s.singer for s in eval_songs]
    loo = list(range(len(eval_songs)))
    clean = [SongFeatures(s.mel) for s in eval_songs]
    queries = {
        **{f"ps{s:+g}": [SongFeatures(mel_pitch_shift(x.mel, s, feat, sr)) for x in eval_songs] for s in PITCH_QUERIES},
        **{f"ts{r:g}": [SongFeatures(mel_time_stretch(x.mel, r)) for x in eval_songs] for r in STRETCH_QUERIES},
    }
    rows = []
    for name in names:
        result = trainer.train(train_songs, _policy_settings(settings, name),
                               Path(workspace) / "experiments" / "pair-policies" / name, log=log)
        encoder = timbre_encoder(result.model)
        xb = encoder.embed_songs(clean).cpu()
        m = retrieval_metrics(xb, xb, singers, singers, loo)
        row: dict[str, Any] = {
            "policy": name,
            "version": result.version.version,
            "final_loss": result.final_loss,
            "epochs": len(result.history),
            "p_at_1": m["p_at_1"],
            "map": m["map"],
        }
        for key, songs in queries.items():
            xq = encoder.embed_songs(songs).cpu()
            row[f"p_at_1_{key}"] = retrieval_metrics(xq, xb, singers, singers, loo)["p_at_1"]
        rows.append(row)
    return rows


def pair_policy_study(
    songs: list[TrainingSong],
    settings: Settings,
    workspace: Path,
    policies: Sequence[str] | None = None,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    log: EpochLog | None = None,
    trainer: Trainer = TRAINERS["timbre"],
) -> list[dict[str, Any]]:
    """compare_pair_policies trained on the training split of `songs`, scored on the held-out songs.

    Rows as compare_pair_policies returns them, plus p_at_1_robust (mean over the
    perturbed queries), n_train and n_eval.
    """
    train_idx, test_idx = split_training_songs(songs, test_fraction, seed)
    rows = compare_pair_policies([songs[i] for i in train_idx], [songs[i] for i in test_idx], settings, workspace,
                                 policies=policies, trainer=trainer, log=log)
    for row in rows:
        robust = [float(v) for k, v in row.items() if k.startswith("p_at_1_") and not math.isnan(float(v))]
        row["p_at_1_robust"] = sum(robust) / len(robust) if robust else math.nan  # NaN: undefined, left out
        row.update(n_train=len(train_idx), n_eval=len(test_idx))
    return rows
