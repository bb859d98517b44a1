"""The ETL scales out unchanged: jobs/etl.py through spark-submit on a Spark standalone cluster
of two one-core workers on this host (infra/local/spark.sh with ISREC_SPARK_WORKERS=2), checked
against a local run of the same input.

Slow (about 1.5-2 minutes on 2 cores): the master and both workers on free ports of 127.0.0.1
in a temporary state dir, stopped by their recorded PIDs. The application's event log says
which executor ran each task; an executor's log URL names the web UI port of the worker that
launched it. The helpers also serve tests/benchmarks/bench_etl_cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_infra import ROOT, assert_gone, free_ports, generate_world, recorded, run_script

from etl.config import EtlConfig
from etl.lake import read_table
from etl.pipeline import run_etl
from etl.spark import delta_jar_paths, fetch_jars

SPEC = "_feature_spec.json"
# What every submission gets, local or on the cluster: one-core executors of 1g, at most two
# cores for the application, the project's interpreter, the test session's shuffle partitions.
SUBMIT_CONF = {
    "spark.executor.memory": "1g",
    "spark.executor.cores": "1",
    "spark.cores.max": "2",
    "spark.sql.shuffle.partitions": "4",
}


@dataclass
class Cluster:
    master: str
    state: Path
    worker_ui_ports: list[int]
    pids: dict[int, str] = field(default_factory=dict)  # PID -> start time, as recorded


@dataclass
class Executor:
    host: str
    worker_ui_port: int | None  # None: the driver (a local[...] run)
    tasks: int = 0
    failed: int = 0
    task_seconds: float = 0.0


def cluster_env(state: Path, workers: int) -> tuple[dict[str, str], list[int]]:
    """spark.sh's environment for a master and ``workers`` workers on one free port block (so
    no two daemons get the same port), and the workers' UI ports."""
    base = free_ports(2 + 2 * workers, consecutive=True)[0]
    env = {
        **os.environ,
        "ISREC_CLUSTER_DIR": str(state),
        "ISREC_PYTHON": sys.executable,
        "ISREC_START_TIMEOUT": "300",
        "ISREC_STOP_TIMEOUT": "10",
        "ISREC_SPARK_WORKERS": str(workers),
        "ISREC_SPARK_MASTER_PORT": str(base),
        "ISREC_SPARK_MASTER_UI_PORT": str(base + 1),
        "ISREC_SPARK_WORKER_PORT": str(base + 2),
        "ISREC_SPARK_WORKER_UI_PORT": str(base + 2 + workers),
        "ISREC_SPARK_WORKER_MEMORY": "1500m",
    }
    return env, [base + 2 + workers + k for k in range(workers)]


def worker_names(workers: int) -> list[str]:
    return ["spark-worker", *(f"spark-worker-{n}" for n in range(2, workers + 1))]


@contextlib.contextmanager
def standalone_cluster(state: Path, workers: int = 2) -> Iterator[Cluster]:
    """A master and ``workers`` workers started by infra/local/spark.sh; stopped on exit,
    also when the body fails."""
    env, ui_ports = cluster_env(state, workers)
    try:
        out = run_script("spark.sh", "start", env, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        pids = recorded(state, "spark-master", *worker_names(workers))
        yield Cluster(out.stdout.split()[-1], state, ui_ports, pids)
    finally:  # by the recorded PIDs; the caller checks them gone (assert_gone)
        run_script("spark.sh", "stop", env, timeout=300)


def submit_command(
    master: str, raw: Path, lake: Path, events: Path | None = None, driver_memory: str = "1g"
) -> list[str]:
    """spark-submit of jobs/etl.py on ``master`` with SUBMIT_CONF (and an event log in
    ``events`` when given)."""
    jars = delta_jar_paths() if all(p.is_file() for p in delta_jar_paths()) else fetch_jars()
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", master]
    command += ["--driver-memory", driver_memory, "--jars", ",".join(map(str, jars))]
    conf = {**SUBMIT_CONF, "spark.pyspark.python": sys.executable}
    if events is not None:
        conf |= {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.resolve().as_uri()}
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return command + [str(ROOT / "jobs" / "etl.py"), "--input", str(raw), "--output", str(lake)]


def submit_env() -> dict[str, str]:
    """The client's environment: the project's bin first (spark-submit finds pyspark through
    python3), no SPARK_LOCAL_IP (the master URL says where to connect)."""
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def submit_etl(
    master: str, raw: Path, lake: Path, events: Path, log: Path, driver_memory: str = "1g"
) -> float:
    """Run jobs/etl.py with spark-submit on ``master`` (its event log in ``events``); the wall
    seconds of the whole submission, JVM start included."""
    events.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            submit_command(master, raw, lake, events, driver_memory),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=submit_env(),
            timeout=1800,
        )
    assert done.returncode == 0, log.read_text()[-5000:]
    return time.perf_counter() - started


def event_log(events: Path) -> Path:
    (found,) = [p for p in events.iterdir() if p.is_file()]  # one application per folder
    return found


def executors_that_ran(events: Path) -> dict[str, Executor]:
    """Executor id -> where it ran and the tasks it ended, from the application's event log."""
    executors: dict[str, Executor] = {}
    with event_log(events).open() as lines:
        for line in lines:
            event = json.loads(line)
            if event["Event"] == "SparkListenerExecutorAdded":
                info = event["Executor Info"]
                port = urlparse(info.get("Log Urls", {}).get("stdout", "")).port
                executors[event["Executor ID"]] = Executor(info["Host"], port)
            elif event["Event"] == "SparkListenerTaskEnd":
                count_task(executors, event)
    return executors


def count_task(executors: dict[str, Executor], event: dict) -> None:
    task = event["Task Info"]
    executor = executors.setdefault(task["Executor ID"], Executor(task["Host"], None))
    executor.tasks += 1
    executor.failed += event["Task End Reason"]["Reason"] != "Success"
    executor.task_seconds += event.get("Task Metrics", {}).get("Executor Run Time", 0) / 1000


def work_dir_executors(state: Path) -> dict[str, list[str]]:
    """Worker work dir -> the executor ids it launched (app-*/ID folders)."""
    dirs = sorted((state / "spark").glob("work*"))
    return {d.name: sorted(e.name for e in d.glob("app-*/*")) for d in dirs}


def delta_tables(lake: Path) -> list[str]:
    return sorted(p.parent.name for p in lake.glob("*/_delta_log"))


def lake_differences(spark, ours: Path, theirs: Path) -> dict[str, dict]:
    """Per Delta table of either lake: row counts and the rows only one side has (multisets,
    whatever the file layout and order), plus whether the feature specs are equal."""
    tables = sorted(set(delta_tables(ours)) | set(delta_tables(theirs)))
    out: dict[str, dict] = {}
    for table in tables:
        if table not in delta_tables(ours) or table not in delta_tables(theirs):
            out[table] = {"missing": True}
            continue
        a, b = read_table(spark, ours, table), read_table(spark, theirs, table)
        out[table] = {
            "rows": a.count(),
            "rows_other": b.count(),
            "only_ours": a.exceptAll(b).count(),
            "only_theirs": b.exceptAll(a).count(),
        }
    specs = [json.loads((lake / SPEC).read_text()) for lake in (ours, theirs)]
    out[SPEC] = {"equal": specs[0] == specs[1]}
    return out


def lakes_equal(differences: dict[str, dict]) -> bool:
    spec = differences[SPEC]["equal"]
    tables = [d for name, d in differences.items() if name != SPEC]
    return spec and all(
        not d.get("missing")
        and d["rows"] == d["rows_other"]
        and not d["only_ours"]
        and not d["only_theirs"]
        for d in tables
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_etl_runs_unchanged_on_two_workers(spark, tmp_path):
    raw, lake, local = tmp_path / "raw", tmp_path / "cluster_lake", tmp_path / "local_lake"
    generate_world(raw, users=60, seed=7)
    with standalone_cluster(tmp_path / "cluster", workers=2) as cluster:
        submit_etl(cluster.master, raw, lake, tmp_path / "events", tmp_path / "etl.log")
    assert_gone(cluster.pids)

    # both workers launched an executor, and each of the two ran tasks
    executors = executors_that_ran(tmp_path / "events")
    assert {e.worker_ui_port for e in executors.values() if e.tasks} == set(
        cluster.worker_ui_ports
    ), executors
    assert all(e.host == "127.0.0.1" for e in executors.values())
    assert sorted(sum(work_dir_executors(cluster.state).values(), [])) == sorted(executors)
    assert all(len(ids) == 1 for ids in work_dir_executors(cluster.state).values())

    run_etl(spark, EtlConfig(input=str(raw), output=str(local)))
    differences = lake_differences(spark, lake, local)
    assert {"events", "sessions", "vocab", "impressions", "samples"} <= differences.keys()
    filled = [t for t, d in differences.items() if t not in (SPEC, "quarantine")]
    assert all(differences[t].get("rows", 0) > 0 for t in filled), differences
    assert lakes_equal(differences), differences
