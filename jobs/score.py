"""Batch-score the samples of one split with a registered model into a Delta table.

    spark-submit --packages io.delta:delta-spark_2.12:3.3.2 jobs/score.py \\
        --model-uri models:/isrec-rnn_mtl@champion --lake LAKE --split test \\
        [--output LAKE/scores] [--samples-version N] [--beta B] [--tracking-uri URI] \\
        [--policy incentive:0.5 [--seed S] [--rankings-output LAKE/rankings]]

With ``--policy`` the job also ranks each session's scored impressions with that policy
(train/policy.py) into a Delta table of per-session rankings (etl/score.py ``rank_sessions``).

Plain ``python jobs/score.py ...`` works too (local Spark with the cached Delta jars). Options:
etl/score_config.py (``--help``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Spark's Python workers run the model: by default the interpreter running this job (with
# mlflow and torch), not whatever `python3` is first on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# `python jobs/x.py` puts jobs/ first on sys.path, where jobs/train.py would shadow the train
# package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.cli import parse  # noqa: E402
from etl.score_config import ScoreConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> ScoreConfig:
    return parse(ScoreConfig, argv, description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = parse_args(argv)
    from etl.errors import run_cli
    from train.rank import RankError

    return run_cli(lambda: _run(cfg), user_errors=(RankError, ValueError))


def _run(cfg: ScoreConfig) -> int:
    from etl import storage
    from etl.delta_log import latest_version
    from etl.score import rank_sessions, score_samples
    from etl.spark import get_spark
    from etl.tables import SAMPLES
    from train.rank import slate_ranker
    from train.tracking.store import configure

    ranker = slate_ranker(cfg.policy, cfg.beta, cfg.seed) if cfg.policy else None
    latest_version(storage.join(cfg.lake, SAMPLES))  # no samples table: one line before Spark
    configure(cfg.tracking_uri)
    object_store = storage.is_s3(cfg.lake) or storage.is_s3(cfg.output or "")
    spark = get_spark("isrec-score", object_store=object_store)
    try:
        result = score_samples(
            spark,
            cfg.model_uri,
            cfg.lake,
            split=cfg.split,
            output=cfg.output,
            samples_version=cfg.samples_version,
            beta=cfg.beta,
        )
        print(
            f"scored {result.rows} rows of split {result.split} with {result.model_uri} "
            f"(samples v{result.samples_version}) -> {result.output} "
            f"(Delta v{result.delta_version})"
        )
        if ranker is not None:
            ranked = rank_sessions(
                spark, result.output, cfg.lake, cfg.split, ranker, cfg.policy,
                cfg.rankings_output,
            )  # fmt: skip
            print(
                f"ranked {ranked.rows} rows of split {ranked.split} by session with policy "
                f"{ranked.policy} -> {ranked.output} (Delta v{ranked.delta_version})"
            )
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
