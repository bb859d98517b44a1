"""The closed-loop experiment: policies rank, the world answers, the pipeline retrains.

    python jobs/simulate.py --policies greedy,incentive:0.5,uniform --rounds 5 --seeds 3

Every round and arm runs the real ETL (one Spark session for the whole run), a Ray Train run
and an MLflow registration; options: train/sim/config.py (``--help``). Every log goes to
``DATA_DIR/logs/simulate-<time>.log``; the terminal shows one line per arm and round and per
training (train/console.py). The final-round table and the log's path are printed, and the
last stdout line is one JSON object: {"arms": {NAME: {"rounds": [...]}}, "mlflow_run_id": ...,
"stages": {stage: seconds}}. Exit codes: 0 done, 1 failed (the log's tail is shown), 2 bad
options.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.cli import parse  # noqa: E402
from train.sim.config import SimulateConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse(SimulateConfig, argv, description=__doc__.split("\n")[0], config_file=True)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    from etl.errors import run_cli

    return run_cli(lambda: _run(cfg))


def _run(cfg: SimulateConfig) -> int:
    from etl.errors import require_dir
    from etl.spark import get_spark
    from train.console import quiet
    from train.sim.loop import LOOP_LOGGER, run_simulation
    from train.sim.report import final_table

    require_dir(cfg.data_dir, "--data-dir")  # before Spark, Ray and MLflow start
    # Spark, Ray's workers and MLflow write to the log; the terminal shows a line per arm and
    # round (train.sim.loop's INFO records), one per training, and the project's warnings
    with quiet(Path(cfg.data_dir).resolve() / "logs", "simulate", (LOOP_LOGGER,)) as log_path:
        spark = get_spark("isrec-simulate")
        try:
            report = run_simulation(spark, cfg)
        finally:
            spark.stop()
    print(final_table(report))
    print(f"full log: {log_path}")
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
