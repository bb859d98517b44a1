"""Hyperparameter search: Ray Tune over Ray Train runs, tracked in MLflow (jobs/tune.py).

``check(base, search)`` validates everything before Ray or MLflow starts (``ConfigError``, one
line): the search options, the space (train/tune_space.py), the base train config through the
training pre-flight, and a valid split to score trials on. ``run_tune(plan)`` then runs
``search.trials`` trials: each one a Tune function trial that launches one Ray Train run
(train.driver.run_training) with the sampled values applied to the base config; a Ray Train
callback relays every epoch's report to Tune, where ASHA (``--scheduler asha``) stops trials
whose ``valid_<early_stop_metric>`` (direction from the metric registry) trails at a rung.

Concurrency: the Tune trial itself holds no CPU (``TRIAL_RESOURCES``); its Ray Train workers do,
so at most as many trials run at once as the cluster holds worker groups (``--max-concurrent``
overrides).

The best trial (best valid metric at any epoch) gives the best config: a JSON object of
TrainConfig fields (the base's non-default options with the sampled values) that
``jobs/train.py --config FILE`` reads. With tracking, one MLflow parent run (role ``tune``) and a
child run per trial (train/tune_tracking.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from etl import storage
from etl.project import DATA_DIR
from train.driver import _ray_storage, connect_ray, run_training
from train.metrics import is_better, metric
from train.preflight import ConfigError, preflight
from train.train_config import TrainConfig
from train.tune_config import TuneJobConfig
from train.tune_space import Dimension, build_space, split_sample

log = logging.getLogger(__name__)

EPOCHS_DONE = "epochs_done"  # Tune's time attribute: epochs finished (1-based)
NOT_IN_BEST_CONFIG = ("name", "seeds", "hook_pid_file", "hook_at")  # per run, not settings
ALWAYS_IN_BEST_CONFIG = ("model", "lr", "batch_size", "weight_decay", "model_params")
# A Tune trial only waits on its Ray Train run, whose workers hold the CPUs; Tune refuses an
# empty request, so the trial reserves the memory of its (driver) process instead of a CPU.
TRIAL_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
SWEEP_SECONDS = 5.0  # how often the driver releases the placement groups of stopped trials


@dataclass
class Plan:
    """A checked search: what ``run_tune`` runs."""

    base: TrainConfig  # every trial starts from it (paths absolute: trials run elsewhere)
    search: TuneJobConfig
    space: dict[str, Dimension]
    name: str
    metric: str  # valid_<early_stop_metric>
    mode: str  # "max" | "min", from the metric registry
    best_config: Path


@dataclass
class TrialRecord:
    """One trial as the search saw it: its sample, every epoch's report, how it ended."""

    trial_id: str
    sample: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per epoch
    final: dict[str, Any] | None = None  # the run's last report (test metrics)
    status: str = "running"  # running | completed | stopped (by the scheduler) | failed
    error: str = ""
    run_id: str | None = None  # MLflow child run

    def best(self, name: str) -> float:
        """The best value of ``name`` over the epochs (nan when none)."""
        best = None
        for row in self.rows:
            value = float(row.get(name, math.nan))
            if is_better(name, value, best):
                best = value
        return math.nan if best is None else best


@dataclass
class TuneResult:
    plan: Plan
    trials: list[TrialRecord]
    best: TrialRecord
    best_config: dict[str, Any]
    mlflow_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The last line of jobs/tune.py."""
        counts = {s: sum(t.status == s for t in self.trials) for s in ("completed", "stopped")}
        value = self.best.best(self.plan.metric)
        return {
            "model": self.plan.base.model,
            "name": self.plan.name,
            "metric": self.plan.metric,
            "mode": self.plan.mode,
            "best_value": value if math.isfinite(value) else None,
            "best_config": str(self.plan.best_config),
            "best_params": self.best.sample,
            "best_trial": self.best.trial_id,
            "best_trial_run_id": self.best.run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "trials": len(self.trials),
            "completed": counts["completed"],
            "stopped_early": counts["stopped"],
            "failed": sum(t.status == "failed" for t in self.trials),
        }


# --- checks -------------------------------------------------------------------------------------
def check(base: TrainConfig, search: TuneJobConfig) -> Plan:
    """Every check before Ray or MLflow starts; raises ConfigError with one line."""
    try:
        search.validate()
        space = build_space(base.model, search.space, search.default_space)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if base.seeds != 1:
        raise ConfigError("--seeds: each trial trains one seed; pass --seeds to jobs/train.py")
    if search.scheduler == "asha" and search.grace_period > base.epochs:
        raise ConfigError(f"--grace-period {search.grace_period} exceeds --epochs {base.epochs}")
    base = replace(base, lake=_absolute(base.lake), storage_path=_absolute(base.storage_path))
    prepared = preflight(base)  # lake, spec, model and early-stop metric
    if "valid" not in prepared.files:
        raise ConfigError(f"lake {base.lake} has no valid split: trials are scored on it")
    name = base.name or f"tune-{base.model}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(search.best_config or DATA_DIR / "tune" / name / "best_config.json")
    if storage.is_uri(str(out)) or out.is_dir():
        raise ConfigError(f"--best-config {out}: needs a local file path")
    key = f"valid_{base.early_stop_metric}"
    return Plan(base, search, space, name, key, metric(key).mode, out.resolve())


def _absolute(path: str) -> str:
    return path if not path or storage.is_uri(path) else str(Path(path).resolve())


# --- trials -------------------------------------------------------------------------------------
def apply_sample(base: TrainConfig, sample: dict[str, Any]) -> TrainConfig:
    """``base`` with a trial's sampled values (optimizer fields and model params)."""
    train, params = split_sample(sample)
    return replace(base, **train, model_params={**base.model_params, **params})


def trial_config(base: TrainConfig, sample: dict[str, Any], name: str) -> TrainConfig:
    """What one trial trains: one seed, its own run name, tracked by the search, not itself."""
    return replace(apply_sample(base, sample), name=name, seeds=1, track=False, register=False)


class EpochRelay(TuneReportCallback):
    """Ray Train callback (on the run's controller): every report goes to the Tune trial, with
    ``epochs_done`` on the epoch reports (the final report, test metrics, has none)."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        row = dict(metrics[0])
        if "epoch" in row and not row.get("final"):
            row[EPOCHS_DONE] = int(row["epoch"]) + 1
        super().after_report(run_context, [row], checkpoint)


def run_trial(sample: dict[str, Any], base: TrainConfig, name: str) -> None:
    """The Tune function trial: one Ray Train run of the sampled config."""
    trial_id = tune.get_context().get_trial_id()
    run_training(trial_config(base, sample, f"{name}-{trial_id}"), callbacks=[EpochRelay()])


class TrialRecorder(tune.Callback):
    """Tune callback on the driver: records every trial (and logs it to MLflow via ``runs``,
    a train.tune_tracking.TrialRuns, when tracking); releases the CPUs of stopped trials."""

    def __init__(self, plan: Plan, runs: Any | None = None):
        self.plan, self.runs = plan, runs
        self.records: dict[str, TrialRecord] = {}
        self._swept = 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._swept >= SWEEP_SECONDS:
            self._swept = time.monotonic()
            release_orphaned_groups()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = TrialRecord(trial.trial_id, dict(trial.config))
        self.records[trial.trial_id] = record
        if self.runs is not None:
            cfg = trial_config(self.plan.base, record.sample, f"{self.plan.name}-{trial.trial_id}")
            self.runs.start(record, cfg)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        record = self.records[trial.trial_id]
        if result.get("final"):
            record.final = dict(result)
        elif EPOCHS_DONE in result:
            record.rows.append(dict(result))
        else:
            return
        if self.runs is not None:
            self.runs.report(record, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.records[trial.trial_id]
        record.status = "completed" if record.final is not None else "stopped"
        if self.runs is not None:
            self.runs.end(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.records.setdefault(trial.trial_id, TrialRecord(trial.trial_id, {}))
        record.status, record.error = "failed", _trial_error(trial)
        if self.runs is not None:
            self.runs.end(record)


def release_orphaned_groups() -> int:
    """Remove the placement groups whose creating actor is dead; returns how many.

    When ASHA stops a trial, Tune kills the trial's process and with it the Ray Train
    controller it owns, but not the controller's worker placement group: Ray Train's own
    cleaner asks the dashboard's State API, which a local cluster without the dashboard (or a
    machine running several Ray instances) cannot answer, so the group would hold its CPUs
    until the job ends and starve the next trials. Ray's public placement-group table omits the
    creator, hence the GCS records (Ray pinned at 2.55)."""
    import ray
    from ray._private.state import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData as Record
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        record = Record.FromString(raw)
        by_driver = ray.ActorID(record.creator_actor_id).is_nil()  # Tune's own trial groups
        if record.is_detached or by_driver or not record.creator_actor_dead:
            continue
        if record.state in (Record.PENDING, Record.CREATED, Record.RESCHEDULING):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(record.placement_group_id)))
            removed += 1
    if removed:
        log.info("released %d placement group(s) of stopped trials", removed)
    return removed


def _trial_error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial failed"


# --- the search ---------------------------------------------------------------------------------
def concurrency(plan: Plan) -> int:
    """Trials at once: ``--max-concurrent``, else the worker groups the cluster holds."""
    import ray

    if plan.search.max_concurrent:
        return plan.search.max_concurrent
    base, resources = plan.base, ray.cluster_resources()
    fits = int(resources.get("CPU", 0) // (base.num_workers * base.cpus_per_worker))
    if base.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // base.num_workers))
    return max(1, min(fits, plan.search.trials))


def run_tune(plan: Plan) -> TuneResult:
    """Run the checked search; with tracking, inside one MLflow parent run."""
    connect_ray(plan.base)
    if not plan.base.track:
        return _search(plan, None)
    from train import tune_tracking  # MLflow only when tracking

    with tune_tracking.search_run(plan, concurrency(plan)) as runs:
        result = _search(plan, runs)
        runs.finish(result)
    return result


def _search(plan: Plan, runs: Any | None) -> TuneResult:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search, base = plan.search, plan.base
    scheduler = FIFOScheduler()
    if search.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr=EPOCHS_DONE,
            max_t=base.epochs,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
            stop_last_trials=False,  # a trial reaching max_t still reports its test metrics
        )
    recorder = TrialRecorder(plan, runs)
    trainable = tune.with_parameters(run_trial, base=base, name=plan.name)
    tuner = tune.Tuner(
        tune.with_resources(trainable, TRIAL_RESOURCES),
        param_space={k: d.sampler() for k, d in plan.space.items()},
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            scheduler=scheduler,
            num_samples=search.trials,
            search_alg=BasicVariantGenerator(
                max_concurrent=concurrency(plan), random_state=search.search_seed
            ),
            trial_name_creator=lambda t: f"{base.model}-{t.trial_id}",
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            **_ray_storage(base.storage_path),
            callbacks=[recorder],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
    tuner.fit()
    release_orphaned_groups()  # the last stopped trials' groups: the cluster is free again
    return _result(plan, list(recorder.records.values()), runs)


def _result(plan: Plan, trials: list[TrialRecord], runs: Any | None) -> TuneResult:
    best = None
    for record in trials:
        value = record.best(plan.metric)
        if is_better(plan.metric, value, best.best(plan.metric) if best else None):
            best = record
    if best is None:
        errors = "; ".join(sorted({t.error for t in trials if t.error})) or "no valid metric"
        raise RuntimeError(f"no trial of {plan.name} reported {plan.metric}: {errors}")
    config = best_config(plan.base, best.sample)
    plan.best_config.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.best_config.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(plan.best_config)  # atomic: a reader never sees half a file
    log.info("best trial %s: %s = %.4f", best.trial_id, plan.metric, best.best(plan.metric))
    print(f"best config: {plan.best_config}", flush=True)
    return TuneResult(plan, trials, best, config, runs.parent_run_id if runs else None)


def best_config(base: TrainConfig, sample: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields ``jobs/train.py --config`` needs to train the sampled config: the
    tuned ones and every other one that differs from its default (per-run fields left out)."""
    cfg = apply_sample(base, sample)
    default = TrainConfig()
    out = {}
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in NOT_IN_BEST_CONFIG:
            continue
        if f.name in ALWAYS_IN_BEST_CONFIG or value != getattr(default, f.name):
            out[f.name] = value
    return out
