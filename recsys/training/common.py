"""Pieces every training loop shares: seeds, device choice, mixed precision, early stopping, the epoch loop, nearest songs."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.training.checkpoint import load_resume, save_resume

SIMILARITY_BLOCK = 1024  # rows of the song-by-song similarity computed at once


def nearest_songs(vectors: torch.Tensor, k: int) -> torch.Tensor:
    """(n, d) unit song vectors -> (n, min(k, n - 1)) indices of each song's nearest other songs, nearest first.

    SIMILARITY_BLOCK rows of the similarity at a time: memory block x n floats, never n x n (both trainers
    find their pseudo-singers and pseudo-covers with it, on catalogs of any size)."""
    n = vectors.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(n, 0, dtype=torch.long)
    out = []
    for lo in range(0, n, SIMILARITY_BLOCK):
        sims = vectors[lo : lo + SIMILARITY_BLOCK] @ vectors.T
        sims[torch.arange(sims.shape[0]), torch.arange(lo, lo + sims.shape[0])] = -float("inf")  # not itself
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for samplers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from recsys.errors import DeviceUnavailableError

        raise DeviceUnavailableError("device 'cuda' was asked for, but this machine has no CUDA device",
                                     "use --device auto or --device cpu")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; valid: auto, cpu, cuda")
    return torch.device(requested)


class MixedPrecision:
    """How a training step runs on `device`: mixed precision on CUDA, full precision elsewhere.

    On CUDA the forward pass runs under autocast in bfloat16, or in float16 with a
    GradScaler where the GPU has no bfloat16 (before Ampere). Anywhere else nothing
    is entered or scaled, so CPU training computes exactly what plain float32 does.
    """

    def __init__(self, device: torch.device | str, enabled: bool = True) -> None:
        self.device = torch.device(device)
        self.dtype: torch.dtype | None = None
        if enabled and self.device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (a no-op off CUDA)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate `loss` and step `optimizer`, through the loss scaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


@dataclass
class EarlyStopping:
    """Stop when the monitored value has not improved for `patience` epochs."""

    patience: int
    mode: str = "min"  # "min" for losses, "max" for retrieval metrics
    best: float | None = None
    bad_epochs: int = 0

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when it is the best so far."""
        improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # -1 when no epoch improved on the monitored value
    stopped_early: bool


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run_epochs(
    *,
    kind: str,
    workspace: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    early: EarlyStopping,
    epochs: int,
    meta_config: dict[str, Any],
    fingerprint: str,
    run_epoch: Callable[[int], dict[str, Any]],
    monitor: Callable[[dict[str, Any]], float],
    generator: torch.Generator | None = None,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    keep_best: bool = True,
) -> LoopResult:
    """The epoch loop both encoders train with: resume, early stopping, best weights, history.

    `run_epoch(epoch)` trains and validates one epoch and returns its record (loss and
    metrics); `monitor(record)` is the value early stopping watches (its mode says which
    way is better). After every epoch the whole state (model, optimiser, `generator`,
    torch's RNG, the float16 loss `scaler` when there is one, history, best weights,
    early-stopping counters) is saved as the kind's
    resume point, so a run killed between epochs continues where it stopped when
    started again with the same config and songs. Ends with the best epoch's weights
    loaded into `model`, in eval mode; with keep_best=False the last epoch's (early
    stopping still ends the run, but the monitored value no longer picks the weights).
    """
    history: list[dict[str, Any]] = []
    best_state, best_epoch, start_epoch = _cpu_copy(model), -1, 0
    state = load_resume(workspace, kind) if resume else None
    if state is not None:
        if state["config"] == meta_config and state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if generator is not None and "generator" in state:
                generator.set_state(state["generator"])
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            if scaler is not None and "grad_scaler" in state:
                scaler.load_state_dict(state["grad_scaler"])
            history, best_state, best_epoch = state["history"], state["best_model"], state["best_epoch"]
            early.best, early.bad_epochs = state["early_best"], state["early_bad_epochs"]
            start_epoch = state["epoch"] + 1
        elif log is not None:
            log({"event": "resume_ignored", "reason": "resume point was made with another config or other songs"})

    for epoch in range(start_epoch, epochs):
        if early.should_stop:
            break
        began = time.perf_counter()
        model.train()
        record = {"epoch": epoch, **run_epoch(epoch), "seconds": 0.0}
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        improved = early.step(monitor(record))
        if improved or not keep_best:
            best_state, best_epoch = _cpu_copy(model), epoch
        save_resume(
            workspace,
            kind,
            {
                "config": meta_config,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **({"generator": generator.get_state()} if generator is not None else {}),
                "torch_rng": torch.get_rng_state(),
                **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
                "history": history,
                "best_model": best_state,
                "best_epoch": best_epoch,
                "early_best": early.best,
                "early_bad_epochs": early.bad_epochs,
            },
        )
        if log is not None:
            log(dict(record))

    if not history:
        raise RuntimeError(f"{kind} training ran no epoch (epochs={epochs}, resumed at epoch {start_epoch})")
    model.load_state_dict(best_state)
    model.eval()
    return LoopResult(history, best_state, best_epoch, early.should_stop)
