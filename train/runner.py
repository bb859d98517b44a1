"""Train every seed of one model and track it in MLflow (used by jobs/train.py and quickstart)."""

from __future__ import annotations

from dataclasses import replace

from train.loop import SeedsResult, run_training
from train.metrics import summarize_seeds
from train.train_config import TrainConfig


def train_and_log(cfg: TrainConfig) -> SeedsResult:
    """All seeds of one model; with tracking, a parent run and a child run per seed (a crash
    ends them FAILED) and the best seed registered as isrec-<model>@challenger."""
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    base = replace(cfg, seeds=1)
    if not cfg.track:
        results = [run_training(replace(base, seed=s)) for s in seeds]
    else:
        from train.tracking import comparison_run

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
