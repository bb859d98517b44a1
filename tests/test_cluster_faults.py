"""The ETL on a real Spark standalone cluster of two workers (infra/local/spark.sh), with one
executor JVM killed mid-run: the job completes through task retry and writes the same tables as
a local run over the same input.

Slow (about 3-5 minutes on 2 cores): a master and two workers of one core each on 127.0.0.1,
each started by the documented script and stopped by its PIDs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_infra import ROOT, generate_world
from test_spark_two_workers import submit_command, submit_env

from etl.config import EtlConfig
from etl.lake import read_table
from etl.pipeline import run_etl

TABLES = ("events", "sessions", "ads", "impressions", "vocab", "samples")
WORKERS = ({"port": "7178", "ui": "8181"}, {"port": "7179", "ui": "8182"})
MASTER = {"ISREC_SPARK_MASTER_PORT": "7177", "ISREC_SPARK_MASTER_UI_PORT": "8180"}


def spark_sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "infra" / "local" / "spark.sh"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def node_env(tmp_path: Path, index: int, roles: str) -> dict[str, str]:
    worker = WORKERS[index]
    return {
        **os.environ,
        **MASTER,
        "ISREC_CLUSTER_DIR": str(tmp_path / f"node{index}"),
        "ISREC_PYTHON": sys.executable,
        "ISREC_START_TIMEOUT": "300",
        "ISREC_SPARK_ROLES": roles,
        "ISREC_SPARK_MASTER_URL": f"spark://127.0.0.1:{MASTER['ISREC_SPARK_MASTER_PORT']}",
        "ISREC_SPARK_WORKER_PORT": worker["port"],
        "ISREC_SPARK_WORKER_UI_PORT": worker["ui"],
        "ISREC_SPARK_WORKER_MEMORY": "1500m",
    }


@pytest.fixture
def two_worker_cluster(tmp_path):
    """(master URL, the two workers' state dirs): node 0 runs the master and a worker, node 1 a
    second worker joining it."""
    envs = [node_env(tmp_path, 0, "master worker"), node_env(tmp_path, 1, "worker")]
    started = []
    try:
        for env in envs:
            out = spark_sh("start", env)
            assert out.returncode == 0, out.stdout + out.stderr
            started.append(env)
        yield envs[0]["ISREC_SPARK_MASTER_URL"], [Path(e["ISREC_CLUSTER_DIR"]) for e in envs]
    finally:
        for env in reversed(started):
            spark_sh("stop", env)


def executor_pids() -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", "org.apache.spark.executor.CoarseGrainedExecutorBackend"],
        capture_output=True,
        text=True,
    )
    return [int(p) for p in found.stdout.split()]


def submit_etl(master: str, raw: Path, lake: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        submit_command(master, raw, lake),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=submit_env(),
    )


def kill_one_executor_mid_run(job: subprocess.Popen, lake: Path) -> int:
    """Once the events table is committed (bronze and quarantine before it), SIGKILL one
    executor JVM while the job still has its session tables, vocab and samples to write."""
    marker = lake / "events" / "_delta_log" / "00000000000000000000.json"
    deadline = time.time() + 900
    while time.time() < deadline and job.poll() is None:
        pids = executor_pids()
        if marker.exists() and len(pids) >= 2:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.2)
    pytest.fail("the ETL ended (or timed out) before an executor could be killed mid-run")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_etl_survives_a_killed_executor(spark, two_worker_cluster, tmp_path):
    master, nodes = two_worker_cluster
    raw, cluster_lake, local_lake = tmp_path / "raw", tmp_path / "cluster", tmp_path / "local"
    generate_world(raw, users=200, seed=5)
    log = tmp_path / "etl.log"
    job = submit_etl(master, raw, cluster_lake, log)
    killed = kill_one_executor_mid_run(job, cluster_lake)
    assert job.wait(timeout=1200) == 0, log.read_text()[-5000:]
    assert killed not in executor_pids()
    # both workers ran executors, and the master replaced the killed one with a new executor
    executors = [d for node in nodes for d in (node / "spark" / "work").glob("app-*/*")]
    assert {d.parents[3].name for d in executors} == {"node0", "node1"}
    assert len(executors) >= 3, executors

    run_etl(spark, EtlConfig(input=str(raw), output=str(local_lake)))
    for table in TABLES:
        ours, theirs = read_table(spark, cluster_lake, table), read_table(spark, local_lake, table)
        assert ours.count() == theirs.count() > 0, table
        # same size and nothing of ours missing from theirs (as multisets): the same rows
        assert ours.exceptAll(theirs).count() == 0, table
