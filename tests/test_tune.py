"""Hyperparameter search (train/tune.py, jobs/tune.py): the search spaces, options checked before
anything starts, and a real search: Ray Tune with ASHA over Ray Train runs on a real Delta lake,
every trial a child MLflow run (SQLite store), the best config trained again by jobs/train.py.
"""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers_samples import shared_lake
from train import tune as tune_module
from train.config import MODEL_CONFIGS, resolve_config
from train.metrics import is_better, metric
from train.train_config import TrainConfig, parse_config
from train.tune_space import TRAIN_KEYS, build_space, default_space, split_sample

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SMALL_SPACE = [
    "batch_size=choice:32|64",
    "lr=loguniform:1e-3:3e-2",
    "embedding_dim=choice:4|8",
    "gru_hidden=choice:8|16",
    "shared_hidden=choice:16|16,8",
    "tower_hidden=8",
]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    return shared_lake(spark, tmp_path_factory.getbasetemp())


# --- search spaces ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODEL_CONFIGS))
def test_default_space_of_every_model_builds_its_model_config(model):
    space = build_space(model, {})
    assert set(TRAIN_KEYS) <= set(space) and set(space) == set(default_space(model))
    assert len(space) > len(TRAIN_KEYS)  # model settings are searched too
    for dim in space.values():
        assert dim.kind != "fixed" and dim.values
        sample = {dim.key: dim.values[-1]}
        train, params = split_sample(sample)
        resolve_config(model, params)  # every value is one the model config takes
        assert all(isinstance(v, int | float) for v in train.values())


def test_space_overrides_and_text_form():
    space = build_space("rnn_mtl", {"gru_hidden": "randint:8:17", "packed": "false"}, False)
    assert set(space) == {"gru_hidden", "packed"}
    assert space["gru_hidden"].text() == "randint:8:17"
    assert space["packed"].kind == "fixed" and space["packed"].values == (False,)
    merged = build_space("esmm", {"lr": "0.01", "tower_hidden": "choice:16|32,16"})
    assert merged["lr"].values == (0.01,) and merged["tower_hidden"].values == ("16", "32,16")
    assert build_space("esmm", {"lr": merged["lr"].text()})["lr"] == merged["lr"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"gru_size": "choice:8"}, "unknown key 'gru_size'"),
        ({"lr": "loguniform:0:1"}, "loguniform needs LO > 0"),
        ({"dropout": "uniform:0.3:0.1"}, "LO must be below HI"),
        ({"embedding_dim": "uniform:4:8"}, "use randint or choice"),
        ({"tower_hidden": "uniform:1:2"}, "use choice or a fixed value"),
        ({"gru_hidden": "choice:abc"}, "bad value for gru_hidden"),
        ({"batch_size": "choice:0|64"}, "out of range"),
        ({"lr": "choice:fast"}, "not a lr value"),
        ({"dropout": "choice:"}, "at least one option"),
    ],
)
def test_bad_space_is_one_line_error(override, message):
    with pytest.raises(ValueError, match=message) as info:
        build_space("rnn_mtl", override)
    assert "\n" not in str(info.value)


# --- options checked before anything starts -----------------------------------------------------
@pytest.fixture
def no_ray(monkeypatch):
    def boom(cfg):
        raise AssertionError("Ray must not start when the options are bad")

    monkeypatch.setattr(tune_module, "connect_ray", boom)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "lr=loguniform:0:1"], "loguniform needs LO > 0"),
        (["--space", "hidden=64"], "unknown key 'hidden'"),
        (["--seeds", "2"], "each trial trains one seed"),
        (["--grace-period", "3", "--epochs", "2"], "exceeds --epochs"),
        (["--model", "gpt"], "unknown model 'gpt'"),
        (["--lake", "NOWHERE"], "does not exist"),
    ],
)
def test_jobs_tune_bad_options_exit_2_before_anything(no_ray, tmp_path, capsys, argv, message):
    from jobs.tune import main

    out = tmp_path / "best.json"
    base = ["--lake", str(tmp_path / "nowhere"), "--best-config", str(out)]
    base += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    argv = [str(tmp_path / a) if a == "NOWHERE" else a for a in argv]
    assert main([*base, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0 and message in captured.err
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trials", "0"], "--trials must be >= 1"),
        (["--reduction-factor", "1"], "--reduction-factor must be > 1"),
        (["--scheduler", "hyperband"], "invalid choice"),
        (["--space", "lr"], "--space expects KEY=SPEC"),
    ],
)
def test_jobs_tune_bad_flags_exit_2(no_ray, capsys, argv, message):
    from jobs.tune import main

    with pytest.raises(SystemExit) as info:
        main(["--lake", "L", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err


# --- a real search ------------------------------------------------------------------------------
def test_search_logs_trials_and_writes_a_config_train_reads(lake, ray_cluster, tmp_path, capsys):
    from jobs.train import main as train_main
    from jobs.tune import main as tune_main

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    best_path = tmp_path / "tuned" / "best.json"
    argv = [
        "--lake", str(lake[0]), "--model", "rnn_mtl", "--trials", "3", "--epochs", "2",
        "--num-workers", "1", "--max-steps-per-epoch", "3", "--eval-batch-size", "256",
        "--loader", "pyarrow", "--log-every", "0", "--max-failures", "0",
        "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri, "--name", "tune-test",
        "--best-config", str(best_path), "--grace-period", "1", "--reduction-factor", "2",
    ]  # fmt: skip
    for dim in SMALL_SPACE:
        argv += ["--space", dim]
    assert tune_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert f"best config: {best_path}" in lines
    key = f"valid_{TrainConfig().early_stop_metric}"  # in the registry's direction
    assert out["trials"] == 3 and out["failed"] == 0 and out["metric"] == key
    assert out["completed"] + out["stopped_early"] == 3 and out["completed"] >= 1
    assert out["mode"] == metric(key).mode and out["best_config"] == str(best_path)
    assert _free_cpus_after_search() == 2  # stopped trials' worker groups were released

    client = MlflowClient(uri)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["isrec.role"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.params["tune.scheduler"] == "asha"
    assert parent.data.params["space.batch_size"] == "choice:32|64"
    assert "batch_size" not in parent.data.params  # searched: not a setting of the parent
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3
    best_run, best_value, stopped = None, None, 0
    for child in children:
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert tags["isrec.role"] == "trial" and child.info.status == "FINISHED"
        assert float(params["lr"]) == float(params["space.lr"])  # the sample is what it trained
        assert params["model_params.gru_hidden"] == params["space.gru_hidden"]
        history = client.get_metric_history(child.info.run_id, key)
        steps = sorted(m.step for m in history)
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 2
        if tags["isrec.trial_status"] == "completed":
            assert len(steps) == 2 and "test_ctr_auc" in metrics
        else:
            assert tags["isrec.trial_status"] == "stopped" and "test_ctr_auc" not in metrics
            stopped += 1
        for m in history:
            if is_better(key, m.value, best_value):
                best_run, best_value = child, m.value
    assert stopped == out["stopped_early"]
    assert out["best_trial_run_id"] == best_run.info.run_id
    assert out["best_value"] == pytest.approx(best_value)
    assert parent.data.metrics[f"best_{key}"] == pytest.approx(best_value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/best_config.json", "tune/space.json", "tune/trials.csv"} <= artifacts

    # the best config is a train config: what jobs/train.py --config reads is the best trial
    cfg = parse_config(["--config", str(best_path)])
    params = best_run.data.params
    assert isinstance(cfg, TrainConfig) and cfg.model == "rnn_mtl" and cfg.lake == str(lake[0])
    assert cfg.lr == float(params["lr"]) and cfg.batch_size == int(params["batch_size"])
    assert cfg.max_steps_per_epoch == 3 and cfg.num_workers == 1  # the search's base
    resolved = resolve_config("rnn_mtl", cfg.model_params).to_dict()
    for key in ("embedding_dim", "gru_hidden", "shared_hidden", "tower_hidden", "dropout"):
        assert json.dumps(resolved[key]) == params[f"model_resolved.{key}"]
    retrain = ["--config", str(best_path), "--no-track", "--storage-path", str(tmp_path / "re")]
    assert train_main(retrain) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert math.isfinite(metrics["ctr_auc"])
    if best_run.data.tags["isrec.trial_status"] == "completed":  # same seed, data, config
        trial_test = best_run.data.metrics["test_ctr_auc"]
        assert metrics["ctr_auc"] == pytest.approx(trial_test, abs=1e-6)


def _free_cpus_after_search(wait_s: float = 20.0) -> float:
    import time

    import ray

    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get("CPU", 0)


def test_best_config_leaves_out_per_run_fields():
    base = TrainConfig(lake="/l", name="tune-x", epochs=3, model_params={"gru_hidden": "8"})
    sample = {"lr": 0.002, "batch_size": 64, "dropout": 0.1, "tower_hidden": "16,8"}
    config = tune_module.best_config(base, sample)
    assert "name" not in config and "seeds" not in config and "hook_at" not in config
    assert config["lr"] == 0.002 and config["batch_size"] == 64 and config["epochs"] == 3
    assert config["model_params"] == {"gru_hidden": "8", "dropout": 0.1, "tower_hidden": "16,8"}
    assert config["weight_decay"] == 0.0  # tuned keys are always written, default or not
