"""Pre-flight errors, a 2-worker Ray Train run and resume after a killed worker (train/preflight.py,
train/driver.py, train/worker.py).

Real local Ray (2 CPUs), real Petastorm, a real Delta samples table written by local Spark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers_samples import shared_lake
from tests.helpers_training import one_line_error, run_with_worker_killed
from train import driver
from train.driver import run_training
from train.results import SeedsResult, TrainResult
from train.train_config import TrainConfig, parse_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SMALL = {"embedding_dim": "4", "gru_hidden": "8", "shared_hidden": "16", "tower_hidden": "8"}
ESMM_SMALL = {"embedding_dim": "4", "tower_hidden": "8"}


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    return shared_lake(spark, tmp_path_factory.getbasetemp())


def make_cfg(lake_path: Path, storage: Path, **kw) -> TrainConfig:
    base = dict(
        lake=str(lake_path),
        model="rnn_mtl",
        model_params=dict(SMALL),
        num_workers=2,
        epochs=2,
        batch_size=64,
        eval_batch_size=128,
        storage_path=str(storage),
        name="run",
        max_failures=0,
        log_every=0,
    )
    return TrainConfig(**{**base, **kw})


# --- pre-flight: one-line ConfigErrors, Ray never started ---------------------------------------
@pytest.fixture
def no_ray(monkeypatch):
    def boom(cfg):
        raise AssertionError("Ray must not start when the pre-flight fails")

    monkeypatch.setattr(driver, "connect_ray", boom)


def test_preflight_unknown_early_stop_metric(no_ray, tmp_path):
    one_line_error(make_cfg(tmp_path, tmp_path, early_stop_metric="ctr_acu"), "unknown metric")


def test_preflight_missing_lake(no_ray, tmp_path):
    one_line_error(make_cfg(tmp_path / "nowhere", tmp_path), "does not exist")
    one_line_error(make_cfg(tmp_path, tmp_path), "has no samples Delta table")


def test_preflight_unknown_model_and_bad_params(no_ray, lake, tmp_path):
    one_line_error(make_cfg(lake[0], tmp_path, model="gpt"), "unknown model 'gpt'")
    cfg = make_cfg(lake[0], tmp_path, model="esmm", model_params={"gru_hidden": "8"})
    one_line_error(cfg, "does not fit the feature spec")
    one_line_error(make_cfg(lake[0], tmp_path, batch_size=0), "batch-size must be >= 1")
    one_line_error(make_cfg(lake[0], tmp_path, train_days=-1), "train-days must be >= 0, got -1")


def test_preflight_train_days_keeps_the_latest_train_days(no_ray, lake):
    from train.preflight import preflight

    every = preflight(make_cfg(lake[0], lake[0].parent)).files
    latest = preflight(make_cfg(lake[0], lake[0].parent, train_days=1)).files
    days = {f.split("day=")[1].split("/")[0] for f in every["train"]}
    assert len(days) >= 2
    assert {f.split("day=")[1].split("/")[0] for f in latest["train"]} == {max(days)}
    assert latest["valid"] == every["valid"] and latest["test"] == every["test"]
    more = preflight(make_cfg(lake[0], lake[0].parent, train_days=len(days) + 5)).files
    assert more == every


def test_preflight_lake_without_spec(no_ray, lake, tmp_path):
    import shutil

    copy = tmp_path / "lake"
    shutil.copytree(lake[0] / "samples" / "_delta_log", copy / "samples" / "_delta_log")
    one_line_error(make_cfg(copy, tmp_path), "no feature spec")


def test_jobs_train_exits_2_with_one_line(no_ray, tmp_path, capsys):
    from jobs.train import main

    assert main(["--lake", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0 and "does not exist" in captured.err


def test_cli_overrides_defaults(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 7, "lr": 0.01, "model": "esmm"}))
    argv = ["--lake", "L", "--config", str(tmp_path / "c.json"), "--lr", "0.5"]
    cfg = parse_config([*argv, "--param", "tower_hidden=8,4", "--use-gpu", "--loader", "pyarrow"])
    assert (cfg.epochs, cfg.lr, cfg.model, cfg.use_gpu, cfg.loader) == (
        7,
        0.5,
        "esmm",
        True,
        "pyarrow",
    )
    assert cfg.model_params == {"tower_hidden": "8,4"}


# --- Ray Train ----------------------------------------------------------------------------------
def test_two_workers_end_to_end(ray_cluster, lake, tmp_path):
    from train.metrics import evaluate
    from train.models import build_model

    result = run_training(make_cfg(lake[0], tmp_path))

    assert [row["epoch"] for row in result.history] == [0, 1]
    assert all("valid_ctcvr_auc" in row and row["train_rows"] > 0 for row in result.history)
    assert result.resumed_from_epoch is None and result.samples_version == 0
    # predictions of both workers, every test row exactly once
    pred = pd.read_parquet(result.predictions_path)
    test_ids = set(range(600, 800))  # make_frame: the test day holds ids 600..799
    assert len(pred) == pred["impression_id"].nunique() == 200
    assert set(pred["impression_id"]) == test_ids
    # the reported metrics are computed once over the union
    labels = {k: pred[k].to_numpy() for k in ("click", "conversion")}
    preds = {k: pred[k].to_numpy() for k in ("pctr", "pcvr", "pctcvr")}
    again = evaluate(labels, preds, pred["user_key"].to_numpy())
    for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctcvr_logloss", "n_rows"):
        assert result.test_metrics[key] == pytest.approx(again[key], nan_ok=True), key
    assert result.test_metrics["n_rows"] == 200
    # the final checkpoint rebuilds the model that made the predictions
    ckpt = Path(result.best_checkpoint_path)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["next_epoch"] == 2 and len(state["history"]) == 2
    model = build_model("rnn_mtl", lake[1], SMALL)
    model.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    summary = SeedsResult([result], {}).to_json()
    assert json.loads(json.dumps(summary))["metrics"]["n_rows"] == 200


def test_resume_after_a_worker_is_killed(ray_cluster, lake, tmp_path):
    pid_file = tmp_path / "worker.pid"
    cfg = make_cfg(
        lake[0], tmp_path, model="esmm", model_params=ESMM_SMALL, epochs=2, max_failures=1,
        loader="pyarrow",
        hook_pid_file=str(pid_file), hook_at="1:1",  # epoch 1, step 1: after 1 checkpoint
    )  # fmt: skip
    result, killed = run_with_worker_killed(cfg)

    assert killed, "the worker never reached the test hook"
    assert result.resumed_from_epoch == 1 and result.epochs_run == 2
    assert [row["epoch"] for row in result.history] == [0, 1]  # each epoch once
    assert result.test_metrics["n_rows"] == 200
    assert np.isfinite(result.test_metrics["ctr_auc"])


def test_seeds_json_line_has_mean_and_std(tmp_path):
    def fake(seed: int, auc: float) -> TrainResult:
        return TrainResult(
            {"ctr_auc": auc, "cvr_auc": float("nan")}, [], "ckpt", None,
            TrainConfig(seed=seed), "run", 0, None, 1, False, 0, "lake",
        )  # fmt: skip

    from train.metrics import summarize_seeds

    results = [fake(0, 0.6), fake(1, 0.7)]
    line = SeedsResult(results, summarize_seeds([r.test_metrics for r in results])).to_json()
    assert line["seeds"] == [0, 1]
    assert line["metrics"]["ctr_auc"] == {
        "mean": pytest.approx(0.65),
        "std": pytest.approx(0.0707, 1e-3),
        "ci95": pytest.approx(12.706205 * 0.0707107 / 2**0.5, 1e-4),  # Student t, 1 df
    }
    nan = {"mean": None, "std": None, "ci95": None}
    assert line["metrics"]["cvr_auc"] == nan  # nan -> null, valid JSON
    json.loads(json.dumps(line, allow_nan=False))
