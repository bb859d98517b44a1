"""Where runs go: the tracking store (and model registry) every isrec run and version uses.

``tracking_uri`` when given (jobs pass ``--tracking-uri``), else the ``MLFLOW_TRACKING_URI``
environment variable, else a local SQLite store at ``<data>/mlflow/mlflow.db`` (``etl.project``
``DATA_DIR``) with artifacts beside it in ``<data>/mlflow/artifacts``. ``configure`` points MLflow's
tracking and registry at the resolved store; ``ensure_experiment`` creates an experiment whose
artifacts go beside a SQLite store.

``TAG`` is the prefix of every tag the project writes on runs and model versions.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from etl.project import DATA_DIR

DEFAULT_DIR = DATA_DIR / "mlflow"
DEFAULT_EXPERIMENT = "isrec"
TAG = "isrec."
_SQLITE = "sqlite:///"


def default_tracking_uri() -> str:
    return f"{_SQLITE}{DEFAULT_DIR / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite file (``<dir>/artifacts``); None lets the store/server decide."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    db = Path(tracking_uri[len(_SQLITE) :])
    return (db.parent / "artifacts").resolve().as_uri()


def configure(tracking_uri: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the resolved store; returns its URI."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(_SQLITE):
        Path(uri[len(_SQLITE) :]).parent.mkdir(parents=True, exist_ok=True)
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
