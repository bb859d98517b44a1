"""The training driver: one model, every seed, through Ray Train, tracked in MLflow.

``train_and_log(cfg)`` (jobs/train.py and the quickstart) runs ``cfg.seeds`` seeds; with
tracking, a parent MLflow run and a child run per seed (a crash ends them FAILED), the best seed
registered as ``isrec-<model>@challenger``. ``run_training(cfg)`` is one seed: the pre-flight
checks (train/preflight.py, ``ConfigError`` before Ray starts), joining or starting Ray, a
``TorchTrainer`` over ``train.worker.train_loop_per_worker``, and a typed ``TrainResult``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from etl import storage
from etl.tables import SAMPLES
from train.checkpoints import STATE_FILE
from train.metrics import metric, summarize_seeds
from train.preflight import ConfigError, Prepared, preflight
from train.progress import epoch_feed
from train.ray_setup import quiet_placement_group_cleaner
from train.results import SeedsResult, TrainResult
from train.train_config import TrainConfig
from train.worker import train_loop_per_worker

log = logging.getLogger(__name__)
# Ray Train's controller polls the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's
# default 2 s) and only then takes in a report, so each epoch's checkpoint, the final one and the
# end of the run wait for a poll (tests/benchmarks/bench_train_overhead.py). A set variable wins.
POLL_INTERVAL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def train_and_log(cfg: TrainConfig) -> SeedsResult:
    """All seeds of one model; with tracking, a parent run and a child run per seed (a crash
    ends them FAILED) and the best seed registered as isrec-<model>@challenger."""
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    base = replace(cfg, seeds=1)
    if not cfg.track:
        results = [run_training(replace(base, seed=s)) for s in seeds]
    else:
        from train.tracking.comparison import comparison_run  # MLflow only when tracking

        results = []
        with comparison_run(
            cfg.model,
            cfg.experiment,
            config=cfg,
            register_best=cfg.register,
            tracking_uri=cfg.tracking_uri or None,
        ) as cmp:
            for seed in seeds:
                with cmp.seed_run(seed) as run:
                    results.append(run_training(replace(base, seed=seed)))
                    run.log_result(results[-1])
    return SeedsResult(results, summarize_seeds([r.test_metrics for r in results]))


def connect_ray(cfg: TrainConfig) -> None:
    """Join RAY_ADDRESS / --ray-address (ray job submit sets it), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    _check_auth(address)
    try:
        if address:
            ray.init(address=address)
        else:
            ray.init(
                num_cpus=cfg.ray_num_cpus or None,
                include_dashboard=False,
                runtime_env={"worker_process_setup_hook": quiet_placement_group_cleaner},
            )
    except ray.exceptions.AuthenticationError as exc:
        raise ConfigError(f"Ray token authentication failed: {exc}".replace("\n", " ")) from None


def disconnect_ray() -> None:
    """Stop the local Ray this process started (or leave the cluster it joined) once no more
    training follows, so the Spark steps after it do not share the machine with an idle Ray."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _check_auth(address: str) -> None:
    """Ray >= 2.52 token auth (RAY_AUTH_MODE=token): a cluster we join needs the token; a local
    cluster generates one (~/.ray/auth_token) itself."""
    if os.environ.get("RAY_AUTH_MODE", "disabled").lower() != "token" or not address:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    if not os.environ.get("RAY_AUTH_TOKEN") and not Path(token_file).is_file():
        raise ConfigError(
            "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "(the cluster's `ray get-auth-token`), or copy it to ~/.ray/auth_token"
        )


def run_training(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train one seed with Ray Train and return its result (pre-flight errors: ConfigError).
    ``callbacks``: more Ray Train ``UserCallback``s for the controller (train/tune.py relays
    every report to Ray Tune through one)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    prepared = preflight(cfg)
    cfg = replace(cfg, name=prepared.name)
    connect_ray(cfg)
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL_S)  # the controller reads it at start
    has_valid = "valid" in prepared.files
    score = f"valid_{cfg.early_stop_metric}" if has_valid else None
    feed = epoch_feed(cfg)  # per-epoch progress to the console, when one is installed
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "spec": prepared.spec.to_json(),
            "files": prepared.files,
            "predictions_path": prepared.predictions_path,
            "init_state": _put(prepared.init_state),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=prepared.name,
            callbacks=[*feed.callbacks, *callbacks],
            **_ray_storage(cfg.storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints or None,
                checkpoint_score_attribute=score,
                checkpoint_score_order=metric(cfg.early_stop_metric).mode,
            ),
        ),
    )
    log.info("training %s on %s with %d workers", cfg.model, cfg.lake, cfg.num_workers)
    with feed:
        result = trainer.fit()
    return _train_result(result, cfg, prepared)


def _put(value: Any) -> Any:
    """Into the object store once (every rank and restart reads it from there), or None."""
    import ray

    return None if value is None else ray.put(value)


def _ray_storage(storage_path: str) -> dict[str, Any]:
    """Ray Train storage arguments: object-store URIs go through our S3 filesystem, which
    honours AWS_ENDPOINT_URL_S3 (pyarrow 12, which Ray would use on its own, does not)."""
    if not storage.is_s3(storage_path):
        return {"storage_path": storage_path}
    filesystem, inner = storage.filesystem(storage_path)
    return {"storage_path": inner, "storage_filesystem": filesystem}


def _location(storage_path: str, ray_path: str) -> str:
    """A Ray Train path as a location anyone can open: inside an object store, its URI."""
    if storage.is_s3(storage_path) and not storage.is_uri(ray_path):
        return "s3://" + ray_path.lstrip("/")
    return ray_path


def _train_result(result: Any, cfg: TrainConfig, prepared: Prepared) -> TrainResult:
    """TrainResult from Ray's Result: the final checkpoint's metrics and state.json."""
    metrics = dict(result.metrics or {})
    if result.checkpoint is None or not metrics.get("final"):
        raise RuntimeError(f"run {result.path} ended without its final checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    best_epoch = int(metrics.get("best_epoch", -1))
    resumed = int(metrics.get("resumed_from_epoch", -1))
    test = {k[len("test_") :]: float(v) for k, v in metrics.items() if k.startswith("test_")}
    return TrainResult(
        test_metrics=test,
        history=state["history"],
        best_checkpoint_path=_location(cfg.storage_path, result.checkpoint.path),
        predictions_path=prepared.predictions_path if "test" in prepared.files else None,
        config=cfg,
        run_path=_location(cfg.storage_path, str(result.path)),
        best_epoch=best_epoch if best_epoch >= 0 else None,
        resumed_from_epoch=resumed if resumed >= 0 else None,
        epochs_run=int(metrics.get("epochs_run", 0)),
        stopped_early=bool(metrics.get("stopped_early", False)),
        samples_version=prepared.spec.tables.get(SAMPLES),
        lake=cfg.lake,
    )
