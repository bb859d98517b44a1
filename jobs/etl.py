"""Entry point: spark-submit jobs/etl.py --source taobao_ad --input DIR --output LAKE.

Plain `python jobs/etl.py ...` works too (local[*] Spark). Options: etl/config.py (``--help``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for spark-submit from a clone

from etl.cli import parse_all  # noqa: E402
from etl.config import EtlConfig, SparkOptions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    description = "Sessionize raw Taobao logs into Delta tables."
    cfg, spark = parse_all([EtlConfig, SparkOptions], argv, description=description)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from etl.errors import run_cli

    return run_cli(lambda: _run(cfg, spark.master), user_errors=(ValueError,))


def _run(cfg: EtlConfig, master: str | None) -> int:
    from etl import storage
    from etl.pipeline import check_output_folder, run_etl
    from etl.spark import get_spark

    if not storage.is_uri(cfg.input) and not Path(cfg.input).exists():  # one line before Spark
        raise FileNotFoundError(f"{cfg.source}: input path not found: {cfg.input}")
    check_output_folder(cfg.output)  # run_etl checks again: the library's callers
    object_store = storage.is_s3(cfg.input) or storage.is_s3(cfg.output)
    spark = get_spark("isrec-etl", master=master, object_store=object_store)
    summary = run_etl(spark, cfg)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
