"""Shared fixtures: one real local Spark session with Delta for the whole test run; a local Ray
cluster per module that asks for one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
# `mlflow server`s the tests start (test_mlflow_ui) without MLflow 3's job runner and its huey
# consumers: nothing here uses them and they slow a server's start (infra/local/mlflow.sh).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Spark's Python workers must run this interpreter (the venv), not the first python3 on PATH,
# and the venv's tools (spark-submit, mlflow, uvicorn, ray) must be found as an activated venv
# would find them.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
_VENV_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _VENV_BIN:
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def spark():
    from etl.spark import get_spark

    session = get_spark(
        "isrec-tests", master="local[2]", extra_conf={"spark.sql.shuffle.partitions": "4"}
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.fail(
            f"real data slices not found at {REAL_DATA} (CI keeps ../shared beside the clone)"
        )
    return REAL_DATA


@pytest.fixture(scope="session")
def ranker(spark, tmp_path_factory):
    """A real lake of a small generated world and a champion that serves raw requests."""
    from helpers_ranker import build_ranker

    return build_ranker(spark, tmp_path_factory.mktemp("ranker"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray (2 CPUs, small object store) for the module's training runs."""
    import ray

    for attempt in range(3):  # a loaded CI box can miss Ray's fixed 30 s raylet start window
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


MLFLOW_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
)


@pytest.fixture(autouse=True)
def isolated_mlflow_state():
    """No MLflow state leaks into the next test: set_tracking_uri / set_registry_uri /
    set_experiment export environment variables (read by later tests and their subprocesses)
    and keep process-wide globals (store URIs, active experiment id, active runs)."""
    saved = {name: os.environ.get(name) for name in MLFLOW_VARIABLES}
    yield
    if "mlflow" in sys.modules:  # a test that never imported mlflow changed none of it
        _reset_mlflow(sys.modules["mlflow"])
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _reset_mlflow(mlflow) -> None:
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        try:
            mlflow.end_run()
        except Exception:  # its store is gone (a stopped server): forget the run
            fluent._active_run_stack.get().pop()
    mlflow.set_tracking_uri(None)  # None: back to MLFLOW_TRACKING_URI / the default store
    mlflow.set_registry_uri(None)
    fluent._active_experiment_id = None  # mlflow 3.x keeps set_experiment's id only here
