"""Tracking: what a training run records, nested seed runs, FAILED on crash, and the pyfunc
model (input validation; loads and predicts in a fresh process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import (  # noqa: F401
    MODEL,
    PROJECT_ROOT,
    champion,
    client_for,
    make_result,
    mlflow_env,
    sqlite_uri,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from train import pyfunc, registry
from train.tracking import comparison, runs, store


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = store.resolve_tracking_uri()
    assert default == f"sqlite:///{PROJECT_ROOT / 'data' / 'mlflow' / 'mlflow.db'}"
    assert store.artifact_root(default) == (PROJECT_ROOT / "data/mlflow/artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.resolve_tracking_uri() == "http://127.0.0.1:5999"
    assert store.artifact_root("http://127.0.0.1:5999") is None
    explicit = sqlite_uri(tmp_path)
    assert store.resolve_tracking_uri(explicit) == explicit


def test_run_records_config_lineage_metrics_plots_env(champion):  # noqa: F811
    store.configure(champion.tracking_uri)
    client = client_for(champion.tracking_uri)
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    # whole config, flattened
    assert params["model"] == "rnn_mtl" and params["model_params.gru_hidden"] == "8"
    assert params["epochs"] == "2" and params["seed"] == "0"
    assert params["model_resolved.gru_hidden"] == "8" and params["model_resolved.packed"] == "true"
    # lineage: samples table path + Delta version, as params, tags and a logged input
    samples = str((champion.lake / "samples").resolve())
    assert params["data.samples.path"] == samples and params["data.samples.version"] == "0"
    assert tags["isrec.data.samples.version"] == "0"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "samples@v0" and dataset.dataset.source_type == "delta_table"
    assert samples in dataset.dataset.source
    profile = json.loads(dataset.dataset.profile)
    assert (profile["path"], profile["delta_version"]) == (samples, 0)
    assert profile["num_rows"] == len(champion.frame) and profile["num_files"] >= 2
    columns = {c["name"]: c for c in json.loads(dataset.dataset.schema)["mlflow_colspec"]}
    assert set(champion.frame.columns) - {"split", "day"} <= set(columns)
    assert columns["hist_cate"]["type"] == "array" and columns["price"]["type"] == "float"
    # environment
    assert tags["isrec.env.torch"].startswith("2.") and tags["isrec.env.python"].startswith("3.11")
    assert "isrec.env.pyspark" in tags and "isrec.env.ray" in tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()  # the tests run in a checkout: the commit must be recorded
    assert tags["isrec.env.git_commit"] == tags["mlflow.source.git.commit"] == head
    # plumbing left empty and test hooks are not hyperparameters
    for key in ("hook_pid_file", "hook_at", "ray_address", "tracking_uri", "name", "model_params"):
        assert key not in params, key
    # below-chance guard: measured and tagged either way
    assert tags["isrec.below_chance"] == str(metrics["valid_ctr_auc"] < 0.5).lower()
    # per-epoch metrics with step = epoch, final test metrics
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_ctr_auc")] == [0, 1]
    for name in ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctr_logloss"):
        assert f"test_{name}" in metrics
    assert tags["isrec.model"] == "rnn_mtl" and tags["isrec.role"] == "single"
    # artifacts
    artifacts = _artifact_paths(client, run.info.run_id)
    for path in (
        "config/config.json",
        "config/config.yaml",
        "data/feature_spec.json",
        "environment/environment.json",
        "plots/loss.png",
        "plots/auc.png",
        "plots/roc.png",
        "plots/calibration.png",
    ):
        assert path in artifacts, f"{path} missing from {sorted(artifacts)}"
    config = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config/config.json")
    assert config["model_params"]["embedding_dim"] == 4 and config["hook_pid_file"] == ""
    # the experiment: a description and the classic (not GenAI) kind
    experiment = client.get_experiment(run.info.experiment_id)
    assert "isrec.below_chance" in experiment.tags["mlflow.note.content"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_logged_model_name_metrics_and_dataset(champion):  # noqa: F811
    """The logged model is named after model, seed and run, and carries the best epoch's and
    the test metrics (MLflow's default links step 0: the first epoch's)."""
    client = client_for(champion.tracking_uri)
    run = client.get_run(champion.run_id)
    model = client.get_logged_model(champion.model_uri.removeprefix("models:/"))
    assert model.name == f"rnn_mtl-s0-{champion.run_id[:8]}"
    linked = {(m.key, m.step): m for m in model.metrics}
    best = int(run.data.params["epochs"]) - 1  # make_result: the last epoch is the best
    history = client.get_metric_history(champion.run_id, "valid_ctr_auc")
    best_value = next(m.value for m in history if m.step == best)
    assert linked[("valid_ctr_auc", best)].value == best_value
    assert ("valid_ctr_auc", 0) not in linked  # not the first epoch's
    assert linked[("test_ctcvr_auc", 0)].value == run.data.metrics["test_ctcvr_auc"]
    assert linked[("test_ctcvr_auc", 0)].dataset_name == "samples@v0"
    assert len(history) == 2  # linking the best epoch logged no extra point


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_logged_model_signature_and_example(champion):  # noqa: F811
    store.configure(champion.tracking_uri)
    info = mlflow.models.get_model_info(champion.model_uri)
    inputs = {c["name"]: c for c in info.signature.inputs.to_dict()}
    assert inputs["ad"]["type"] == "long" and inputs["price"]["type"] == "double"
    assert inputs["hist_cate"]["type"] == "any"  # checked by train.pyfunc.to_batch, not MLflow
    assert inputs["hist_len"]["required"] is False
    assert [c["name"] for c in info.signature.outputs.to_dict()] == list(pyfunc.OUTPUTS)
    assert info.signature.params.to_dict()[0]["name"] == "beta"
    local = mlflow.artifacts.download_artifacts(champion.model_uri)
    example = mlflow.models.Model.load(local).load_input_example(local)
    rows = champion.frame.sort_values("impression_id")
    assert len(example) > 0 and example["ad"].iloc[0] in set(rows["ad"])


def test_comparison_groups_seeds_and_registers_best(spark, tmp_path, champion):  # noqa: F811
    uri = sqlite_uri(tmp_path / "mlflow")
    results = [
        make_result(tmp_path / "train", champion.spec, champion.frame, seed=s, lake=champion.lake)
        for s in (1, 2)
    ]
    with comparison.comparison_run(
        MODEL, "cmp-tests", comparison_id="cmp-1", config=results[0].config, tracking_uri=uri
    ) as cmp:
        for result in results:
            with cmp.seed_run(result.config.seed) as run:
                run.log_result(result)
    client = client_for(uri)
    parent = client.get_run(cmp.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["isrec.comparison_id"] == "cmp-1"
    assert parent.data.tags["isrec.role"] == "comparison"
    aucs = [r.test_metrics["ctcvr_auc"] for r in results]
    # the parent's mean has the children's name: one runs-table column covers both
    assert parent.data.metrics["test_ctcvr_auc"] == pytest.approx(np.mean(aucs))
    assert parent.data.metrics["test_ctcvr_auc_std"] == pytest.approx(np.std(aucs, ddof=1))
    assert not any(k.endswith("_mean") for k in parent.data.metrics)
    (parent_input,) = parent.inputs.dataset_inputs  # both seeds read the same version
    assert parent_input.dataset.name == "samples@v0"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{cmp.run_id}'"
    )
    assert sorted(c.data.tags["isrec.seed"] for c in children) == ["1", "2"]
    assert all(c.data.tags["isrec.comparison_id"] == "cmp-1" for c in children)
    # the best seed is the registered challenger
    best = max(zip(aucs, (1, 2), strict=True))[1]
    version = client.get_model_version_by_alias("isrec-rnn_mtl", "challenger")
    best_run = next(c for c in children if c.data.tags["isrec.seed"] == str(best))
    assert version.run_id == best_run.info.run_id
    assert version.tags["isrec.data.samples.version"] == "0"


def test_crashed_run_ends_failed(tmp_path):
    uri = sqlite_uri(tmp_path / "mlflow")
    with (
        pytest.raises(RuntimeError, match="worker died"),
        runs.training_run("crash-tests", tracking_uri=uri) as run,
    ):
        mlflow.log_metric("train_loss", 1.0, step=0)
        raise RuntimeError("worker died")
    client = client_for(uri)
    crashed = client.get_run(run.run_id)
    assert crashed.info.status == "FAILED"
    assert crashed.data.tags["isrec.error"] == "RuntimeError: worker died"
    assert mlflow.active_run() is None
    # a seed crash fails the seed run and its comparison
    with (
        pytest.raises(ValueError, match="bad batch"),
        comparison.comparison_run("esmm", "crash-tests", tracking_uri=uri) as cmp,
        cmp.seed_run(0) as seed_run,
    ):
        raise ValueError("bad batch")
    assert client.get_run(seed_run.run_id).info.status == "FAILED"
    assert client.get_run(cmp.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_input_validation(champion):  # noqa: F811
    spec = champion.spec
    rows = pyfunc.input_example(champion.test_rows(), spec, n=4)
    batch = pyfunc.to_batch(rows.drop(columns=["hist_len"]), spec)
    assert batch["hist_cate"].shape == (4, spec.max_len) and batch["ad"].dtype == np.int64
    expected = (
        (np.stack(rows["hist_cate"]) != 0)
        .sum(1)
        .clip(min=(np.stack(rows["hist_btag"]) != 0).sum(1))
    )
    assert batch["hist_len"].tolist() == expected.tolist()
    short = rows.copy()
    short["hist_cate"] = [[3], [], [2, 3], [4, 4, 4]]
    assert pyfunc.to_batch(short, spec)["hist_cate"][0].tolist() == [3, 0, 0, 0, 0]
    cases = {
        "missing input fields: ['ad']": rows.drop(columns=["ad"]),
        "longer than max_len=5": rows.assign(hist_cate=[[2] * 6] * 4),
        "expected numbers": rows.assign(price=["a", "b", "c", "d"]),
        "ids must be in [0, 40)": rows.assign(ad=[2, 3, 40, 5]),
        "must be a list of int ids": rows.assign(hist_btag=["2,3", "2", "3", "4"]),
        "must be finite": rows.assign(price=[1.0, np.nan, 2.0, 3.0]),
    }
    for message, frame in cases.items():
        with pytest.raises(MlflowException, match=re.escape(message)):
            pyfunc.to_batch(frame, spec)
    with pytest.raises(MlflowException) as err:
        pyfunc.to_batch(rows.assign(hist_cate=[[2] * 6] * 4), spec)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


FRESH = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import train.pyfunc
out = model.predict(pd.read_parquet(sys.argv[2]))
out.to_parquet(sys.argv[3])
training = ("train.driver", "train.worker", "ray")  # pyspark: loaded today, see the H4 report
loaded = sorted(m for m in training if m in sys.modules)
print(json.dumps({"code": train.pyfunc.__file__, "training_modules": loaded}))
"""


def test_pyfunc_loads_in_fresh_process(champion, tmp_path):  # noqa: F811
    rows = pyfunc.input_example(champion.test_rows(), champion.spec, n=len(champion.test_rows()))
    rows.to_parquet(tmp_path / "in.parquet")
    env = mlflow_env(champion.tracking_uri)
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, champion.champion_uri, "in.parquet", "out.parquet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["code"].startswith(str(PROJECT_ROOT)), "model must run its shipped code"
    assert info["training_modules"] == [], "serving must not import the training stack"
    out = pd.read_parquet(tmp_path / "out.parquet")
    # same numbers as the training process produced for these rows
    trained = pd.read_parquet(
        client_for(champion.tracking_uri)
        .get_run(champion.run_id)
        .data.tags["isrec.predictions_path"]
    )
    for key in ("pctr", "pcvr", "pctcvr", "expected_views"):
        np.testing.assert_allclose(out[key], trained[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["score"], out["pctcvr"], atol=1e-12)  # beta = 0


def test_predict_params_beta(champion):  # noqa: F811
    store.configure(champion.tracking_uri)
    model = mlflow.pyfunc.load_model(champion.model_uri)
    rows = pyfunc.input_example(champion.test_rows(), champion.spec, n=5)
    out = model.predict(rows, params={"beta": 0.5})
    expected = out["pctcvr"] + 0.5 * out["expected_views"]
    np.testing.assert_allclose(out["score"], expected, rtol=1e-6)  # float32 network
    assert (out["expected_views"] > 0).all() and out["pctr"].between(0, 1).all()


def inverted(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the train split's clicks flipped: a model learns the opposite of the
    valid split's signal and ranks below chance there."""
    out = frame.copy()
    train = out.split == "train"
    out.loc[train, "click"] = 1.0 - out.loc[train, "click"]
    out.loc[train, "conversion"] = out.loc[train, "conversion"] * out.loc[train, "click"]
    return out


def test_below_chance_run_is_tagged_and_never_promoted(tmp_path, champion, caplog):  # noqa: F811
    uri = sqlite_uri(tmp_path / "mlflow")
    result = make_result(
        tmp_path / "train", champion.spec, inverted(champion.frame), lake=champion.lake
    )
    final = result.history[result.best_epoch]["valid_ctr_auc"]
    assert final < 0.5, final  # the premise: a real model that ranks below chance
    with (
        caplog.at_level("WARNING", logger="train.tracking.guard"),
        runs.training_run("guard-tests", tracking_uri=uri) as run,
    ):
        logged = run.register(run.log_result(result))
    assert "ranks below chance" in caplog.text and "valid_ctr_auc" in caplog.text
    client = client_for(uri)
    tags = client.get_run(logged.run_id).data.tags
    assert tags["isrec.below_chance"] == "true"
    assert float(tags["isrec.guard.valid_ctr_auc"]) == pytest.approx(final)
    version = client.get_model_version("isrec-rnn_mtl", logged.version)
    assert version.tags["isrec.below_chance"] == "true" and "never promoted" in version.description
    decision = registry.promote(MODEL, tracking_uri=uri)  # no champion yet, still refused
    assert not decision.promoted and "below chance" in decision.reason
    assert "champion" not in client.get_registered_model("isrec-rnn_mtl").aliases


def test_plots_draw_aucs_on_their_axis_and_fit_calibration():
    from train.tracking import plots

    rows = [
        {"epoch": e, "valid_ctr_auc": a, "valid_ctr_gauc_users": 440.0, "valid_ctr_gauc": a - 0.01}
        for e, a in enumerate((0.61, 0.64, 0.66))
    ]
    fig = plots.plot_curves(rows, "auc", "AUC", ylim=plots.AUC_AXIS)
    (ax,) = fig.axes
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == ["valid_ctr_auc", "valid_ctr_gauc"]  # not the *_gauc_users count
    assert ax.get_ylim() == (0.5, 1.0)
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    low = plots.plot_curves([{**rows[0], "valid_ctr_auc": 0.38}], "auc", "AUC", plots.AUC_AXIS)
    assert low.axes[0].get_ylim()[0] < 0.38  # a below-chance value stays on the plot
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.1, 5000)
    tasks = {"ctr": ((rng.random(5000) < p).astype(int), p)}
    top = plots.calibration_limit(tasks)
    assert 0.09 < top < 0.2  # fitted to rates of a few percent, not a 0-1 square
    calibration = plots.plot_calibration(tasks)
    assert calibration.axes[0].get_xlim() == (0.0, top)
