"""The run's configuration as MLflow params: every ``TrainConfig`` field, flattened.

Nested values become dotted params (``model_params.gru_hidden``); non-string values are logged
as JSON (``true``, ``[64, 32]``), cut at ``MAX_PARAM_CHARS``. Empty values (an unset
``ray_address``, ``tracking_uri``...) and test hooks (``hook_pid_file``, ``hook_at``) are left
out of the params, not of the config files. The whole config is also logged as
``config/config.json`` and ``config/config.yaml``. ``flatten`` serves metrics too (runs.py
flattens history rows with ``_``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import mlflow

from train.train_config import TrainConfig

MAX_PARAM_CHARS = 6000


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as a JSON-able dict (values JSON cannot hold become strings)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, name, sep)
        else:
            flat[name] = value
    return flat


def test_hooks() -> set[str]:
    """TrainConfig fields hidden from --help (help None): test hooks, never params."""
    return {
        f.name for f in fields(TrainConfig) if "help" in f.metadata and f.metadata["help"] is None
    }


def log_config(config: TrainConfig) -> None:
    """Every config value as a param (flattened) but empty ones (``ray_address`` unset...) and
    test hooks, plus the whole config as JSON and YAML."""
    cfg = config_dict(config)
    params = {}
    hidden = test_hooks()
    for key, value in flatten(cfg).items():
        if key in hidden or value is None or value == "" or value == {}:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        params[key] = text[:MAX_PARAM_CHARS]
    if params:
        mlflow.log_params(params)
    mlflow.log_dict(cfg, "config/config.json")
    mlflow.log_dict(cfg, "config/config.yaml")
