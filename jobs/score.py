"""Batch-score the samples of one split with a registered model into a Delta table.

    spark-submit --packages io.delta:delta-spark_2.12:3.3.2 jobs/score.py \\
        --model-uri models:/isrec-rnn_mtl@champion --lake LAKE --split test \\
        [--output LAKE/scores] [--samples-version N] [--beta B] [--tracking-uri URI]

Plain ``python jobs/score.py ...`` works too (local Spark with the cached Delta jars).
"""

from __future__ import annotations

import argparse
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", required=True, help="e.g. models:/isrec-rnn_mtl@champion")
    parser.add_argument(
        "--lake", required=True, help="lake holding the samples table (folder or s3a:// URI)"
    )
    parser.add_argument("--split", default="test", help="train / valid / test")
    parser.add_argument("--output", default=None, help="Delta table path (default LAKE/scores)")
    parser.add_argument("--samples-version", type=int, default=None, help="Delta version read")
    parser.add_argument("--beta", type=float, default=None, help="ranking beta (default: model's)")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or local"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    from etl import storage
    from etl.score import score_samples
    from etl.spark import get_spark
    from train.tracking import configure

    configure(args.tracking_uri)
    object_store = storage.is_s3(args.lake) or storage.is_s3(args.output or "")
    spark = get_spark("isrec-score", object_store=object_store)
    try:
        result = score_samples(
            spark,
            args.model_uri,
            args.lake,
            split=args.split,
            output=args.output,
            samples_version=args.samples_version,
            beta=args.beta,
        )
    finally:
        spark.stop()
    print(
        f"scored {result.rows} rows of split {result.split} with {result.model_uri} "
        f"(samples v{result.samples_version}) -> {result.output} (Delta v{result.delta_version})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
