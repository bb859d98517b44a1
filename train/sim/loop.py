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
models of its own data is the data effect alone. Within a round the arms' ETLs run one after
the other and each arm's training overlaps the next arm's ETL and other trainings
(``retrain_arms``, ``concurrent_trainings``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from train.train_config import TrainConfig

LOOP_LOGGER = __name__  # its INFO records: one per arm and round (the terminal's lines)
log = logging.getLogger(LOOP_LOGGER)
Stages = dict[str, float]  # stage -> seconds


@dataclass
class RoundJob:
    """What each step of one round of one seed reads: the options, the seed and round, the
    seed's evaluation set, the stage clock and the arms' latest best checkpoints (arm spec ->
    path; a warm start reads it, every training updates it)."""

    cfg: SimulateConfig
    seed: int
    number: int
    evaluation: EvalSet
    stages: Stages
    checkpoints: dict[str, str]


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
    with timed(stages, "world"):
        world = seed_world(cfg, seed)
        served = held_out_mask(world, cfg.eval_users)
        held_out = ~served
        root = Path(cfg.data_dir) / f"seed_{seed}"
        arms = [Arm(spec, root / arm_name(spec)) for spec in cfg.arm_specs()]
        arms.sort(key=lambda a: a.trains_on is not None)  # sources train before borrowers
        eval_past = PastEvents()  # the held-out users' behaviors: no arm logs or trains on them
        for day in range(-cfg.history_days, cfg.initial_days):
            logs = world.simulate_day(day, users=served)
            for arm in arms:
                arm.add_day(world, logs)
            eval_past.extend(world.simulate_day(day, users=held_out).logs.behaviors)
        profiles = read_profiles(str(arms[0].raw / "user_profile.csv"))
        round0 = day_metrics(logs, cfg.world_users, arms[0].ad_impressions)
    with timed(stages, "evaluation"):
        evaluation = EvalSet.build(world, cfg.initial_days, eval_past, profiles, held_out)
    for arm in arms:
        rounds.add(arm.spec, seed, 0, round0)
    checkpoints: dict[str, str] = {}  # arm -> best checkpoint of its latest training
    for r in range(1, cfg.rounds + 1):
        job = RoundJob(cfg, seed, r, evaluation, stages, checkpoints)
        qualities = train_round(spark, job, arms)
        serve_round(cfg, world, served, arms, seed, r, profiles, qualities, rounds, stages)


def train_round(spark: Any, job: RoundJob, arms: list[Arm]) -> dict[str, dict[str, float]]:
    """Every arm's model of the round and its quality (arm -> metrics). Round 1 trains the
    first arm only (the others copy its lake and model); arms ``POLICY@ARM`` borrow."""
    own = [a for a in arms if a.trains_on is None]
    if job.number == 1:
        first = own[0]
        qualities = retrain_arms(spark, job, [first])
        with timed(job.stages, "etl"):
            for arm in own[1:]:
                arm.copy_round_one(first)
                job.checkpoints[arm.spec] = job.checkpoints[first.spec]
                qualities[arm.spec] = qualities[first.spec]
    else:
        qualities = retrain_arms(spark, job, own)
    by_spec = {a.spec: a for a in arms}
    for arm in arms:
        if arm.trains_on is not None:
            arm.borrow(by_spec[arm.trains_on])
            qualities[arm.spec] = qualities[arm.trains_on]
    return qualities


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
        with timed(stages, "policy"):
            policy = ModelSlatePolicy(arm.policy, arm_scorer(arm), arm.past, profiles)
            recorder = None
            if arm.spec == ope_arm:
                targets = {
                    other.spec: ModelSlatePolicy(
                        other.policy, arm_scorer(other), arm.past, profiles
                    )
                    for other in arms
                    if other is not arm
                }
                policy = recorder = OffPolicyRecorder(policy, targets)
            logs = world.simulate_day(day, policy, users=served)
            arm.add_day(world, logs)
            if recorder is not None:
                ope = recorder.estimates(logs.logs.impressions)
        metrics = day_metrics(logs, cfg.world_users, arm.ad_impressions) | qualities[arm.spec]
        if arm.spec in ope:
            metrics |= with_errors(ope[arm.spec], metrics["purchases_per_impression"])
        rounds.add(arm.spec, seed, round_, metrics)
        with timed(stages, "registration"):
            log_child(cfg, arm, seed, round_, metrics)


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


def retrain_arms(spark: Any, job: RoundJob, arms: list[Arm]) -> dict[str, dict[str, float]]:
    """ETL + training of each arm's model for the round; arm -> its quality. The ETLs run one
    after the other on this thread (one Spark session); each arm's training and evaluation
    starts on one of ``concurrent_trainings`` threads as soon as its lake is written, so the
    next arm's ETL and other trainings overlap it (each training is seeded and its Ray Train
    run its own: the results do not depend on the overlap)."""
    from train.driver import connect_ray

    # A local Ray started here, not on a pool thread: its GCS and raylet get SIGKILL when the
    # thread that spawned them exits (PR_SET_PDEATHSIG follows the thread).
    connect_ray(arm_train_config(job.cfg, arms[0], job.seed, job.number))
    threads = job.cfg.concurrent_trainings
    with ThreadPoolExecutor(threads, thread_name_prefix="sim-train") as pool:
        futures = {}
        for arm in arms:
            update_lake(spark, job.cfg, arm, job.stages)
            futures[arm.spec] = pool.submit(train_arm, job, arm)
        return {spec: future.result() for spec, future in futures.items()}


def update_lake(spark: Any, cfg: SimulateConfig, arm: Arm, stages: Stages) -> None:
    """The ETL of the arm's logs into its lake: round 1 a full run, then the new day only."""
    etl = EtlConfig(
        input=str(arm.raw),
        output=str(arm.lake),
        max_len=cfg.max_len,
        test_days=0,
        valid_days=1,
        incremental=(arm.lake / SPEC_FILE).exists(),
    )
    with timed(stages, "etl"):
        run_etl(spark, etl)


def train_arm(job: RoundJob, arm: Arm) -> dict[str, float]:
    """Train the arm's model on its lake (Ray Train, warm from its last best checkpoint when
    ``warm_start``) and measure it; its quality."""
    from train.driver import run_training
    from train.models import build_model
    from train.pyfunc import load_checkpoint_state

    cfg = job.cfg
    with timed(job.stages, "training"):
        init_from = job.checkpoints.get(arm.spec, "") if cfg.warm_start else ""
        train_cfg = arm_train_config(cfg, arm, job.seed, job.number, init_from)
        result = run_training(train_cfg)
        job.checkpoints[arm.spec] = result.best_checkpoint_path
        spec = FeatureSpec.load(arm.lake)
        model = build_model(cfg.model, spec, train_cfg.model_params)
        model.load_state_dict(load_checkpoint_state(result.best_checkpoint_path))
        arm.model, arm.bundle = model.eval(), FeatureBundle.from_lake(arm.lake)
    with timed(job.stages, "evaluation"):
        quality = job.evaluation.quality(ModelScorer(arm.model, arm.bundle))
    arm.trained = (train_cfg, spec)
    return quality | {"valid_" + k: v for k, v in _last_valid(result.history).items()}


def arm_train_config(
    cfg: SimulateConfig, arm: Arm, seed: int, round_: int, init_from: str = ""
) -> TrainConfig:
    """The arm's training of the round: seeded by seed and round, warm from ``init_from``."""
    from train.train_config import TrainConfig

    return TrainConfig(
        lake=str(arm.lake),
        model=cfg.model,
        num_workers=cfg.num_workers,
        epochs=cfg.epochs,
        seed=seed * 1000 + round_,
        track=False,
        register=False,
        storage_path=str(arm.root / "ray_results"),
        name=f"{arm.name}-seed{seed}-round{round_}",
        init_from=init_from,
        train_days=cfg.warm_train_days if init_from else 0,
    )


_STAGES_LOCK = threading.Lock()  # trainings add their seconds from pool threads


@contextlib.contextmanager
def timed(stages: Stages, stage: str) -> Iterator[None]:
    """Add the block's wall seconds to ``stages[stage]`` (overlapping blocks each count)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        with _STAGES_LOCK:
            stages[stage] += time.perf_counter() - started


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
        params = {"arm": arm.spec, "round": round_, "seed": seed, "model": cfg.model}
        warm = {"init_from": train_cfg.init_from or "none", "train_days": train_cfg.train_days}
        mlflow.log_params(params | warm)
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
