"""``run_simulation``: seeds x rounds x arms through the real ETL, Ray Train and MLflow.

Per seed: one world (``TaobaoWorld``; every arm sees the same users, catalog and session plan
of a day, and answers only to its own policy). Round 0: ``history_days`` behavior-only days and
``initial_days`` impression days under the world's logging policy, the same logs for every
arm. Each round r >= 1, per arm: the ETL of the arm's days into the arm's lake (one Spark
session for the whole simulation; round 1 a full run, later rounds an incremental one that adds
the newest day with append-only vocabularies, etl/incremental.py; all days but the newest
train, the newest validates), a Ray Train run of the model (with ``warm_start``, the default,
from the arm's previous round's best checkpoint, train/warm_start.py; round 1 from scratch),
the model logged and registered in MLflow as a
version of ``isrec-sim-<arm>`` tagged with arm, round and seed, then the arm's policy with that
model serves day r (``initial_days - 1 + r``) of the world. Every number of the day and the
model's quality on the seed's fixed evaluation day go to a child run of the simulation's run.
Round 1 is trained once: every arm's lake and model of round 1 are copies of the first arm's,
as they all see the same round-0 logs and training seed. An arm ``POLICY@ARM`` trains nothing:
it serves with ``ARM``'s model of the round, so its difference to the arm serving POLICY with
models of its own data is the data effect alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from etl.config import EtlConfig
from etl.online import FeatureBundle
from etl.pipeline import run_etl
from etl.spec import SPEC_FILE, FeatureSpec
from etl.world import LoopConfig, TaobaoWorld, WorldConfig
from train.sim.arms import Arm, arm_name
from train.sim.config import SimulateConfig
from train.sim.measure import EvalSet, day_metrics
from train.sim.offpolicy import OffPolicyRecorder, with_errors
from train.sim.ranker import ModelScorer, ModelSlatePolicy, PastEvents, read_profiles
from train.sim.report import Rounds

LOOP_LOGGER = __name__  # its INFO records: one per arm and round (the terminal's lines)
log = logging.getLogger(LOOP_LOGGER)
Stages = dict[str, float]  # stage -> seconds


def run_simulation(spark: Any, cfg: SimulateConfig) -> dict[str, Any]:
    """The whole experiment; returns the report (train/sim/report.py ``Rounds.to_json``)."""
    import mlflow

    from train.tracking.store import ensure_experiment

    # created with its artifacts beside a SQLite store (mlflow.set_experiment would put them in
    # ./mlruns of the working directory)
    mlflow.set_experiment(experiment_id=ensure_experiment(cfg.experiment, cfg.tracking_uri or None))
    rounds, stages = Rounds(cfg.arm_specs()), dict.fromkeys(STAGES, 0.0)
    with mlflow.start_run(run_name=f"simulate-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if v != ""})
        for seed in range(cfg.seeds):
            run_seed(spark, cfg, seed, rounds, stages)
        report = rounds.to_json() | {"mlflow_run_id": parent.info.run_id, "stages": stages}
        rounds.log_plots(Path(cfg.data_dir))
        mlflow.log_dict(report, "simulation.json")
    return report


STAGES = ("world", "etl", "training", "registration", "policy", "evaluation")


def run_seed(spark: Any, cfg: SimulateConfig, seed: int, rounds: Rounds, stages: Stages) -> None:
    t0 = time.perf_counter()
    world = seed_world(cfg, seed)
    served = held_out_mask(world, cfg.eval_users)
    held_out = ~served
    root = Path(cfg.data_dir) / f"seed_{seed}"
    arms = [Arm(spec, root / arm_name(spec)) for spec in cfg.arm_specs()]
    arms.sort(key=lambda a: a.trains_on is not None)  # sources train before their borrowers
    by_spec = {a.spec: a for a in arms}
    eval_past = PastEvents()  # the held-out users' behaviors: no arm logs or trains on them
    for day in range(-cfg.history_days, cfg.initial_days):
        logs = world.simulate_day(day, users=served)
        for arm in arms:
            arm.add_day(world, logs)
        eval_past.extend(world.simulate_day(day, users=held_out).logs.behaviors)
    profiles = read_profiles(str(arms[0].raw / "user_profile.csv"))
    round0 = day_metrics(logs, cfg.world_users, arms[0].ad_impressions)
    stages["world"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = EvalSet.build(world, cfg.initial_days, eval_past, profiles, held_out)
    stages["evaluation"] += time.perf_counter() - t0
    for arm in arms:
        rounds.add(arm.spec, seed, 0, round0)
    checkpoints: dict[str, str] = {}  # arm -> best checkpoint of its latest training
    for r in range(1, cfg.rounds + 1):
        qualities: dict[str, dict[str, float]] = {}
        first = None  # round 1: the arm whose training on the shared round-0 logs all reuse
        for arm in arms:
            if arm.trains_on is not None:
                arm.borrow(by_spec[arm.trains_on])
                qualities[arm.spec] = qualities[arm.trains_on]
            elif r == 1 and first is not None:
                t0 = time.perf_counter()
                arm.copy_round_one(first)
                checkpoints[arm.spec] = checkpoints[first.spec]
                qualities[arm.spec] = qualities[first.spec]
                stages["etl"] += time.perf_counter() - t0
            else:
                qualities[arm.spec] = retrain(
                    spark, cfg, arm, seed, r, evaluation, stages, checkpoints
                )
                first = first or arm
        serve_round(cfg, world, served, arms, seed, r, profiles, qualities, rounds, stages)


def serve_round(
    cfg: SimulateConfig,
    world: TaobaoWorld,
    served: np.ndarray,
    arms: list[Arm],
    seed: int,
    round_: int,
    profiles: dict,
    qualities: dict[str, dict[str, float]],
    rounds: Rounds,
    stages: Stages,
) -> None:
    """Each arm's policy with its model of the round serves day ``initial_days - 1 + round_``
    to the ``served`` users; the OPE arm (if any) serves first, recording every other arm's
    view of its slates."""
    day = cfg.initial_days - 1 + round_
    ope_arm = cfg.ope_arm_spec()
    ope: dict[str, dict[str, float]] = {}
    for arm in sorted(arms, key=lambda a: a.spec != ope_arm):
        t0 = time.perf_counter()
        policy = ModelSlatePolicy(arm.policy, arm_scorer(arm), arm.past, profiles)
        recorder = None
        if arm.spec == ope_arm:
            targets = {
                other.spec: ModelSlatePolicy(other.policy, arm_scorer(other), arm.past, profiles)
                for other in arms
                if other is not arm
            }
            policy = recorder = OffPolicyRecorder(policy, targets)
        logs = world.simulate_day(day, policy, users=served)
        arm.add_day(world, logs)
        if recorder is not None:
            ope = recorder.estimates(logs.logs.impressions)
        stages["policy"] += time.perf_counter() - t0
        metrics = day_metrics(logs, cfg.world_users, arm.ad_impressions) | qualities[arm.spec]
        if arm.spec in ope:
            metrics |= with_errors(ope[arm.spec], metrics["purchases_per_impression"])
        rounds.add(arm.spec, seed, round_, metrics)
        t0 = time.perf_counter()
        log_child(cfg, arm, seed, round_, metrics)
        stages["registration"] += time.perf_counter() - t0


def seed_world(cfg: SimulateConfig, seed: int) -> TaobaoWorld:
    """The world of one seed: the served users plus ``eval_users`` held-out ones."""
    return TaobaoWorld(
        WorldConfig(
            seed=seed,
            users=cfg.world_users + cfg.eval_users,
            days=cfg.initial_days + cfg.rounds,
            history_days=cfg.history_days,
        ),
        LoopConfig(slate=cfg.slate, new_ad_share=cfg.new_ad_share),
    )


def held_out_mask(world: TaobaoWorld, eval_users: int) -> np.ndarray:
    """Boolean mask of the users the arms serve: all but the last ``eval_users`` (held out:
    they appear in no arm's logs, only in the evaluation day)."""
    served = np.ones(world.users.ids.size, dtype=bool)
    served[world.users.ids.size - eval_users :] = False
    return served


def arm_scorer(arm: Arm) -> ModelScorer | None:
    return ModelScorer(arm.model, arm.bundle) if arm.model is not None else None


def retrain(
    spark: Any,
    cfg: SimulateConfig,
    arm: Arm,
    seed: int,
    round_: int,
    evaluation: EvalSet,
    stages: Stages,
    checkpoints: dict[str, str] | None = None,
) -> dict[str, float]:
    """ETL + training + registration of the arm's model for round ``round_``; its quality.
    ``checkpoints`` (arm -> best checkpoint of its last training) is read for a warm start and
    updated."""
    from train.driver import run_training
    from train.models import build_model
    from train.pyfunc import load_checkpoint_state
    from train.train_config import TrainConfig

    t0 = time.perf_counter()
    etl = EtlConfig(
        input=str(arm.raw),
        output=str(arm.lake),
        max_len=cfg.max_len,
        test_days=0,
        valid_days=1,
        incremental=(arm.lake / SPEC_FILE).exists(),  # round 1 full, then the new day only
    )
    run_etl(spark, etl)
    stages["etl"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    train_cfg = TrainConfig(
        lake=str(arm.lake),
        model=cfg.model,
        num_workers=cfg.num_workers,
        epochs=cfg.epochs,
        seed=seed * 1000 + round_,
        track=False,
        register=False,
        storage_path=str(arm.root / "ray_results"),
        name=f"{arm.name}-seed{seed}-round{round_}",
        init_from=(checkpoints or {}).get(arm.spec, "") if cfg.warm_start else "",
    )
    result = run_training(train_cfg)
    if checkpoints is not None:
        checkpoints[arm.spec] = result.best_checkpoint_path
    spec = FeatureSpec.load(arm.lake)
    model = build_model(cfg.model, spec, train_cfg.model_params)
    model.load_state_dict(load_checkpoint_state(result.best_checkpoint_path))
    arm.model, arm.bundle = model.eval(), FeatureBundle.from_lake(arm.lake)
    stages["training"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    quality = evaluation.quality(ModelScorer(arm.model, arm.bundle))
    stages["evaluation"] += time.perf_counter() - t0
    arm.trained = (train_cfg, spec)
    return quality | {"valid_" + k: v for k, v in _last_valid(result.history).items()}


def _last_valid(history: list[dict[str, float]]) -> dict[str, float]:
    last = history[-1] if history else {}
    return {k.removeprefix("valid_"): float(v) for k, v in last.items() if k.startswith("valid_")}


def log_child(cfg: SimulateConfig, arm: Arm, seed: int, round_: int, metrics: dict) -> None:
    """A nested run of the arm's round: its metrics, its model logged and registered."""
    import mlflow

    from train.pyfunc import log_pyfunc_model
    from train.registry import register_version

    train_cfg, spec = arm.trained
    tags = {"isrec.arm": arm.spec, "isrec.round": str(round_), "isrec.seed": str(seed)}
    if arm.trains_on is not None:
        tags["isrec.trains_on"] = arm.trains_on
    tags["isrec.warm_start"] = "true" if train_cfg.init_from else "false"
    with mlflow.start_run(run_name=f"{arm.name}/seed{seed}/round{round_}", nested=True) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({"arm": arm.spec, "round": round_, "seed": seed, "model": cfg.model})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
        info = log_pyfunc_model(
            cfg.model,
            train_cfg.model_params,
            arm.model.state_dict(),
            spec,
            bundle=arm.bundle,
            name=f"{arm.name}-round{round_}",
        )
        register_version(
            info.model_uri,
            f"sim-{arm.name}",
            run_id=run.info.run_id,
            tags=tags,
            alias=None,
            tracking_uri=cfg.tracking_uri or None,
        )
    log.info("seed %d round %d %s: %s", seed, round_, arm.spec, _short(metrics))


def _short(metrics: dict) -> str:
    keys = ("purchases", "impressions", "further_views", "ctr_auc", "ctcvr_auc")
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
