"""conftest's isolated_mlflow_state: what one test sets in MLflow's process-wide state (store
URIs, the active experiment, an open run, the variables they export) is gone in the next."""

from __future__ import annotations

import os

import pytest

VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(scope="module")
def left() -> dict[str, object]:
    """What the first test found and what it set, for the second to compare."""
    return {"before": {name: os.environ.get(name) for name in VARIABLES}}


def test_a_test_leaves_state_behind(left, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("isolation")
    mlflow.start_run()
    assert all(os.environ.get(name) for name in VARIABLES)  # all exported, for subprocesses
    left["uri"] = uri


def test_the_next_one_starts_clean(left):
    import mlflow
    from mlflow.tracking import fluent

    assert {name: os.environ.get(name) for name in VARIABLES} == left["before"]
    assert mlflow.active_run() is None
    assert fluent._active_experiment_id is None
    assert left["uri"] not in (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
