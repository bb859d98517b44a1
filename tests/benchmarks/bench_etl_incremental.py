"""One new day by ``--incremental`` against a full run over the same days, in one warm Spark
session (target: one day of a 1,000-user world in under 20 s).

    python tests/benchmarks/bench_etl_incremental.py --users 1000 --days 4 [--json out.json]

A world of ``--days`` impression days is generated; the lake is built by a full run over all
days but the last (this also warms the session), then the last day is added incrementally
(timed), then a full run over all days writes a second lake (timed). Prints a table, the load
average and the ratio, and writes JSON when asked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_incremental_etl import cut_world  # noqa: E402

from etl.config import EtlConfig  # noqa: E402
from etl.pipeline import run_etl  # noqa: E402
from etl.spark import get_spark  # noqa: E402
from etl.world import WorldConfig, write_world  # noqa: E402
from etl.world.day_writer import day_date  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1000, help="users of the world")
    parser.add_argument("--days", type=int, default=4, help="impression days; the last is added")
    parser.add_argument("--cores", type=int, default=2, help="Spark local[N]")
    parser.add_argument("--max-len", type=int, default=50, help="history length L")
    parser.add_argument(
        "--spark-conf", action="append", default=[], metavar="KEY=VALUE",
        help="a Spark setting for the session (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.spark_conf if "=" in kv)
    if len(extra) != len(args.spark_conf):
        parser.error(f"--spark-conf: KEY=VALUE, got {args.spark_conf}")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("etl").setLevel(logging.INFO)  # one line per table written, timestamped
    root = Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    write_world(WorldConfig(users=args.users, days=args.days, history_days=1), root / "world")
    last, before = day_date(args.days - 1), day_date(args.days - 2)
    inputs = {d: cut_world(root / "world", root / f"upto_{d}", d) for d in (before, last)}
    spark = get_spark(
        "bench-incremental",
        master=f"local[{args.cores}]",
        extra_conf={"spark.sql.shuffle.partitions": str(2 * args.cores), **extra},
    )

    def run(raw: Path, lake: Path, incremental: bool) -> tuple[float, dict]:
        cfg = EtlConfig(
            input=str(raw), output=str(lake), max_len=args.max_len, test_days=0, valid_days=1
        )
        cfg.incremental = incremental
        t0 = time.perf_counter()
        summary = run_etl(spark, cfg)
        return time.perf_counter() - t0, summary.rows

    warm_s, _ = run(inputs[before], root / "lake", incremental=False)
    inc_s, inc_rows = run(inputs[last], root / "lake", incremental=True)
    full_s, full_rows = run(inputs[last], root / "full", incremental=False)
    load = os.getloadavg()
    result = {
        "users": args.users,
        "days": args.days,
        "cores": args.cores,
        "spark_conf": extra,
        "first_full_run_s (cold, days 1..n-1)": round(warm_s, 1),
        "incremental_one_day_s": round(inc_s, 1),
        "full_run_all_days_s": round(full_s, 1),
        "incremental_over_full": round(inc_s / full_s, 3),
        "samples_rows_written": {
            "incremental": inc_rows.get("samples"),
            "full": full_rows.get("samples"),
        },
        "load_avg_1_5_15": [round(x, 2) for x in load],
    }
    for key, value in result.items():
        print(f"{key:<40} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
