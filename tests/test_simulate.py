"""The closed loop: the policy adapter, the report's arithmetic, the options, and a two-round,
two-arm simulation end to end through real Spark, Ray Train and MLflow on a tiny world."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_mlflow import PROJECT_ROOT, client_for, sqlite_uri

from etl.online import FeatureBundle
from etl.spec import FeatureSpec
from etl.world import LoopConfig, TaobaoWorld, WorldConfig
from train.models import build_model
from train.policy import make_policy
from train.sim.config import SimulateConfig
from train.sim.ranker import ModelScorer, ModelSlatePolicy, PastEvents, read_profiles
from train.sim.report import Rounds, final_table


def tiny_world() -> TaobaoWorld:
    return TaobaoWorld(WorldConfig(users=60, seed=3, days=2, history_days=1), LoopConfig(slate=8))


def test_beta_zero_reproduces_greedy_exactly(ranker, tmp_path):
    """incentive:0 and greedy make the same choices, so the world logs the same day."""
    torch.manual_seed(0)
    model = build_model("rnn_mtl", ranker.spec).eval()
    scorer = ModelScorer(model, FeatureBundle.from_lake(ranker.lake))
    logs = {}
    for spec in ("greedy", "incentive:0"):
        world, past = tiny_world(), PastEvents()
        for day in (-1, 0):
            past.extend(world.simulate_day(day).logs.behaviors)
        profiles = read_profiles(str(ranker.world / "user_profile.csv"))
        policy = ModelSlatePolicy(make_policy(spec), scorer, past, profiles)
        logs[spec] = world.simulate_day(1, policy).logs
    greedy, incentive = logs["greedy"], logs["incentive:0"]
    assert greedy.impressions["user"].size > 0
    for part in ("impressions", "behaviors"):
        mine, theirs = getattr(greedy, part), getattr(incentive, part)
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{part}.{key}")
    # and a policy that does differ from greedy changes the world's answer
    world, past = tiny_world(), PastEvents()
    for day in (-1, 0):
        past.extend(world.simulate_day(day).logs.behaviors)
    uniform = ModelSlatePolicy(make_policy("uniform"), None, past, {})
    other = world.simulate_day(1, uniform).logs.impressions
    assert not np.array_equal(other["ad"], greedy.impressions["ad"])


def test_off_policy_recorder_estimates_without_moving_the_world(ranker):
    """The recorder sees every slate of the softmax day for each target: the world's day is
    the same with it, the logging policy as its own target gets IPS = the day's mean purchase
    exactly, and uniform's true value is the slates' mean truth."""
    from train.sim.offpolicy import OffPolicyRecorder, with_errors

    torch.manual_seed(0)
    scorer = ModelScorer(
        build_model("rnn_mtl", ranker.spec).eval(), FeatureBundle.from_lake(ranker.lake)
    )
    profiles = read_profiles(str(ranker.world / "user_profile.csv"))
    days = {}
    for record in (False, True):
        world, past = tiny_world(), PastEvents()
        for day in (-1, 0):
            past.extend(world.simulate_day(day).logs.behaviors)
        logging = ModelSlatePolicy(make_policy("softmax:0.05"), scorer, past, profiles)
        policy = logging
        if record:
            targets = {
                name: ModelSlatePolicy(make_policy(name), scorer, past, profiles)
                for name in ("softmax:0.05", "greedy", "uniform")
            }
            policy = recorder = OffPolicyRecorder(logging, targets)
        days[record] = world.simulate_day(1, policy).logs.impressions
    for key in days[False]:
        np.testing.assert_array_equal(days[False][key], days[True][key], err_msg=key)
    imp = days[True]
    assert imp["user"].size > 20
    found = recorder.estimates(imp)
    assert set(found) == {"softmax:0.05", "greedy", "uniform"}
    assert found["softmax:0.05"]["ope_ips"] == pytest.approx(imp["conversion"].mean())
    truth = np.concatenate(recorder.true_value)
    assert found["uniform"]["ope_truth"] == pytest.approx(truth.mean(axis=1).mean())
    assert all(np.isfinite(v) for est in found.values() for v in est.values())
    errors = with_errors(found["greedy"], 0.5)
    assert errors["ope_dr_error"] == pytest.approx(found["greedy"]["ope_dr"] - 0.5)
    assert errors["ope_dr_sq_error"] == pytest.approx(errors["ope_dr_error"] ** 2)


def test_rounds_cumulate_and_interval():
    rounds = Rounds(["greedy", "oracle"])
    for seed, extra in ((0, 0.0), (1, 2.0)):
        for r in range(3):
            rounds.add("greedy", seed, r, {"purchases": 10.0 + extra, "impressions": 100.0})
            rounds.add("oracle", seed, r, {"purchases": 15.0 + extra, "impressions": 100.0})
    summary = rounds.summary("greedy")
    assert [e["round"] for e in summary] == [0, 1, 2]
    assert summary[0]["cum_purchases"] == 0.0  # round 0 is the common start
    assert summary[2]["cum_purchases"] == pytest.approx(22.0)  # (20 + 24) / 2
    # seeds 20 and 24: mean 22, std 2 sqrt 2, half-width t(0.975, 1) * std / sqrt(2) = 12.706 * 2
    assert summary[2]["cum_purchases_ci95"] == pytest.approx(12.7062 * 2.0, rel=1e-4)
    assert summary[2]["regret"] == pytest.approx(10.0)
    table = final_table(rounds.to_json())
    assert table.splitlines()[1].startswith("greedy") and "±" in table


def test_data_effect_arm_spec():
    from train.sim.arms import Arm, arm_name, split_spec

    assert split_spec("incentive:0.5@greedy") == ("incentive:0.5", "greedy")
    assert split_spec("softmax:0.1") == ("softmax:0.1", None)
    assert arm_name("incentive:0.5@greedy") == "incentive-0.5-on-greedy"
    arm = Arm("incentive:0.5@greedy", PROJECT_ROOT)
    assert arm.trains_on == "greedy" and arm.policy.name.startswith("incentive")
    SimulateConfig(policies="greedy,incentive@greedy").validate()
    with pytest.raises(ValueError, match="trains on 'greedy@uniform'"):
        SimulateConfig(policies="uniform,greedy@uniform,incentive@greedy@uniform").validate()


def test_bad_options_are_one_line_exit_2(tmp_path):
    for args, words in (
        (["--policies", "greedy,bogus"], "unknown policy"),
        (["--rounds", "0"], "--rounds"),
        (["--policies", "greedy,greedy"], "twice"),
        (["--new-ad-share", "2"], "new-ad-share"),
        (["--policies", "greedy,incentive@uniform"], "trains on 'uniform'"),
        (["--policies", "greedy,softmax", "--ope-arm", "uniform"], "--ope-arm"),
        (["--policies", "greedy,uniform@greedy,incentive@uniform@greedy"], "trains on"),
    ):
        done = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "jobs" / "simulate.py"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
        assert not any(tmp_path.iterdir()), "nothing written"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_two_rounds_two_arms_end_to_end(spark, tmp_path):
    from train.driver import run_training
    from train.sim.arms import Arm
    from train.sim.loop import arm_train_config, held_out_mask, run_simulation, seed_world

    uri = sqlite_uri(tmp_path)
    cfg = SimulateConfig(
        data_dir=str(tmp_path / "sim"),
        policies="greedy,uniform,greedy@uniform",
        ope_arm="uniform",  # uniform logging has full support: the other arms' OPE
        rounds=2,
        seeds=1,
        users=120,
        slate=10,
        epochs=1,
        eval_users=80,
        tracking_uri=uri,
        concurrent_trainings=2,
    )
    report = run_simulation(spark, cfg)
    assert set(report["arms"]) == {"greedy", "uniform", "greedy@uniform"}
    for arm, entry in report["arms"].items():
        rounds = entry["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert rounds[1]["impressions"] > 0 and rounds[2]["cum_impressions"] > 0
        assert rounds[2]["cum_purchases"] >= rounds[1]["cum_purchases"] >= 0
        assert 0.0 < rounds[2]["ctr_auc"] < 1.0, (arm, rounds[2])
        assert rounds[2]["oracle_ctr_auc"] > 0.5
    # round 0 is the same logging-policy day for both arms; round 1 differs by policy
    g, u = report["arms"]["greedy"]["rounds"], report["arms"]["uniform"]["rounds"]
    assert g[0]["impressions"] == u[0]["impressions"]
    # round 1 trains once on those shared logs: the same model for both, then their own
    assert g[1]["ctr_auc"] == u[1]["ctr_auc"] and (tmp_path / "sim/seed_0/uniform/lake").is_dir()
    assert set(report["stages"]) >= {"world", "etl", "training", "registration", "policy"}
    client = client_for(uri)
    experiment = client.get_experiment(client.get_run(report["mlflow_run_id"]).info.experiment_id)
    assert experiment.artifact_location.startswith(tmp_path.as_uri())  # not ./mlruns
    for arm in ("greedy", "uniform"):
        versions = client.search_model_versions(f"name='isrec-sim-{arm}'")
        assert sorted(int(v.tags["isrec.round"]) for v in versions) == [1, 2]
        assert {v.tags["isrec.arm"] for v in versions} == {arm}
    children = client.search_runs(
        [client.get_run(report["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'",
    )
    assert len(children) == 6
    # the data-effect arm serves greedy with uniform's models: same quality, its own logs
    borrowed = report["arms"]["greedy@uniform"]["rounds"]
    assert [r["ctr_auc"] for r in borrowed[1:]] == [r["ctr_auc"] for r in u[1:]]
    for arm in ("greedy", "greedy@uniform"):
        last = report["arms"][arm]["rounds"][-1]
        assert last["ope_ips"] >= 0.0 and 0.0 <= last["ope_truth"] <= 1.0, last
        assert last["ope_dr_error"] == pytest.approx(
            last["ope_dr"] - last["purchases_per_impression"]
        )
    assert "ope_ips" not in report["arms"]["uniform"]["rounds"][-1]
    versions = client.search_model_versions("name='isrec-sim-greedy-on-uniform'")
    assert {v.tags["isrec.trains_on"] for v in versions} == {"uniform"}
    # round 2: the ETL added the new day to the round-1 lake (one replaceWhere commit per
    # table, append-only vocabularies) and training warm-started from round 1's model
    versions = client.search_model_versions("name='isrec-sim-greedy'")
    by_round = {v.tags["isrec.round"]: v.tags["isrec.warm_start"] for v in versions}
    assert by_round == {"1": "false", "2": "true"}
    # the evaluation day's users are held out: in no arm's logs
    world = seed_world(cfg, 0)
    held_out = set(world.users.ids[~held_out_mask(world, cfg.eval_users)].tolist())
    assert len(held_out) == cfg.eval_users
    for arm in ("greedy", "uniform", "greedy-on-uniform"):
        raw = tmp_path / "sim" / "seed_0" / arm / "raw"
        for name in ("raw_sample.csv", "behavior_log.csv"):
            logged = pd.read_csv(raw / name, usecols=[0]).iloc[:, 0]
            assert logged.size and not held_out & set(logged.tolist()), (arm, name)
    lake = tmp_path / "sim" / "seed_0" / "greedy" / "lake"
    spec = FeatureSpec.load(lake)
    assert spec.vocab_version >= 1 and spec.tables["events"] >= 1
    assert replace_where_predicate(lake / "events", spec.tables["events"])
    # round 2 trained greedy and uniform at once, uniform's while greedy's ran: trained again
    # alone from the same checkpoint it gives the same model
    (child,) = [
        c for c in children if c.data.params["arm"] == "uniform" and c.data.params["round"] == "2"
    ]
    init_from = child.data.params["init_from"]
    assert "round1" in init_from
    # a warm round reads only the newest train day (--warm-train-days 1), round 1 every day
    days = {(c.data.params["round"], c.data.params["train_days"]) for c in children}
    assert days == {("1", "0"), ("2", "1")}
    uniform = Arm("uniform", tmp_path / "sim" / "seed_0" / "uniform")
    alone = run_training(replace(arm_train_config(cfg, uniform, 0, 2, init_from), name="alone"))
    assert alone.history[-1]["valid_ctr_auc"] == u[2]["valid_ctr_auc"]


def replace_where_predicate(table: Path, version: int) -> str:
    """The replaceWhere predicate of a Delta commit ('' for a whole-table overwrite)."""
    for line in (table / "_delta_log" / f"{version:020d}.json").read_text().splitlines():
        info = json.loads(line).get("commitInfo")
        if info:
            return str(info.get("operationParameters", {}).get("predicate", ""))
    return ""
