"""One MLflow run per training: what a finished ``TrainResult`` records, and FAILED on crash.

``training_run`` opens a run (tagged ``isrec.role`` = ``seed`` under a parent, else ``single``,
unless the tags say otherwise) that ends FINISHED, or FAILED (KILLED on Ctrl-C) with the error as
tag ``isrec.error`` and artifact ``error/traceback.txt``. Inside it, ``RunHandle.log_result``
records a ``train.results.TrainResult``:

- params: the flattened config (params.py) and ``model_resolved.<name>``, every model
  hyperparameter after defaults, as the logged model uses them; lineage (lineage.py);
- metrics: per-epoch history keys as given (``train_loss``, ``valid_ctr_auc``; nested dicts
  flattened with ``_``) with ``step=epoch``, and the final test metrics as ``test_<name>``;
- plots (plots.py), environment (environment.py), the test predictions (tag
  ``isrec.predictions_path``; artifacts when small enough);
- the model: the checkpoint's weights as the pyfunc model (train/pyfunc.py) with an input
  example of real sample rows, named ``<model>-s<seed>-<run id[:8]>``, logged before the metrics
  so that the ones linked to it are the best epoch's history row and the test metrics (with the
  samples dataset), not MLflow's default of step 0;
- the below-chance guard (guard.py): tag ``isrec.below_chance`` and a warning.

``RunHandle.register`` then registers the logged model as a new version of ``isrec-<model>``
with alias ``challenger`` (train/registry.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset import Dataset
from mlflow.entities import Metric, RunStatus
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from etl import storage
from etl.online import FeatureBundle
from etl.spec import FeatureSpec
from etl.tables import SAMPLES
from train import pyfunc, registry
from train.config import resolve_config
from train.results import TrainResult
from train.tracking.environment import log_environment
from train.tracking.guard import guard_below_chance
from train.tracking.lineage import (
    TableRead,
    example_rows,
    lineage_tables,
    log_lineage,
    samples_read,
)
from train.tracking.params import flatten, log_config
from train.tracking.plots import log_plots
from train.tracking.store import DEFAULT_EXPERIMENT, TAG, configure, ensure_experiment

MAX_PREDICTIONS_ARTIFACT_BYTES = 20 * 1024 * 1024
BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch

log = logging.getLogger(__name__)


@dataclass
class LoggedTraining:
    """What ``log_result`` produced."""

    run_id: str
    model_uri: str
    model_name: str
    test_metrics: dict[str, float]
    samples_version: int | None = None
    registered_model: str | None = None
    version: str | None = None
    datasets: list[Dataset] = field(default_factory=list)  # inputs logged (lineage.py)


@dataclass
class RunHandle:
    """The active training run; ``log_result`` records a finished TrainResult into it."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)
    logged: list[LoggedTraining] = field(default_factory=list)  # what log_result produced

    def log_result(self, result: TrainResult, *, beta: float = 0.0) -> LoggedTraining:
        """Config, lineage, environment, metrics, plots, predictions and the model of
        ``result``; the model gets ``beta`` as its default ranking beta. Registers nothing."""
        log_config(result.config)
        name = result.config.model
        params = resolve_config(name, dict(result.config.model_params)).to_dict()
        mlflow.set_tags({f"{TAG}model": name})
        mlflow.log_params({f"model_resolved.{k}": json.dumps(v) for k, v in params.items()})
        spec, reads, datasets = _log_data(result)
        log_environment()
        # the model first: MLflow links the run's metrics of step 0 to a model logged after them
        model_info = _log_model(result, spec, reads, params, beta, self.run_id)
        samples = samples_read(reads)
        dataset = datasets[reads.index(samples)] if samples and datasets else None
        metrics = _log_metrics_and_plots(result, model_info.model_id, dataset)
        guard_below_chance(result)
        logged = LoggedTraining(
            self.run_id, model_info.model_uri, name, metrics, samples.version if samples else None
        )
        logged.datasets = datasets
        self.logged.append(logged)
        return logged

    def register(self, logged: LoggedTraining) -> LoggedTraining:
        """Register ``logged``'s model as the new challenger of ``isrec-<model>``; the version
        copies a few tags of the run that logged it (train/registry.py)."""
        version = registry.register_version(
            logged.model_uri,
            logged.model_name,
            run_id=logged.run_id,
            tracking_uri=self.tracking_uri,
        )
        logged.registered_model, logged.version = version.name, str(version.version)
        mlflow.set_tags(
            {f"{TAG}registered_model": version.name, f"{TAG}model_version": logged.version}
        )
        return logged


@contextlib.contextmanager
def training_run(
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> Iterator[RunHandle]:
    """An MLflow run that ends FINISHED, or FAILED (with the error as tag and artifact) when
    the block raises; the exception propagates."""
    uri = configure(tracking_uri)
    experiment_id = ensure_experiment(experiment, uri)
    role = "seed" if parent_run_id else "single"
    all_tags = {f"{TAG}role": role} | {k: str(v) for k, v in (tags or {}).items()}
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=mlflow.active_run() is not None,
        parent_run_id=parent_run_id,
        tags=all_tags,
    )
    try:
        yield RunHandle(run.info.run_id, experiment_id, uri, all_tags)
    except BaseException as exc:
        _end_failed(exc)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _end_failed(exc: BaseException) -> None:
    """Record the error on the active run and end it FAILED (KILLED on Ctrl-C)."""
    with contextlib.suppress(Exception):
        mlflow.set_tag(f"{TAG}error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    mlflow.end_run(RunStatus.to_string(status))


# --- lineage and model -----------------------------------------------------------------------
def _log_data(result: TrainResult) -> tuple[FeatureSpec, list[TableRead], list[Dataset]]:
    """Lineage of the result: its lake, the lake's spec, the samples version it read (the
    spec's table versions when the result has none) and the datasets logged for them."""
    spec = FeatureSpec.load(result.lake)
    versions = None
    if result.samples_version is not None:
        versions = {SAMPLES: int(result.samples_version)}
    reads = lineage_tables(result.lake, versions, spec)
    datasets = log_lineage(result.lake, reads, spec)
    return spec, reads, datasets


def model_name(result: TrainResult, run_id: str) -> str:
    """The logged model's name, distinct in the experiment's model list: ``rnn_mtl-s0-1a2b3c4d``
    (model, seed, the run's id)."""
    return f"{result.config.model}-s{result.config.seed}-{run_id[:8]}"


def _log_model(
    result: TrainResult,
    spec: FeatureSpec,
    reads: list[TableRead],
    params: dict[str, Any],
    beta: float,
    run_id: str,
) -> ModelInfo:
    ckpt = result.best_checkpoint_path
    mlflow.set_tag(f"{TAG}checkpoint", ckpt)
    with tempfile.TemporaryDirectory(prefix="isrec-ckpt-") as tmp:
        state = pyfunc.load_checkpoint_state(storage.localize(ckpt, tmp))
    rows = example_rows(reads, spec)
    example = pyfunc.input_example(rows, spec) if rows is not None else None
    bundle = _feature_bundle(result.lake)
    model = result.config.model
    name = model_name(result, run_id)
    return pyfunc.log_pyfunc_model(
        model, params, state, spec, example, beta=beta, name=name, bundle=bundle
    )


def _feature_bundle(lake: str) -> FeatureBundle | None:
    """The lake's vocabularies and ad table for raw requests; None (encoded rows only) for a
    lake that has none, e.g. Ali-CCP without sessions."""
    try:
        return FeatureBundle.from_lake(lake)
    except (ValueError, OSError, KeyError) as exc:
        log.warning("model logged without a feature bundle (raw requests off): %s", exc)
        return None


# --- metrics and predictions -----------------------------------------------------------------
def float_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``raw`` (nested dicts flattened with ``_``) as floats."""
    return {k: float(v) for k, v in flatten(raw, sep="_").items() if _is_number(v)}


def history_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch rows as float metrics, each with its ``epoch`` (the row's index if absent)."""
    out = []
    for i, row in enumerate(history):
        flat = float_metrics(row)
        flat.setdefault("epoch", float(i))
        out.append(flat)
    return out


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.number)
        and not isinstance(value, bool)
        and (math.isfinite(float(value)))
    )


def metric_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_history(
    rows: list[dict[str, float]],
    best_epoch: int | None = None,
    model_id: str | None = None,
    dataset: Dataset | None = None,
) -> None:
    """Each epoch's row at ``step=epoch`` into the active run; the row of ``best_epoch`` (the
    weights the model carries) is linked to the logged model ``model_id``. Through the client:
    ``mlflow.log_metrics`` would link every step-0 metric to a model logged at step 0."""
    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    batch = []
    for row in rows:
        step = int(row["epoch"])
        link: dict[str, Any] = {}
        if step == best_epoch and model_id:
            link = {"model_id": model_id}
            if dataset is not None:
                link |= {"dataset_name": dataset.name, "dataset_digest": dataset.digest}
        batch += [
            Metric(metric_key(k), v, now, step, **link) for k, v in row.items() if k != "epoch"
        ]
    client = MlflowClient()
    for start in range(0, len(batch), BATCH_METRICS):
        client.log_batch(run_id, metrics=batch[start : start + BATCH_METRICS])


def best_epoch(result: TrainResult, rows: list[dict[str, float]]) -> int | None:
    """The epoch whose weights the model carries: the best one, else the last one."""
    if result.best_epoch is not None:
        return result.best_epoch
    return int(rows[-1]["epoch"]) if rows else None


def _log_metrics_and_plots(
    result: TrainResult, model_id: str | None = None, dataset: Dataset | None = None
) -> dict[str, float]:
    """History (best epoch linked to the model), test metrics (linked), plots, predictions."""
    rows = history_rows(result.history)
    log_history(rows, best_epoch(result, rows), model_id, dataset)
    metrics = float_metrics(result.test_metrics)
    test = {f"test_{metric_key(k)}": v for k, v in metrics.items()}
    mlflow.log_metrics(test, model_id=model_id, dataset=dataset)
    location = result.predictions_path
    with tempfile.TemporaryDirectory(prefix="isrec-preds-") as tmp:
        try:
            preds = Path(storage.localize(location, tmp)) if location else None
        except FileNotFoundError:
            preds = None
        log_plots(rows, preds)
        log_predictions(preds, location)
    return metrics


def log_predictions(predictions: Path | None, location: str | None = None) -> None:
    """Tag where the predictions live (``location``, default the local path) and log them
    as artifacts when small enough."""
    if predictions is None or not predictions.exists():
        return
    tag = location if location and storage.is_uri(location) else str(predictions.resolve())
    mlflow.set_tag(f"{TAG}predictions_path", tag)
    size = (
        sum(p.stat().st_size for p in predictions.rglob("*"))
        if predictions.is_dir()
        else (predictions.stat().st_size)
    )
    if size <= MAX_PREDICTIONS_ARTIFACT_BYTES:
        if predictions.is_dir():
            mlflow.log_artifacts(str(predictions), "predictions")
        else:
            mlflow.log_artifact(str(predictions), "predictions")
