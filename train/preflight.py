"""Pre-flight checks of a training run, on the driver before Ray starts.

``preflight(cfg)`` validates the options, finds the lake and its feature spec, builds the model
once on a dummy batch (so a model/spec mismatch fails here, not in every worker) and resolves the
snapshot files of every split: those of the samples version the feature spec records, so a run
reads the last complete ETL run whatever a later unfinished one committed. With ``--init-from``
it loads the earlier model and checks that it can initialise this one (train/warm_start.py:
same model, shapes equal or grown embedding tables, stable vocabulary ids). Every failure is a
``ConfigError`` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import torch
from torch import nn

from etl import storage
from etl.delta_log import SnapshotError, snapshot_splits
from etl.spec import FeatureSpec
from etl.tables import DELTA_LOG_DIR, SAMPLES, SPLITS
from train.data import batch_columns
from train.metrics import metric
from train.models.base import PREDICTIONS
from train.train_config import LOADERS, TrainConfig


class ConfigError(ValueError):
    """A run that cannot start; the message is one line for the user."""


@dataclass
class Prepared:
    spec: FeatureSpec
    files: dict[str, list[str]]  # split -> snapshot file URIs
    name: str
    predictions_path: str
    init_state: dict[str, torch.Tensor] | None = None  # --init-from's weights (warm start)


def preflight(cfg: TrainConfig) -> Prepared:
    """Every check that needs no Ray; raises ConfigError with one line."""
    _check_numbers(cfg)
    lake = _check_lake(cfg.lake)
    spec = _load_spec(lake)
    model = _check_model(cfg, spec)
    files = _snapshot(lake, spec, cfg.train_days)
    init_state = _check_init(cfg, lake, spec, model)
    name = cfg.name or f"{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}-s{cfg.seed}"
    predictions = storage.join(cfg.storage_path, name, "predictions", "test.parquet")
    return Prepared(spec, files, name, predictions, init_state)


def _check_numbers(cfg: TrainConfig) -> None:
    positive = ("num_workers", "epochs", "batch_size", "eval_batch_size", "seeds", "shuffle_buffer")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.loader not in LOADERS:
        raise ConfigError(f"unknown loader {cfg.loader!r}; choose one of {list(LOADERS)}")
    non_negative = ("patience", "max_failures", "max_steps_per_epoch", "train_days")
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 0, got {getattr(cfg, key)}")
    try:
        metric(cfg.early_stop_metric)
    except ValueError as exc:
        raise ConfigError(f"--early-stop-metric: {exc}") from None


def _check_lake(lake: str) -> str:
    """The lake location (folder or object-store URI) if it holds a samples table."""
    if not lake:
        raise ConfigError("no lake given: pass --lake <folder or URI written by jobs/etl.py>")
    try:
        found = storage.is_dir(lake)
        has_samples = found and storage.is_dir(storage.join(lake, SAMPLES, DELTA_LOG_DIR))
    except OSError as exc:  # unreachable store, bad credentials, no such bucket
        raise ConfigError(f"cannot read lake {lake}: {exc}".splitlines()[0]) from None
    if not found:
        raise ConfigError(f"lake {lake} does not exist: run jobs/etl.py --output {lake} first")
    if not has_samples:
        raise ConfigError(f"lake {lake} has no {SAMPLES} Delta table: run jobs/etl.py on it first")
    return lake


def _load_spec(lake: str) -> FeatureSpec:
    try:
        return FeatureSpec.load(lake)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"unreadable feature spec in {lake}: {exc}") from None


def _check_model(cfg: TrainConfig, spec: FeatureSpec) -> nn.Module:
    """Unknown name, bad params or a spec the model cannot use: build it once and run it."""
    from train.models import MODEL_NAMES, build_model

    if cfg.model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {list(MODEL_NAMES)}")
    try:
        model = build_model(cfg.model, spec, cfg.model_params)
        batch = dummy_batch(spec)
        with torch.no_grad():
            out = model(batch)
            loss = model.loss(out, batch)["loss"]
    except Exception as exc:  # any failure here means the model and spec do not fit
        raise ConfigError(f"model {cfg.model} does not fit the feature spec: {exc}") from None
    missing = [k for k in PREDICTIONS if k not in out]
    if missing or not torch.isfinite(loss):
        raise ConfigError(f"model {cfg.model} breaks the output contract (missing {missing})")
    return model


def _check_init(
    cfg: TrainConfig, lake: str, spec: FeatureSpec, model: nn.Module
) -> dict[str, torch.Tensor] | None:
    """``--init-from``: the earlier model's weights, if they can initialise ``model``."""
    if not cfg.init_from:
        return None
    from train.warm_start import WarmStartError, check_shapes, check_vocab_ids, load_earlier

    try:
        earlier = load_earlier(cfg.init_from, cfg.tracking_uri or None)
        if earlier.model != cfg.model:
            raise WarmStartError(
                f"--init-from {cfg.init_from} holds a {earlier.model} model, not {cfg.model}"
            )
        check_shapes(model, earlier.state)
        check_vocab_ids(earlier, lake, spec)
    except WarmStartError as exc:
        raise ConfigError(str(exc)) from None
    return earlier.state


def dummy_batch(spec: FeatureSpec, rows: int = 2) -> dict[str, torch.Tensor]:
    """A tiny batch of the contract (ids 1 = unknown, full histories) for checks."""
    batch = {}
    for name, dtype in batch_columns(spec).items():
        batch[name] = torch.ones(rows, dtype=dtype)
    for f in spec.sequence:
        batch[f.name] = torch.ones(rows, spec.max_len, dtype=torch.int64)
    if spec.sequence:
        batch[spec.length_field] = torch.full((rows,), spec.max_len, dtype=torch.int64)
    batch["click"] = torch.tensor([1.0, 0.0] * (rows // 2) + [1.0] * (rows % 2))
    return batch


def _snapshot(lake: str, spec: FeatureSpec, train_days: int = 0) -> dict[str, list[str]]:
    try:
        listed = snapshot_splits(lake, spec, last_train_days=train_days)
    except SnapshotError as exc:
        raise ConfigError(str(exc)) from None
    wanted = [s for s in SPLITS if spec.splits.get(s) or s in listed]
    if "train" not in wanted:
        raise ConfigError(f"lake {lake} has no train split in its samples table or spec")
    empty = [s for s in wanted if not listed.get(s)]
    if empty:
        version = spec.tables.get(SAMPLES)
        raise ConfigError(f"split {empty[0]} of {lake} has no files in samples version {version}")
    return {split: listed[split] for split in wanted}
