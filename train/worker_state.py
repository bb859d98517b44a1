"""What one Ray Train rank holds during a run, shared by the worker loop, evaluation and
checkpoints."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.data import ShardPlan
from train.train_config import TrainConfig

log = logging.getLogger("train.worker")


@dataclass
class LoopState:
    """What a checkpoint carries besides the weights (state.json)."""

    next_epoch: int = 0
    global_step: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Worker:
    """Everything one rank holds during a run."""

    cfg: TrainConfig
    spec: FeatureSpec
    plans: dict[str, ShardPlan]
    rank: int
    world: int
    device: torch.device
    module: nn.Module  # the plain model (DDP's .module)
    ddp: nn.Module  # what the training forward runs through
    optimizer: torch.optim.Optimizer
    state: LoopState
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None

    def log0(self, message: str, *args: Any) -> None:
        """Log on rank 0 only (every rank computes the same numbers)."""
        if self.rank == 0:
            log.info(message, *args)

    def autocast(self):
        if self.cfg.bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
