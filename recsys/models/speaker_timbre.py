"""The contrastive back end over the pretrained speaker front end (`timbre.front_end: speaker`).

A song arrives as its speaker partials (recsys.speaker: a 256-d GE2E d-vector per 1.6 s). A
residual MLP adapts each partial to the catalog, attention pools them (so the partials where the
voice is clearest weigh most) and a linear layer gives the unit song vector. Small on purpose: the
front end already knows voices; the back end learns which of what it knows tells this catalog's
singers apart, label-free with the pair policies (recsys.training.speaker).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FRONT_END = "speaker"  # the model_config key front_end's value for these models


@dataclass(frozen=True)
class SpeakerBackEndConfig:
    """Model shape; saved in the checkpoint and rebuilt from it."""

    dim_in: int = 256  # the front end's d-vector
    hidden: int = 512
    embedding_dim: int = 128

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeakerBackEndConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class SpeakerBackEnd(nn.Module):
    """(B, K, dim_in) partials and their (B, K) mask -> (B, embedding_dim) unit song vectors."""

    def __init__(self, cfg: SpeakerBackEndConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.dim_in)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim_in, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim_in))
        self.attention = nn.Linear(cfg.dim_in, 1)
        self.project = nn.Linear(cfg.dim_in, cfg.embedding_dim)
        # Start from the front end's own answer: the residual adds nothing and the attention is uniform, so the
        # untrained song vector is a random projection of the mean d-vector (Resemblyzer's utterance vector).
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        nn.init.zeros_(self.attention.weight)

    @property
    def dim(self) -> int:
        return self.cfg.embedding_dim

    @property
    def device(self) -> torch.device:
        return self.project.weight.device

    def forward(self, partials: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = partials + self.mlp(self.norm(partials))
        weight = self.attention(h).squeeze(-1).masked_fill(~mask, -math.inf).softmax(-1)
        return F.normalize(self.project((weight[..., None] * h).sum(1)), dim=-1)


def pad_partials(songs: list[torch.Tensor], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Songs' (K_i, D) partials -> (B, max K, D) zero-padded and the (B, max K) mask of real partials."""
    k = max(p.shape[0] for p in songs)
    x = torch.zeros(len(songs), k, songs[0].shape[1], device=device)
    mask = torch.zeros(len(songs), k, dtype=torch.bool, device=device)
    for i, p in enumerate(songs):
        x[i, : p.shape[0]], mask[i, : p.shape[0]] = p, True
    return x, mask


COMBINED = "log-mel+speaker"  # front_end of a version holding both timbre models


class CombinedTimbre(nn.Module):
    """The log-mel timbre encoder and the speaker back end, trained apart, published as one timbre version.

    The song vector is [sqrt(1 - share) x log-mel vector, sqrt(share) x speaker vector]: unit norm, and its
    cosine is (1 - share) x the log-mel cosine + share x the speaker cosine (recsys.encoders).
    """

    def __init__(self, log_mel: nn.Module, speaker: SpeakerBackEnd, share: float, log_mel_meta: dict[str, Any]) -> None:
        super().__init__()
        if not 0.0 < share < 1.0:
            raise ValueError(f"speaker_share must lie strictly between 0 and 1, got {share}")
        self.log_mel, self.speaker, self.share = log_mel, speaker, float(share)
        self.log_mel_meta = log_mel_meta  # what the log-mel part's version recorded (its pitch pool, features)

    @property
    def dim(self) -> int:
        return self.log_mel.dim + self.speaker.dim
