"""Registry: isrec-<model> per family, challenger alias on registration, champion gate."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import ModuleType

import pytest
from helpers_mlflow import PROJECT_ROOT, client_for, fake_version, mlflow_env, sqlite_uri

from train import registry
from train.metrics import metric


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return sqlite_uri(tmp_path_factory.mktemp("registry"))


def aliases(uri: str, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client_for(uri).get_registered_model(name).aliases.items()}


def test_names_and_metric_direction():
    assert registry.registered_model_name("rnn_mtl") == "isrec-rnn_mtl"
    assert registry.registered_model_name("isrec-esmm") == "isrec-esmm"
    assert registry.champion_uri("esmm") == "models:/isrec-esmm@champion"
    assert metric("ctcvr_auc").mode == "max" and metric("ctr_gauc").mode == "max"
    assert metric("ctcvr_logloss").mode == "min"


def test_promotion_gate(store):
    client = client_for(store)
    name = "isrec-gate"
    v1 = fake_version(store, "gate", {"ctcvr_auc": 0.70})
    assert aliases(store, name) == {"challenger": v1}
    registered = client.get_model_version(name, v1)
    assert registered.tags == {  # a few chips in the UI, not every run tag
        "isrec.data.samples.path": "/lake/samples",
        "isrec.data.samples.version": "0",
        "isrec.metric.test_ctcvr_auc": "0.7",
    }
    assert "ctcvr_auc 0.7000" in registered.description

    first = registry.promote("gate", tracking_uri=store)  # no champion yet -> promote
    assert first.promoted and "no champion yet" in first.reason
    assert aliases(store, name)["champion"] == v1

    v2 = fake_version(store, "gate", {"ctcvr_auc": 0.65})  # worse -> refused
    worse = registry.promote("isrec-gate", tracking_uri=store)
    assert not worse.promoted and "does not beat" in worse.reason
    assert (worse.challenger_value, worse.champion_value) == (0.65, 0.70)
    assert aliases(store, name) == {"champion": v1, "challenger": v2}
    mv2 = client.get_model_version(name, v2)
    assert mv2.tags["isrec.promotion.decision"] == "refused"
    assert mv2.tags["isrec.promotion.champion_version"] == v1
    assert len(mv2.tags) == 5  # data (2), metric, decision, champion before
    assert "REFUSED" in mv2.description and "0.650000 vs 0.700000" in mv2.description

    v3 = fake_version(store, "gate", {"ctcvr_auc": 0.90}, samples_version=1)  # other data
    other = registry.promote("gate", tracking_uri=store)
    assert not other.promoted and "different data version" in other.reason
    assert aliases(store, name)["champion"] == v1
    assert client.get_model_version(name, v3).tags["isrec.promotion.decision"] == "refused"

    v4 = fake_version(store, "gate", {"ctcvr_auc": 0.72})  # better on the same data
    better = registry.promote("gate", tracking_uri=store)
    assert better.promoted and better.champion_version == v1
    assert aliases(store, name) == {"champion": v4, "challenger": v4}
    assert client.get_model_version(name, v1).tags["isrec.promotion.replaced_by"] == v4
    assert client.get_model_version(name, v4).tags["isrec.promotion.decision"] == "promoted"

    again = registry.promote("gate", tracking_uri=store)  # idempotent rerun
    assert not again.promoted and "already is the champion" in again.reason


def test_registering_a_run_again_adds_no_version(store):
    client = client_for(store)
    first = fake_version(store, "retry", {"ctcvr_auc": 0.7})
    run_id = client.get_model_version("isrec-retry", first).run_id
    source = client.get_model_version("isrec-retry", first).source
    again = registry.register_version(source, "retry", run_id=run_id, tracking_uri=store)
    assert str(again.version) == first
    assert len(client.search_model_versions("name = 'isrec-retry'")) == 1
    other = fake_version(store, "retry", {"ctcvr_auc": 0.8})  # another run: a new version
    assert other != first
    assert len(client.search_model_versions("name = 'isrec-retry'")) == 2


def test_lower_is_better_metric_and_min_delta(store):
    fake_version(store, "loss", {"ctcvr_logloss": 0.50, "ctcvr_auc": 0.7})
    assert registry.promote("loss", "ctcvr_logloss", tracking_uri=store).promoted
    fake_version(store, "loss", {"ctcvr_logloss": 0.45, "ctcvr_auc": 0.7})
    small = registry.promote("loss", "ctcvr_logloss", min_delta=0.1, tracking_uri=store)
    assert not small.promoted and "min_delta 0.1" in small.reason
    assert registry.promote("loss", "ctcvr_logloss", tracking_uri=store).promoted


def run_cli(*args: str, uri: str) -> subprocess.CompletedProcess:
    env = mlflow_env(uri)
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "jobs" / "promote.py"), *args, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def load_job(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"job_{name}", PROJECT_ROOT / "jobs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promote_cli(store, capsys):
    fake_version(store, "cli", {"ctcvr_auc": 0.6})
    done = run_cli("--model-name", "isrec-cli", "--json", uri=store)  # as a script
    assert done.returncode == 0, done.stderr[-2000:]
    decision = json.loads(done.stdout)
    assert decision["promoted"] and decision["metric"] == "ctcvr_auc"
    job = load_job("promote")
    fake_version(store, "cli", {"ctcvr_auc": 0.5})
    assert job.main(["--model-name", "cli", "--fail-if-refused", "--tracking-uri", store]) == 1
    assert capsys.readouterr().out.startswith("REFUSED isrec-cli v2")
    assert job.main(["--model-name", "isrec-nope", "--tracking-uri", store]) == 2
    assert "isrec-nope" in capsys.readouterr().err


def test_below_chance_challenger_is_never_promoted(store):
    client = client_for(store)
    flagged = {"isrec.below_chance": "true", "isrec.guard.valid_ctr_auc": "0.41"}
    v1 = fake_version(store, "chance", {"ctcvr_auc": 0.6}, run_tags=flagged)
    assert client.get_model_version("isrec-chance", v1).tags["isrec.below_chance"] == "true"
    first = registry.promote("chance", tracking_uri=store)  # even with no champion
    assert not first.promoted and "below chance" in first.reason
    assert "champion" not in aliases(store, "isrec-chance")
    fine = {"isrec.below_chance": "false"}
    v2 = fake_version(store, "chance", {"ctcvr_auc": 0.55}, run_tags=fine)
    assert registry.promote("chance", tracking_uri=store).promoted
    v3 = fake_version(store, "chance", {"ctcvr_auc": 0.9}, run_tags=flagged)  # better, flagged
    assert not registry.promote("chance", tracking_uri=store).promoted
    assert aliases(store, "isrec-chance") == {"champion": v2, "challenger": v3}
    assert v1 != v2
