"""MLflow records of a hyperparameter search (train/tune.py): a parent run, a child per trial.

Parent run (``isrec.role`` = ``tune``, ``isrec.tune_id`` = the search's name): the base config
as params without the searched keys, ``space.<key>`` (each dimension as ``--space`` writes it),
``tune.*`` (trials, scheduler, metric, mode, ...); artifact ``tune/space.json``; at the end
``best.<key>`` params (the best sample), metrics ``best_<metric>`` and ``trials_<status>``,
tag ``isrec.best_trial_run``, artifacts ``tune/best_config.json`` and ``tune/trials.csv``.

Child run per trial (``isrec.role`` = ``trial``, ``isrec.trial_id``, ``isrec.trial_status``
completed | stopped | failed): the trial's whole TrainConfig as params (as a training run logs
them, train/tracking/params.py) plus ``model_resolved.*`` and ``space.<key>`` (its sample);
every epoch's train/valid metrics with ``step=epoch``; the test metrics of a completed trial.
Runs are written with ``MlflowClient`` from the driver's Tune loop (trials run concurrently).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from train.config import resolve_config
from train.metrics import SPLIT_PREFIXES
from train.tracking.params import MAX_PARAM_CHARS, config_dict, flatten
from train.tracking.runs import float_metrics, metric_key, training_run
from train.tracking.store import TAG
from train.train_config import TrainConfig

# Plan, TrialRecord and TuneResult (train/tune.py) are typed Any here: train.tune imports this
# module, and the architecture test forbids the circle even for type checking.
Plan = TrialRecord = TuneResult = Any
EPOCH_KEYS = ("epoch_seconds",)  # epoch-row keys logged besides train_*/valid_*
FINAL_KEYS = ("best_epoch", "epochs_run")  # final-row keys logged besides test_*
BATCH = 100  # MLflow's most params per log_batch call


class TrialRuns:
    """The child runs of one search, under ``parent_run_id``."""

    def __init__(self, plan: Plan, tracking_uri: str, experiment_id: str, parent_run_id: str):
        self.plan, self.experiment_id, self.parent_run_id = plan, experiment_id, parent_run_id
        self.client = MlflowClient(tracking_uri)

    def start(self, record: TrialRecord, cfg: TrainConfig) -> None:
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            f"{TAG}role": "trial",
            f"{TAG}model": cfg.model,
            f"{TAG}tune_id": self.plan.name,
            f"{TAG}trial_id": record.trial_id,
        }
        run = self.client.create_run(self.experiment_id, run_name=cfg.name, tags=tags)
        record.run_id = run.info.run_id
        resolved = resolve_config(cfg.model, dict(cfg.model_params)).to_dict()
        params = {
            **flatten(config_dict(cfg)),
            **{f"model_resolved.{k}": v for k, v in resolved.items()},
            **{f"space.{k}": v for k, v in record.sample.items()},
        }
        self._log_params(record.run_id, params)

    def report(self, record: TrialRecord, result: Mapping[str, Any]) -> None:
        """One Tune result of the trial: an epoch's metrics, or the final test metrics."""
        if record.run_id is None:
            return
        if result.get("final"):
            keep = {k: v for k, v in result.items() if k.startswith("test_") or k in FINAL_KEYS}
            step = 0
        else:
            keep = {k: v for k, v in result.items() if _epoch_key(k)}
            step = int(result["epoch"])
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(k), v, now, step) for k, v in float_metrics(keep).items()]
        if metrics:
            self.client.log_batch(record.run_id, metrics=metrics)

    def end(self, record: TrialRecord) -> None:
        if record.run_id is None:
            return
        self.client.set_tag(record.run_id, f"{TAG}trial_status", record.status)
        if record.error:
            self.client.set_tag(record.run_id, f"{TAG}error", record.error)
        status = RunStatus.FAILED if record.status == "failed" else RunStatus.FINISHED
        self.client.set_terminated(record.run_id, RunStatus.to_string(status))

    def finish(self, result: TuneResult) -> None:
        """The search's outcome on the (active) parent run."""
        plan, best = result.plan, result.best
        mlflow.log_params({f"best.{k}": _text(v) for k, v in best.sample.items()})
        summary = {f"best_{plan.metric}": best.best(plan.metric)}
        for status in ("completed", "stopped", "failed"):
            summary[f"trials_{status}"] = float(sum(t.status == status for t in result.trials))
        mlflow.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
        if best.run_id:
            mlflow.set_tag(f"{TAG}best_trial_run", best.run_id)
        mlflow.log_dict(result.best_config, "tune/best_config.json")
        mlflow.log_text(trials_table(result).to_csv(index=False), "tune/trials.csv")

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _text(v)) for k, v in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[start : start + BATCH])


@contextlib.contextmanager
def search_run(plan: Plan, concurrency: int) -> Iterator[TrialRuns]:
    """The parent run of a search (FAILED when the block raises); yields its TrialRuns."""
    base = plan.base
    tags = {f"{TAG}model": base.model, f"{TAG}role": "tune", f"{TAG}tune_id": plan.name}
    with training_run(
        base.experiment, run_name=plan.name, tags=tags, tracking_uri=base.tracking_uri or None
    ) as run:
        searched = set(plan.space)
        params = {
            k: v
            for k, v in flatten(config_dict(base)).items()
            if k not in searched and k.removeprefix("model_params.") not in searched
        }
        search = plan.search
        params |= {f"space.{k}": d.text() for k, d in plan.space.items()}
        params |= {
            "tune.trials": search.trials,
            "tune.scheduler": search.scheduler,
            "tune.grace_period": search.grace_period,
            "tune.reduction_factor": search.reduction_factor,
            "tune.max_concurrent": concurrency,
            "tune.search_seed": search.search_seed,
            "tune.metric": plan.metric,
            "tune.mode": plan.mode,
        }
        mlflow.log_params({k: _text(v) for k, v in params.items()})
        mlflow.log_dict({k: d.text() for k, d in plan.space.items()}, "tune/space.json")
        yield TrialRuns(plan, run.tracking_uri, run.experiment_id, run.run_id)


def trials_table(result: TuneResult) -> pd.DataFrame:
    """One row per trial: id, run, status, epochs, best valid metric, test metrics, sample."""
    metric = result.plan.metric
    rows = []
    for t in result.trials:
        test = {k: v for k, v in (t.final or {}).items() if k.startswith("test_")}
        row = {"trial_id": t.trial_id, "run_id": t.run_id, "status": t.status}
        row |= {"epochs": len(t.rows), metric: t.best(metric), **test}
        rows.append(row | {f"space.{k}": v for k, v in t.sample.items()})
    return pd.DataFrame(rows)


def _epoch_key(name: str) -> bool:
    return name.startswith(SPLIT_PREFIXES) or name in EPOCH_KEYS


def _text(value: Any) -> str:
    return (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_CHARS]
