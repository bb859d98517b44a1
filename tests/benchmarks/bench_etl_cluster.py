"""The same ETL job on local[2] and on a Spark standalone cluster of two one-core workers.

    python tests/benchmarks/bench_etl_cluster.py --users 1000 [--json out.json]

A world of ``--users`` users (3 days, 1 of history) is generated, then jobs/etl.py is run twice
through spark-submit with the same jars and settings: once with ``--master local[2]``, once on
a master and two workers started by infra/local/spark.sh (ISREC_SPARK_WORKERS=2) on free ports
of 127.0.0.1. Both applications write an event log; it says which executor ran each task and
for how long (an executor's log URL names its worker's UI port). The two lakes are then compared
table by table as multisets of rows, plus the feature spec.

Prints one row per run (wall seconds of the whole submission, JVM start included; executors
that ran tasks; tasks per executor; task seconds) and the load average, and writes JSON when
asked. On one 2-core host the cluster cannot be faster than local[2] (same cores, plus the
executors' own JVMs and the shuffle over the block manager): the point is that the job scales
out unchanged and the rows are the same, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_infra import assert_gone, generate_world  # noqa: E402
from test_spark_two_workers import (  # noqa: E402 (the test's cluster helpers)
    executors_that_ran,
    lake_differences,
    lakes_equal,
    standalone_cluster,
    submit_etl,
)

from etl.spark import get_spark  # noqa: E402


def run_summary(name: str, seconds: float, events: Path) -> dict:
    executors = executors_that_ran(events)
    ran = {eid: e for eid, e in executors.items() if e.tasks}
    return {
        "run": name,
        "wall_s": round(seconds, 1),
        "executors_with_tasks": len(ran),
        "tasks": {eid: e.tasks for eid, e in sorted(ran.items())},
        "failed_tasks": sum(e.failed for e in ran.values()),
        "task_s": {eid: round(e.task_seconds, 1) for eid, e in sorted(ran.items())},
        "worker_ui_ports": sorted({e.worker_ui_port for e in ran.values() if e.worker_ui_port}),
    }


def print_table(runs: list[dict], equal: bool, load: tuple[float, ...]) -> None:
    print(f"{'run':<12} {'wall s':>8} {'executors':>10} {'tasks':>16} {'task s':>16}")
    for r in runs:
        tasks = "/".join(str(t) for t in r["tasks"].values())
        task_s = "/".join(str(t) for t in r["task_s"].values())
        print(
            f"{r['run']:<12} {r['wall_s']:>8} {r['executors_with_tasks']:>10} "
            f"{tasks:>16} {task_s:>16}"
        )
    print(f"lakes equal: {equal}   load average (1, 5, 15 min): {load}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1000, help="users of the world")
    parser.add_argument("--seed", type=int, default=3, help="world seed")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    tmp = Path(tempfile.mkdtemp(prefix="bench_etl_cluster_"))
    raw = tmp / "raw"
    generate_world(raw, users=args.users, seed=args.seed)

    local_s = submit_etl("local[2]", raw, tmp / "local_lake", tmp / "events_local", tmp / "l.log")
    runs = [run_summary("local[2]", local_s, tmp / "events_local")]
    with standalone_cluster(tmp / "cluster", workers=2) as cluster:
        cluster_s = submit_etl(
            cluster.master, raw, tmp / "cluster_lake", tmp / "events_cluster", tmp / "c.log"
        )
    assert_gone(cluster.pids)
    runs.append(run_summary("2 workers", cluster_s, tmp / "events_cluster"))
    load = os.getloadavg()

    spark = get_spark("bench-etl-cluster", master="local[2]")
    differences = lake_differences(spark, tmp / "cluster_lake", tmp / "local_lake")
    spark.stop()
    equal = lakes_equal(differences)
    print_table(runs, equal, tuple(round(x, 2) for x in load))
    result = {
        "users": args.users,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "cluster_over_local": round(cluster_s / local_s, 2),
        "lakes_equal": equal,
        "tables": differences,
        "load_average_after": [round(x, 2) for x in load],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
