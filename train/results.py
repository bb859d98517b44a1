"""Typed results of training: what the driver returns and what tracking logs.

``TrainResult`` is one finished run (one seed); ``SeedsResult`` all seeds of one model with the
mean and std of their test metrics (and the 95% intervals the tables print), and the JSON line
jobs/train.py prints last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from train.metrics import seed_intervals
from train.train_config import TrainConfig


@dataclass
class TrainResult:
    """One finished run (one seed): everything a tracker needs to log it."""

    test_metrics: dict[str, float]
    history: list[dict[str, float]]  # one row per epoch: epoch, train_loss, valid_<metric>...
    best_checkpoint_path: str  # final Ray checkpoint: model.pt = the best epoch's weights
    predictions_path: str | None  # parquet: keys, labels and predictions of every test row
    config: TrainConfig
    run_path: str  # Ray Train run folder (per-epoch checkpoints)
    best_epoch: int | None  # epoch (0-based) of the best valid metric (last epoch w/o valid)
    resumed_from_epoch: int | None  # first epoch of the last attempt when it resumed
    epochs_run: int
    stopped_early: bool
    samples_version: int | None  # Delta version of LAKE/samples read
    lake: str


@dataclass
class SeedsResult:
    results: list[TrainResult]
    summary: dict[str, tuple[float, float]]  # metric -> (mean, std) over seeds

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """Metric -> (mean, 95% half-width; nan with one seed) over the seeds' test metrics."""
        return seed_intervals([r.test_metrics for r in self.results])

    def to_json(self) -> dict[str, Any]:
        """The final line of jobs/train.py: metrics (mean/std with several seeds) and runs."""
        if len(self.results) == 1:
            metrics: dict[str, Any] = finite(self.results[0].test_metrics)
        else:
            half = self.intervals
            metrics = {
                k: {"mean": _num(m), "std": _num(s), "ci95": _num(half[k][1])}
                for k, (m, s) in self.summary.items()
            }
        first = self.results[0]
        return {
            "model": first.config.model,
            "seeds": [r.config.seed for r in self.results],
            "metrics": metrics,
            "runs": [
                {
                    "seed": r.config.seed,
                    "test_metrics": finite(r.test_metrics),
                    "best_epoch": r.best_epoch,
                    "best_checkpoint": r.best_checkpoint_path,
                    "predictions": r.predictions_path,
                    "run_path": r.run_path,
                }
                for r in self.results
            ],
        }


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics with nan/inf as None (valid JSON)."""
    return {k: _num(v) for k, v in metrics.items()}
