"""Where runs go: the tracking store (and model registry) every isrec run and version uses.

``tracking_uri`` when given (jobs pass ``--tracking-uri``), else the ``MLFLOW_TRACKING_URI``
environment variable, else a local SQLite store at ``<data>/mlflow/mlflow.db`` (``etl.project``
``DATA_DIR``) with artifacts beside it in ``<data>/mlflow/artifacts``. ``configure`` points MLflow's
tracking and registry at the resolved store; ``ensure_experiment`` creates an experiment whose
artifacts go beside a SQLite store and gives it a description and its kind (custom models, not
GenAI). ``ui_links`` names the experiment's runs page: MLflow 3's UI opens an experiment on its
GenAI overview unless the link says ``workflowType=machine_learning``.

``TAG`` is the prefix of every tag the project writes on runs and model versions.
"""

from __future__ import annotations

import contextlib
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
EXPERIMENT_DESCRIPTION = """\
isrec trainings: session-based multi-task recommenders (pCTR, pCVR, pCTCVR = pCTR x pCVR)
trained with Ray Train on the Delta `samples` table of a lake.

- One parent run per model and comparison (tag `isrec.role` = comparison), one child run per
  seed (`isrec.role` = seed); runs of jobs/train.py with one seed and tracking on are parents too.
- Metrics: `train_loss` and `valid_<metric>` per epoch (step = epoch), `test_<metric>` at the
  end; a parent's `test_<metric>` is the mean over its seeds (`test_<metric>_std` the std).
  CVR AUC is on clicked rows only.
- Params: the training config (`model_params.*`, `model_resolved.*`), `data.*` = the lake and
  the Delta versions read (also the run's dataset input).
- Tag `isrec.below_chance` = true: the model ranks below chance on valid CTR AUC; it is never
  promoted.
- The best seed is registered as `isrec-<model>` with alias `challenger`; jobs/promote.py moves
  `champion` when it wins on the same data.
"""
EXPERIMENT_TAGS = {
    "mlflow.note.content": EXPERIMENT_DESCRIPTION,  # the experiment page's description
    "mlflow.experimentKind": "custom_model_development",  # not a GenAI experiment
}
UI_URL = "http://127.0.0.1:5000"  # `mlflow ui` / `mlflow server` on their default port


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
    if found is None:
        root = artifact_root(uri)
        location = f"{root}/{name}" if root else None
        with contextlib.suppress(MlflowException):  # created concurrently by another process
            client.create_experiment(name, artifact_location=location)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise MlflowException(f"experiment {name!r} could not be created in {uri}")
    for key, value in EXPERIMENT_TAGS.items():
        if found.tags.get(key) is None:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def ui_base(tracking_uri: str) -> str:
    """The UI of a tracking server is the server; a local store's is `mlflow ui`'s default."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_URL


def runs_page(experiment_id: str, ui: str = UI_URL) -> str:
    """The experiment's runs table: without ``workflowType`` MLflow 3 opens its GenAI overview."""
    return f"{ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_links(tracking_uri: str, experiment: str) -> str:
    """Lines naming the experiment's runs page and the model registry in the UI."""
    ui = ui_base(tracking_uri)
    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    lines = [f"runs of {experiment}: {runs_page(found.experiment_id, ui)}"] if found else []
    return "\n".join([*lines, f"registered models: {ui}/#/models"])
