"""Comparisons: one parent run per model, one child run per seed, the best seed registered.

``comparison_run`` opens the parent run (``isrec.role`` = ``comparison``) and yields a
``Comparison``; ``Comparison.seed_run(seed)`` opens a child run per seed (``isrec.role`` =
``seed``, ``isrec.seed``) whose ``log_result`` is collected. When the block ends, the parent
gets the mean and sample std of every test metric over the seeds (``test_<name>``, the name its
children use, so one column of the runs table covers both, and ``test_<name>_std``;
``comparison/seeds.csv``) and the seeds' datasets; with ``register_best``, the best seed on
``metric`` (direction from the metric registry, train/metrics.py) is registered as the new
challenger of ``isrec-<model>`` (tag ``isrec.best_seed_run``). A crash in a seed ends that run
and the parent FAILED. Parents of different models sharing a ``comparison_id`` are what the UI
compares side by side (filter on the tag).
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlflow
import pandas as pd

from train.metrics import DEFAULT_METRIC, is_better, summarize_seeds
from train.tracking.params import log_config
from train.tracking.runs import LoggedTraining, RunHandle, metric_key, training_run
from train.tracking.store import DEFAULT_EXPERIMENT, TAG
from train.train_config import TrainConfig


@dataclass
class Comparison:
    run_id: str
    model_name: str
    comparison_id: str
    experiment: str
    tracking_uri: str
    metric: str = DEFAULT_METRIC
    register_best: bool = True
    seeds: list[LoggedTraining] = field(default_factory=list)

    @contextlib.contextmanager
    def seed_run(self, seed: int, run_name: str | None = None) -> Iterator[RunHandle]:
        """A child run for one seed; what its ``log_result`` logs joins the comparison (the
        best seed is registered when the comparison ends)."""
        tags = {
            f"{TAG}model": self.model_name,
            f"{TAG}comparison_id": self.comparison_id,
            f"{TAG}seed": str(seed),
            f"{TAG}role": "seed",
        }
        with training_run(
            self.experiment,
            run_name=run_name or f"{self.model_name}-seed{seed}",
            parent_run_id=self.run_id,
            tags=tags,
            tracking_uri=self.tracking_uri,
        ) as run:
            yield run
        self.seeds.extend(run.logged)

    def summarize(self) -> dict[str, float]:
        """Mean and sample std (train.metrics.summarize_seeds) over seeds of every test metric,
        logged on the parent run as test_<name> (the mean: the children's name, so one column
        of the runs table covers parents and children) and test_<name>_std; the seeds' data
        inputs are logged on the parent too."""
        summary: dict[str, float] = {"n_seeds": float(len(self.seeds))}
        for name, (mean, std) in summarize_seeds([s.test_metrics for s in self.seeds]).items():
            key = f"test_{metric_key(name)}"
            summary |= {key: mean, f"{key}_std": std}
        mlflow.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
        inputs = {d.digest: d for s in self.seeds for d in s.datasets}
        for dataset in inputs.values():
            mlflow.log_input(dataset, context="training")
        table = pd.DataFrame([{"run_id": s.run_id, **s.test_metrics} for s in self.seeds])
        mlflow.log_text(table.to_csv(index=False), "comparison/seeds.csv")
        return summary

    def best(self) -> LoggedTraining | None:
        """The seed with the best test ``metric`` in its direction; None when no seed has it."""
        best: LoggedTraining | None = None
        for s in self.seeds:
            value = s.test_metrics.get(self.metric)
            than = best.test_metrics[self.metric] if best is not None else None
            if value is not None and is_better(self.metric, value, than):
                best = s
        return best


@contextlib.contextmanager
def comparison_run(
    model_name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    comparison_id: str | None = None,
    config: TrainConfig | None = None,
    metric: str = DEFAULT_METRIC,
    register_best: bool = True,
    tracking_uri: str | None = None,
) -> Iterator[Comparison]:
    """Parent run of one model's seeds (see the module docstring); ``config`` is logged on it."""
    cid = comparison_id or uuid.uuid4().hex[:12]
    tags = {f"{TAG}model": model_name, f"{TAG}comparison_id": cid, f"{TAG}role": "comparison"}
    with training_run(
        experiment, run_name=f"{model_name}-{cid}", tags=tags, tracking_uri=tracking_uri
    ) as run:
        if config is not None:
            log_config(config)
        cmp = Comparison(
            run.run_id, model_name, cid, experiment, run.tracking_uri, metric, register_best
        )
        yield cmp
        if cmp.seeds:
            cmp.summarize()
            best = cmp.best()
            if register_best and best is not None:
                mlflow.set_tag(f"{TAG}best_seed_run", best.run_id)
                run.tags |= {f"{TAG}best_seed_run": best.run_id}
                run.register(best)
