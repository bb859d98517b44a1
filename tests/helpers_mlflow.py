"""MLflow test helpers: a tiny real samples table, a real (briefly trained) model and its
train.results.TrainResult, a SQLite tracking store, and a logged + registered champion shared by
the tests.

The shared champion is built once per test session (``champion`` fixture, cached in this module
so that every test module importing the fixture reuses it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers_samples import make_frame, write_samples

from etl.spec import FeatureSpec
from etl.tables import SAMPLES
from train.metrics import evaluate
from train.models import build_model
from train.results import TrainResult
from train.train_config import TrainConfig

# Spark's Python workers must be this interpreter (mlflow, torch) for spark_udf; imported at
# collection, before the session-scoped Spark fixture starts. (Belongs in conftest.py.)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

MODEL = "rnn_mtl"
PARAMS = {
    "embedding_dim": 4,
    "gru_hidden": 8,
    "attention_hidden": [4],
    "shared_hidden": [16],
    "tower_hidden": [8],
}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


def to_tensors(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    batch = {}
    for f in spec.fields:
        if f.kind == "sequence":
            batch[f.name] = torch.tensor(np.stack(frame[f.name].map(np.asarray)), dtype=torch.long)
        elif f.kind == "sparse":
            batch[f.name] = torch.tensor(frame[f.name].to_numpy(), dtype=torch.long)
        else:
            batch[f.name] = torch.tensor(frame[f.name].to_numpy(), dtype=torch.float32)
    batch[spec.length_field] = torch.tensor(frame[spec.length_field].to_numpy(), dtype=torch.long)
    for label in spec.labels:
        batch[label] = torch.tensor(frame[label].to_numpy(), dtype=torch.float32)
    return batch


def train_tiny(
    spec: FeatureSpec, frame: pd.DataFrame, epochs: int = 2, seed: int = 0, model: str = MODEL
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """A few full-batch Adam steps: enough for non-trivial weights and a loss history."""
    torch.manual_seed(seed)
    net = build_model(model, spec, PARAMS if model == MODEL else {"embedding_dim": 4})
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    train_frame = frame[frame.split == "train"]
    clicks = max(float(train_frame.click.sum()), 1.0)
    net.set_priors(  # as the worker does (train.data.label_priors), from the same rows
        {
            "ctr": float(train_frame.click.mean()),
            "cvr": float(train_frame.conversion.sum()) / clicks,
            "views": float(train_frame.n_future_views.mean()),
        }
    )
    train = to_tensors(train_frame, spec)
    valid_frame = frame[frame.split == "valid"]
    valid = to_tensors(valid_frame, spec)
    rows = []
    for epoch in range(epochs):
        net.train()
        for _ in range(5):
            opt.zero_grad()
            loss = net.loss(net(train), train)["loss"]
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            out = net(valid)
            vloss = float(net.loss(out, valid)["loss"])
        metrics = evaluate(valid_frame, {k: out[k].numpy() for k in out}, valid_frame.user_key)
        row = {"epoch": epoch, "train_loss": loss.item(), "valid_loss": vloss}
        rows.append(row | {f"valid_{k}": v for k, v in metrics.items() if k.endswith("auc")})
    return net, rows


def make_result(
    root: Path,
    spec: FeatureSpec,
    frame: pd.DataFrame,
    seed: int = 0,
    model: str = MODEL,
    *,
    lake: Path,
) -> TrainResult:
    """Train briefly and write what train.loop leaves behind: a Ray-style checkpoint dir
    (model state_dict), a predictions parquet on test, metrics and the resolved config, as
    the TrainResult of a run on ``lake``."""
    net, rows = train_tiny(spec, frame, seed=seed, model=model)
    ckpt = root / f"checkpoint_seed{seed}"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "epoch": len(rows) - 1}, ckpt / "checkpoint.pt")
    test = frame[frame.split == "test"].reset_index(drop=True)
    with torch.no_grad():
        out = net(to_tensors(test, spec))
    pred = test[["impression_id", "user_key", "click", "conversion", "n_future_views"]].copy()
    for key in ("pctr", "pcvr", "pctcvr", "expected_views"):
        pred[key] = out[key].numpy()
    path = root / f"predictions_seed{seed}.parquet"
    pred.to_parquet(path)
    metrics = evaluate(
        pred, {k: pred[k].to_numpy() for k in ("pctr", "pcvr", "pctcvr")}, pred.user_key
    )
    config = TrainConfig(
        lake=str(lake),
        model=model,
        model_params=dict(net.config),
        seed=seed,
        lr=0.02,
        epochs=len(rows),
        batch_size=256,
    )
    return TrainResult(
        test_metrics=metrics,
        history=rows,
        best_checkpoint_path=str(ckpt),
        predictions_path=str(path),
        config=config,
        run_path=str(root),
        best_epoch=len(rows) - 1,
        resumed_from_epoch=None,
        epochs_run=len(rows),
        stopped_early=False,
        samples_version=spec.tables.get(SAMPLES),
        lake=str(lake),
    )


_TEMPLATE_DB: list[Path] = []


def sqlite_uri(root: Path) -> str:
    """A fresh SQLite tracking store in ``root``: a copy of one store migrated once per session
    (creating the schema costs seconds per store)."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    if not _TEMPLATE_DB:
        template = Path(tempfile.mkdtemp(prefix="isrec-mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _TEMPLATE_DB.append(template)
    db = root / "mlflow.db"
    if not db.exists():
        shutil.copyfile(_TEMPLATE_DB[0], db)
    return f"sqlite:///{db}"


@dataclass
class Champion:
    tracking_uri: str
    lake: Path
    spec: FeatureSpec
    frame: pd.DataFrame
    run_id: str
    model_uri: str  # the run's logged model (models:/m-...)
    registered_model: str
    version: str

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.registered_model}@champion"

    def test_rows(self) -> pd.DataFrame:
        return self.frame[self.frame.split == "test"].reset_index(drop=True)


_CACHE: dict[str, Champion] = {}


def build_champion(spark, root: Path) -> Champion:
    """Samples table -> brief training -> logged run -> registered version -> champion."""
    from train.registry import promote
    from train.tracking.runs import training_run

    if "champion" in _CACHE:
        return _CACHE["champion"]
    lake = root / "lake"
    frame = make_frame(rows_per_day=60)
    spec = write_samples(spark, lake, files=2, frame=frame)
    uri = sqlite_uri(root / "mlflow")
    result = make_result(root / "train", spec, frame, lake=lake)
    # lake, spec and samples version come from the result, as with train.loop's TrainResult
    with training_run("isrec-tests", tracking_uri=uri) as run:
        logged = run.register(run.log_result(result))
    promote(MODEL, tracking_uri=uri)
    champion = Champion(
        uri,
        lake,
        spec,
        frame,
        logged.run_id,
        logged.model_uri,
        logged.registered_model,
        logged.version,
    )
    _CACHE["champion"] = champion
    return champion


@pytest.fixture(scope="session")
def champion(spark, tmp_path_factory) -> Champion:
    return build_champion(spark, tmp_path_factory.mktemp("mlflow-champion"))


def client_for(uri: str):
    """A client whose tracking AND registry are ``uri`` (a bare MlflowClient(uri) takes the
    registry from the process-wide setting, which another test may have changed)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --- processes -------------------------------------------------------------------------------
def mlflow_env(uri: str) -> dict[str, str]:
    """Environment for a child process using store ``uri`` (mlflow.set_tracking_uri and
    set_registry_uri export both variables, so set both)."""
    env = {**os.environ, **SERVER_ENV, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    env.pop("PYTHONPATH", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server in its own process group, output to ``log_path``."""
    full_env = {**os.environ, **SERVER_ENV, **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """Stop the server by its PID (its process group: uvicorn/gunicorn workers included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with_suppress_kill(proc)


def with_suppress_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        return
    proc.wait(timeout=10)


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout}s:\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def serve_model(model_uri: str, tracking_uri: str, log_dir: Path) -> Iterator[str]:
    """A real `mlflow models serve` of ``model_uri`` on 127.0.0.1 (one worker); its URL."""
    port = free_port()
    log_path = log_dir / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = start(cmd, log_path, env=mlflow_env(tracking_uri))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", proc, log_path)
        yield url
    finally:
        stop(proc)


def post_invocations(url: str, payload: dict, timeout: float = 120) -> tuple[int, dict]:
    """POST ``payload`` to the server's /invocations: (HTTP status, JSON body)."""
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# --- cheap registry versions -------------------------------------------------------------------
class ConstantModel(mlflow.pyfunc.PythonModel):
    """A trivial model: registry tests need versions, not predictions."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        return pd.DataFrame({"score": np.zeros(len(model_input))})


def fake_version(
    uri: str,
    family: str,
    metrics: dict[str, float],
    samples_version: int = 0,
    samples_path: str = "/lake/samples",
    run_tags: dict[str, str] | None = None,
) -> str:
    """A run with test metrics, samples lineage tags (and ``run_tags``), its model registered
    as challenger."""
    from train.registry import register_version
    from train.tracking.store import configure, ensure_experiment

    configure(uri)
    tags = {
        "isrec.data.samples.path": samples_path,
        "isrec.data.samples.version": str(samples_version),
        **(run_tags or {}),
    }
    with mlflow.start_run(experiment_id=ensure_experiment("registry-tests", uri), tags=tags) as run:
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ConstantModel(), pip_requirements=["mlflow"]
        )
    mv = register_version(info.model_uri, family, run_id=run.info.run_id, tracking_uri=uri)
    return str(mv.version)
