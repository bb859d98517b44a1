"""MLflow tracking for training runs: config, lineage, metrics, plots, environment, model.

Where runs go: ``tracking_uri`` when given (jobs pass ``--tracking-uri``), else the
``MLFLOW_TRACKING_URI`` environment variable, else a local SQLite store at
``<project>/data/mlflow/mlflow.db`` with artifacts in ``<project>/data/mlflow/artifacts``
(works with no server; ``mlflow ui --backend-store-uri sqlite:///...`` browses it).

Use from the driver (jobs/train.py)::

    with comparison_run(cfg.model, experiment="isrec", comparison_id="cmp-1", config=cfg) as cmp:
        for seed in seeds:
            with cmp.seed_run(seed) as run:        # a crash marks this run (and the parent) FAILED
                result = train_one(cfg, seed)       # train.loop's TrainResult
                run.log_result(result)              # lake, spec, samples version: from result
    # on exit: mean/std of the seeds' test metrics on the parent run, and the best seed's model
    # registered as a new version of isrec-rnn_mtl with alias "challenger"

or, for results already finished: ``log_comparison(seeds_result.results, "isrec")`` (several
seeds) or ``log_training_run(result, experiment="isrec")`` (one run, registered as challenger).

Params: the flattened config, plus ``model_resolved.<name>`` (every model hyperparameter after
defaults, as the logged model uses them) and ``data.*`` (lineage).
Metric names: final test metrics ``test_<name>``; per-epoch history keys as given (e.g.
``train_loss``, ``valid_ctr_auc``; nested dicts are flattened with ``_``) with ``step=epoch``.
Tags: ``isrec.model``, ``isrec.comparison_id``, ``isrec.seed``, ``isrec.role``
(comparison | seed | single), ``isrec.data.<table>.version`` / ``.path``, ``isrec.env.*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from etl import storage
from etl.spec import FeatureSpec

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = PROJECT_ROOT / "data" / "mlflow"
DEFAULT_EXPERIMENT = "isrec"
DEFAULT_METRIC = "ctcvr_auc"
TAG = "isrec."
ENV_PACKAGES = (
    "torch",
    "ray",
    "pyspark",
    "delta-spark",
    "petastorm",
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
)
MAX_PLOT_ROWS = 500_000
MAX_PREDICTIONS_ARTIFACT_BYTES = 20 * 1024 * 1024
MAX_PARAM_CHARS = 6000


# --- where runs go ---------------------------------------------------------------------------
def default_tracking_uri() -> str:
    return f"sqlite:///{DEFAULT_DIR / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite file (``<dir>/artifacts``); None lets the store/server decide."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    return (db.parent / "artifacts").resolve().as_uri()


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the resolved store; returns its URI."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Experiment id for ``name``, created (artifacts beside a SQLite store) when missing."""
    uri = configure(tracking_uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = artifact_root(uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# --- data lineage ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TableRead:
    name: str
    path: str
    version: int


def lineage_tables(
    lake: str | Path, lineage: Mapping[str, Any] | None, spec: FeatureSpec
) -> list[TableRead]:
    """Tables read: ``lineage`` maps table -> Delta version (or {"version", "path"});
    None falls back to the versions recorded in the feature spec."""
    entries = dict(lineage) if lineage is not None else dict(spec.tables)
    reads = []
    for name, value in sorted(entries.items()):
        info = value if isinstance(value, Mapping) else {"version": value}
        path = str(info.get("path") or storage.join(lake, name))
        reads.append(TableRead(name, _absolute(path), int(info["version"])))
    return reads


def log_lineage(lake: str | Path, reads: list[TableRead], spec: FeatureSpec) -> None:
    params = {"data.lake": _absolute(lake), "data.source": spec.source}
    params |= {"data.max_len": spec.max_len, "data.fields": ",".join(f.name for f in spec.fields)}
    tags = {}
    for r in reads:
        params |= {f"data.{r.name}.path": r.path, f"data.{r.name}.version": r.version}
        tags |= {f"{TAG}data.{r.name}.path": r.path, f"{TAG}data.{r.name}.version": str(r.version)}
    mlflow.log_params(params)
    mlflow.set_tags(tags)
    mlflow.log_dict(json.loads(spec.to_json()), "data/feature_spec.json")
    with contextlib.suppress(Exception):  # lineage params/tags above are the record of truth
        _log_inputs(reads)


def _log_inputs(reads: list[TableRead]) -> None:
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    for r in reads:
        digest = hashlib.sha1(f"{r.path}@{r.version}".encode()).hexdigest()[:16]
        source = DeltaDatasetSource(path=r.path, delta_table_version=r.version)
        # the name carries the version: DeltaDatasetSource.to_dict drops a version of 0
        dataset = MetaDataset(source=source, name=f"{r.name}@v{r.version}", digest=digest)
        tags = {"isrec.table": r.name, "isrec.delta_version": str(r.version)}
        mlflow.log_input(dataset, context="training", tags=tags)


def _absolute(path: str | Path) -> str:
    return str(path) if storage.is_uri(path) else str(Path(path).resolve())


def delta_files(table: str | Path, version: int | None = None) -> list[str]:
    """Data files of a Delta table at ``version`` (latest when None), read from its log.

    ``table`` is a local folder or an object-store URI (etl/storage.py)."""
    from train.data import delta_log

    commits, checkpoints = delta_log(table)
    last = max(commits) if commits else -1
    target = last if version is None else version
    start = max((v for v in checkpoints if v <= target), default=-1)
    active: dict[str, None] = {}
    if start >= 0:
        fs, inner = storage.filesystem(checkpoints[start])
        adds = pq.read_table(inner, columns=["add"], filesystem=fs).to_pandas()["add"].dropna()
        active = dict.fromkeys(a["path"] for a in adds)
    for v in sorted(c for c in commits if start < c <= target):
        for line in storage.read_text(commits[v]).splitlines():
            action = json.loads(line)
            if "add" in action:
                active[action["add"]["path"]] = None
            elif "remove" in action:
                active.pop(action["remove"]["path"], None)
    return [storage.join(table, unquote(p)) for p in active]


def read_sample_rows(
    table: str | Path, spec: FeatureSpec, version: int | None = None, n: int = 5
) -> pd.DataFrame:
    """A few real rows of the samples table (model inputs only), without Spark."""
    cols = [f.name for f in spec.fields] + ([spec.length_field] if spec.sequence else [])
    for file in delta_files(table, version):
        fs, inner = storage.filesystem(file)
        frame = pq.read_table(inner, columns=cols, filesystem=fs).to_pandas()
        if len(frame):
            return frame.head(n)
    raise FileNotFoundError(f"no rows in Delta table {table} (version {version})")


# --- environment -----------------------------------------------------------------------------
def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ENV_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            env[pkg] = version(pkg)
    env |= git_info()
    return env


def git_info() -> dict[str, str]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "-uno")))}


def log_environment() -> None:
    env = environment()
    tags = {f"{TAG}env.{k}": v for k, v in env.items()}
    if "git_commit" in env:
        tags["mlflow.source.git.commit"] = env["git_commit"]
    mlflow.set_tags(tags)
    mlflow.log_dict(env, "environment/environment.json")


# --- config ----------------------------------------------------------------------------------
def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict from a pydantic model, dataclass, mapping or object with to_dict()."""
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        raw = config.model_dump(mode="json")
    elif is_dataclass(config) and not isinstance(config, type):
        raw = asdict(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    elif hasattr(config, "to_dict"):
        raw = config.to_dict()
    else:
        raw = dict(vars(config))
    return json.loads(json.dumps(raw, default=str))


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, name, sep)
        else:
            flat[name] = value
    return flat


def log_config(config: Any) -> dict[str, Any]:
    """Every config value as a param (flattened), plus the whole config as JSON and YAML."""
    cfg = config_dict(config)
    params = {}
    for key, value in flatten(cfg).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[key] = text[:MAX_PARAM_CHARS]
    if params:
        mlflow.log_params(params)
    mlflow.log_dict(cfg, "config/config.json")
    mlflow.log_dict(cfg, "config/config.yaml")
    return cfg


# --- the training result ---------------------------------------------------------------------
def result_field(result: Any, *names: str, default: Any = None) -> Any:
    """First present attribute (or key) of ``result`` among ``names``."""
    for name in names:
        value = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
        if value is not None:
            return value
    return default


def test_metrics(result: Any) -> dict[str, float]:
    raw = result_field(result, "test_metrics", "metrics", "final_metrics", default={})
    return {k: float(v) for k, v in flatten(raw, sep="_").items() if _is_number(v)}


def history(result: Any) -> list[dict[str, float]]:
    rows = result_field(result, "history", "epochs", default=[]) or []
    out = []
    for i, row in enumerate(rows):
        raw = config_dict(row)
        flat = {k: float(v) for k, v in flatten(raw, sep="_").items() if _is_number(v)}
        flat.setdefault("epoch", float(i))
        out.append(flat)
    return out


def checkpoint_path(result: Any) -> str | None:
    """The result's checkpoint: a local folder or an object-store URI."""
    ckpt = result_field(
        result, "best_checkpoint_path", "best_checkpoint", "checkpoint_path", "checkpoint"
    )
    if ckpt is None:
        return None
    return str(getattr(ckpt, "path", ckpt))


def predictions_path(result: Any) -> str | None:
    """The result's test predictions (parquet): a local path or an object-store URI."""
    path = result_field(result, "predictions_path", "predictions")
    return str(path) if isinstance(path, str | os.PathLike) else None


def model_identity(
    cfg: Mapping[str, Any], model_name: str | None, model_params: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """(model name, resolved params) from explicit args, else the config's model /
    model_params; params are completed with the model's defaults (train.config)."""
    name = model_name or cfg.get("model") or cfg.get("model_name")
    if isinstance(name, Mapping):
        name = name.get("name")
    if not name:
        raise ValueError("model name unknown: pass model_name= or a config with a 'model' field")
    params = model_params if model_params is not None else cfg.get("model_params")
    if params is None:
        params = cfg.get("params") or {}
    from train.config import resolve_config

    return str(name), resolve_config(str(name), dict(params)).to_dict()


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.number)
        and not isinstance(value, bool)
        and (math.isfinite(float(value)))
    )


def metric_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_history(rows: list[dict[str, float]]) -> None:
    for row in rows:
        step = int(row["epoch"])
        metrics = {metric_key(k): v for k, v in row.items() if k != "epoch"}
        mlflow.log_metrics(metrics, step=step)


# --- plots -----------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict[str, float]], match: str, title: str) -> Any | None:
    keys = sorted({k for r in rows for k in r if k != "epoch" and match in k})
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax.set(xlabel="epoch", ylabel=match, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def task_frames(pred: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) per task: CTR on all rows, CVR on clicked rows only, CTCVR on all."""
    click = pred["click"].to_numpy() > 0
    conv = pred["conversion"].to_numpy() > 0
    return {
        "ctr": (click.astype(int), pred["pctr"].to_numpy()),
        "cvr": (conv[click].astype(int), pred["pcvr"].to_numpy()[click]),
        "ctcvr": ((click & conv).astype(int), pred["pctcvr"].to_numpy()),
    }


def plot_roc(tasks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for task, (y, p) in tasks.items():
        if len(np.unique(y)) < 2:
            continue  # AUC undefined with one class
        fpr, tpr, _ = roc_curve(y, p)
        rows = "clicked rows" if task == "cvr" else "all rows"
        label = f"{task} AUC={roc_auc_score(y, p):.4f} ({rows}, n={len(y)})"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_calibration(tasks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for task, (y, p) in tasks.items():
        if len(np.unique(y)) < 2:
            continue
        frac, mean = calibration_curve(y, np.clip(p, 0, 1), n_bins=10, strategy="quantile")
        ax.plot(
            mean, frac, marker="o", label=f"{task} (mean p={p.mean():.4f}, rate={y.mean():.4f})"
        )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def log_plots(rows: list[dict[str, float]], predictions: Path | None) -> None:
    plt = _pyplot()
    figures = {
        "plots/loss.png": plot_curves(rows, "loss", "Loss per epoch"),
        "plots/auc.png": plot_curves(rows, "auc", "AUC per epoch"),
    }
    if predictions is not None and predictions.exists():
        pred = pd.read_parquet(predictions)
        if len(pred) > MAX_PLOT_ROWS:
            pred = pred.sample(MAX_PLOT_ROWS, random_state=0)
        tasks = task_frames(pred)
        figures |= {
            "plots/roc.png": plot_roc(tasks),
            "plots/calibration.png": plot_calibration(tasks),
        }
    for path, fig in figures.items():
        if fig is not None:
            mlflow.log_figure(fig, path)
            plt.close(fig)


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


# --- runs ------------------------------------------------------------------------------------
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


@dataclass
class RunHandle:
    """The active training run; ``log_result`` records a finished TrainResult into it."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    tags: dict[str, str] = field(default_factory=dict)

    def log_result(
        self,
        result: Any,
        spec: FeatureSpec | None = None,
        lake: str | Path | None = None,
        lineage: Mapping[str, Any] | None = None,
        *,
        model_name: str | None = None,
        model_params: Mapping[str, Any] | None = None,
        beta: float = 0.0,
        example: pd.DataFrame | None = None,
        register: bool = True,
    ) -> LoggedTraining:
        cfg = log_config(result_field(result, "config"))
        name, params = model_identity(cfg, model_name, model_params)
        mlflow.set_tags({f"{TAG}model": name})
        mlflow.log_params({f"model_resolved.{k}": json.dumps(v) for k, v in params.items()})
        spec, reads = _log_data(result, cfg, spec, lake, lineage)
        log_environment()
        metrics = _log_metrics_and_plots(result)
        model_info = self._log_model(result, spec, reads, name, params, beta, example)
        samples = next((r for r in reads if r.name == "samples"), None)
        logged = LoggedTraining(
            self.run_id, model_info.model_uri, name, metrics, samples.version if samples else None
        )
        if register:
            self.register(logged)
        return logged

    def _log_model(
        self,
        result: Any,
        spec: FeatureSpec,
        reads: list[TableRead],
        name: str,
        params: dict[str, Any],
        beta: float,
        example: pd.DataFrame | None,
    ) -> Any:
        from train import pyfunc

        ckpt = checkpoint_path(result)
        if ckpt is None:
            raise ValueError("the training result has no checkpoint to log as a model")
        mlflow.set_tag(f"{TAG}checkpoint", ckpt)
        with tempfile.TemporaryDirectory(prefix="isrec-ckpt-") as tmp:
            state = pyfunc.load_checkpoint_state(storage.localize(ckpt, tmp))
        if example is None:
            example = _example_rows(reads, spec)
        if example is not None:
            example = pyfunc.input_example(example, spec)
        return pyfunc.log_pyfunc_model(name, params, state, spec, example, beta=beta)

    def register(self, logged: LoggedTraining) -> LoggedTraining:
        from train import registry

        version = registry.register_version(
            logged.model_uri,
            logged.model_name,
            run_id=logged.run_id,
            tags={k: v for k, v in self.tags.items() if k.startswith(TAG)},
            tracking_uri=self.tracking_uri,
        )
        logged.registered_model, logged.version = version.name, str(version.version)
        mlflow.set_tags(
            {f"{TAG}registered_model": version.name, f"{TAG}model_version": logged.version}
        )
        return logged


def _log_data(
    result: Any,
    cfg: Mapping[str, Any],
    spec: FeatureSpec | None,
    lake: str | Path | None,
    lineage: Mapping[str, Any] | None,
) -> tuple[FeatureSpec, list[TableRead]]:
    """Lineage with the result's defaults: its lake, the lake's spec, its samples version."""
    lake = lake if lake is not None else result_field(result, "lake") or cfg.get("lake")
    if not lake:
        raise ValueError("lake unknown: pass lake= or a result/config with a 'lake' field")
    spec = spec if spec is not None else FeatureSpec.load(lake)
    if lineage is None and result_field(result, "samples_version") is not None:
        lineage = {"samples": int(result_field(result, "samples_version"))}
    reads = lineage_tables(lake, lineage, spec)
    log_lineage(lake, reads, spec)
    return spec, reads


def _log_metrics_and_plots(result: Any) -> dict[str, float]:
    rows = history(result)
    log_history(rows)
    metrics = test_metrics(result)
    mlflow.log_metrics({f"test_{metric_key(k)}": v for k, v in metrics.items()})
    location = predictions_path(result)
    with tempfile.TemporaryDirectory(prefix="isrec-preds-") as tmp:
        try:
            preds = Path(storage.localize(location, tmp)) if location else None
        except FileNotFoundError:
            preds = None
        log_plots(rows, preds)
        log_predictions(preds, location)
    return metrics


def _example_rows(reads: list[TableRead], spec: FeatureSpec) -> pd.DataFrame | None:
    samples = next((r for r in reads if r.name == "samples"), None)
    if samples is None:
        return None
    try:
        return read_sample_rows(samples.path, spec, samples.version)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("no input example from %s: %s", samples.path, exc)
        return None


def _end_failed(exc: BaseException) -> None:
    """Record the error on the active run and end it FAILED (KILLED on Ctrl-C)."""
    with contextlib.suppress(Exception):
        mlflow.set_tag(f"{TAG}error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    mlflow.end_run(RunStatus.to_string(status))


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
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    active = mlflow.active_run()
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=active is not None,
        parent_run_id=parent_run_id,
        tags=all_tags,
    )
    try:
        yield RunHandle(run.info.run_id, experiment_id, uri, all_tags)
    except BaseException as exc:
        _end_failed(exc)
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_training_run(
    result: Any,
    spec: FeatureSpec | None = None,
    lake: str | Path | None = None,
    lineage: Mapping[str, Any] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    parent_run_id: str | None = None,
    model_name: str | None = None,
    model_params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    beta: float = 0.0,
    register: bool = True,
    tracking_uri: str | None = None,
) -> LoggedTraining:
    """Log one finished training result as a run (child of ``parent_run_id`` when given).

    ``spec``/``lake``/``lineage`` default to the result's: ``result.lake`` (or
    ``config.lake``), the spec saved in that lake, ``{"samples": result.samples_version}``."""
    role = "seed" if parent_run_id else "single"
    run_tags = {f"{TAG}role": role, **(tags or {})}
    with training_run(
        experiment,
        run_name=run_name,
        parent_run_id=parent_run_id,
        tags=run_tags,
        tracking_uri=tracking_uri,
    ) as run:
        return run.log_result(
            result,
            spec,
            lake,
            lineage,
            model_name=model_name,
            model_params=model_params,
            beta=beta,
            register=register,
        )


# --- comparisons: one parent run per model, one child run per seed ---------------------------
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
        """A child run for one seed; its ``log_result`` does not register (the best seed is
        registered when the comparison ends)."""
        tags = {
            f"{TAG}model": self.model_name,
            f"{TAG}comparison_id": self.comparison_id,
            f"{TAG}seed": str(seed),
            f"{TAG}role": "seed",
        }
        name = run_name or f"{self.model_name}-seed{seed}"
        with training_run(
            self.experiment,
            run_name=name,
            parent_run_id=self.run_id,
            tags=tags,
            tracking_uri=self.tracking_uri,
        ) as run:
            yield _SeedHandle(run.run_id, run.experiment_id, run.tracking_uri, run.tags, self)

    def summarize(self) -> dict[str, float]:
        """Mean and sample std (train.metrics.summarize_seeds) over seeds of every test metric,
        logged on the parent run as test_<name>_mean / test_<name>_std."""
        from train.metrics import summarize_seeds

        summary: dict[str, float] = {"n_seeds": float(len(self.seeds))}
        for name, (mean, std) in summarize_seeds([s.test_metrics for s in self.seeds]).items():
            key = f"test_{metric_key(name)}"
            summary |= {f"{key}_mean": mean, f"{key}_std": std}
        mlflow.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
        table = pd.DataFrame([{"run_id": s.run_id, **s.test_metrics} for s in self.seeds])
        mlflow.log_text(table.to_csv(index=False), "comparison/seeds.csv")
        return summary

    def best(self) -> LoggedTraining | None:
        from train.registry import higher_is_better

        scored = [s for s in self.seeds if self.metric in s.test_metrics]
        if not scored:
            return None
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        return max(scored, key=lambda s: sign * s.test_metrics[self.metric])


@dataclass
class _SeedHandle(RunHandle):
    comparison: Comparison | None = None

    def log_result(self, *args: Any, **kwargs: Any) -> LoggedTraining:
        kwargs.setdefault("register", False)
        logged = super().log_result(*args, **kwargs)
        if self.comparison is not None:
            self.comparison.seeds.append(logged)
        return logged


@contextlib.contextmanager
def comparison_run(
    model_name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    comparison_id: str | None = None,
    config: Any = None,
    metric: str = DEFAULT_METRIC,
    register_best: bool = True,
    tracking_uri: str | None = None,
) -> Iterator[Comparison]:
    """Parent run of one model's seeds. Parents of different models that share a
    ``comparison_id`` are what the UI compares side by side (filter on the tag)."""
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
                run.tags = {**tags, f"{TAG}best_seed_run": best.run_id}
                run.register(best)


def log_comparison(
    results: Sequence[Any],
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    comparison_id: str | None = None,
    metric: str = DEFAULT_METRIC,
    register_best: bool = True,
    tracking_uri: str | None = None,
) -> Comparison:
    """Log finished seed results of ONE model: a parent run, a child per seed, the best seed
    registered as challenger (see ``comparison_run``)."""
    if not results:
        raise ValueError("no results to log")
    config = result_field(results[0], "config")
    model, _ = model_identity(config_dict(config), None, None)
    with comparison_run(
        model,
        experiment,
        comparison_id=comparison_id,
        config=config,
        metric=metric,
        register_best=register_best,
        tracking_uri=tracking_uri,
    ) as cmp:
        for i, result in enumerate(results):
            seed = config_dict(result_field(result, "config")).get("seed", i)
            with cmp.seed_run(int(seed)) as run:
                run.log_result(result)
    return cmp
