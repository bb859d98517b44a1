"""An ETL run is all or nothing for the lake's readers (etl/delta_log.py, "Atomic runs").

A good lake is built from world A; then ``jobs/etl.py`` runs on world B into the same lake
through a real spark-submit, and its whole process group (spark-submit, the JVM, the Python
driver and workers) is SIGKILLed at points found by watching the lake: the first table's commit
(one table past the spec's version) and the samples write (the last write before the feature
spec: every earlier table committed past the spec, the last one's files written and not
committed; a kill during an earlier write leaves a subset of that). After each kill every
reader sees lake A exactly: the
spec's bytes, the loaders' file lists (``snapshot_files``), Spark's reads (``read_recorded``,
the oracle), lineage's profile. A rerun on B completes, and then the readers see B.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from test_infra import ROOT, generate_world

from etl.config import EtlConfig
from etl.delta_log import SnapshotError, delta_log, files_at, snapshot_files
from etl.lake import read_recorded, table_path, write_table
from etl.oracle import oracle_frame
from etl.pipeline import run_etl
from etl.spec import SPEC_FILE, FeatureSpec
from etl.submit import submit_command, submit_env
from etl.tables import DELTA_LOG_DIR, EVENTS, IMPRESSIONS, SAMPLES, SPLITS
from train.tracking.lineage import delta_dataset, lineage_tables, samples_read

FIRST_TABLE = "bronze_raw_sample"  # the ETL's first write for the taobao_ad source


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("atomic_worlds")
    generate_world(root / "a", users=80, seed=1)
    generate_world(root / "b", users=60, seed=2)
    return root / "a", root / "b"


def versions(lake: Path) -> dict[str, int]:
    """Latest committed version of every table folder in the lake (-1: no commit yet)."""
    out = {}
    for table in sorted(p for p in lake.iterdir() if (p / DELTA_LOG_DIR).is_dir()):
        commits, _ = delta_log(table)
        out[table.name] = max(commits, default=-1)
    return out


def data_files(table: Path) -> set[str]:
    """Parquet files in a table folder (a directory scan: committed or not, any version)."""
    return {
        str(Path(d, f))
        for d, _, names in os.walk(table)
        for f in names
        if f.endswith(".parquet") and DELTA_LOG_DIR not in d
    }


def readers_see(spark, lake: Path, world: Path) -> dict:
    """What every reader of the lake reads: spec bytes, loader files, Spark rows, lineage."""
    spec_text = (lake / SPEC_FILE).read_text()
    spec = FeatureSpec.from_json(spec_text)
    files = {split: snapshot_files(lake, split, spec) for split in SPLITS}
    paths = [f.removeprefix("file://") for split_files in files.values() for f in split_files]
    arrow_ids = sorted(ds.dataset(paths).to_table(columns=["impression_id"])[0].to_pylist())
    ids = {}
    for table in (SAMPLES, IMPRESSIONS):
        rows = read_recorded(spark, lake, table, spec).select("impression_id").collect()
        ids[table] = sorted(r[0] for r in rows)
    assert arrow_ids == ids[SAMPLES]  # the loaders and Spark read the same version
    oracle = oracle_frame(world, lake)
    profile = delta_dataset(samples_read(lineage_tables(lake, None, spec))).profile
    return {
        "spec": spec_text,
        "files": files,
        "ids": ids,
        "oracle": sorted(oracle["impression_id"]),
        "profile_rows": profile["num_rows"],
    }


def etl_command(world: Path, lake: Path) -> list[str]:
    """spark-submit jobs/etl.py from ``world`` into ``lake`` (the quickstart's command line)."""
    cmd = submit_command(ROOT / "jobs" / "etl.py", ["--input", str(world), "--output", str(lake)])
    cmd[1:1] = ["--conf", "spark.sql.shuffle.partitions=4"]
    return cmd


def kill_when(lake: Path, world: Path, log: Path, reached: Callable[[], bool]) -> None:
    """Run the ETL on ``world`` into ``lake``; SIGKILL its process group as soon as
    ``reached()`` (polled every 50 ms) holds, and wait until none of the group is left."""
    cmd = etl_command(world, lake)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=submit_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 600
        while not reached():
            assert proc.poll() is None, (
                f"ETL ended before the kill point:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "kill point not reached in 600 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still alive"
        time.sleep(0.1)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state, ppid, pgrp
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_killed_run_is_invisible_and_a_rerun_lands_whole(spark, worlds, tmp_path):
    world_a, world_b = worlds
    lake = tmp_path / "lake"
    run_etl(spark, EtlConfig(input=str(world_a), output=str(lake)))
    seen_a = readers_see(spark, lake, world_a)
    versions_a = versions(lake)
    files_a = {SAMPLES: data_files(lake / SAMPLES)}
    assert versions_a == FeatureSpec.load(lake).tables  # every table's version is recorded

    first_log = lake / FIRST_TABLE
    points = {
        f"{FIRST_TABLE} committed": lambda: max(delta_log(first_log)[0]) > versions_a[FIRST_TABLE],
        "samples files written": lambda: bool(data_files(lake / SAMPLES) - files_a[SAMPLES]),
    }
    for name, reached in points.items():
        kill_when(lake, world_b, tmp_path / f"{name}.log", reached)
        assert reached(), name
        assert readers_see(spark, lake, world_a) == seen_a, name
    # the killed runs left commits and files past the spec's versions, which no reader saw
    assert versions(lake)[FIRST_TABLE] > versions_a[FIRST_TABLE]
    assert versions(lake)[EVENTS] > versions_a[EVENTS]  # committed before samples' write
    assert data_files(lake / SAMPLES) > files_a[SAMPLES]

    summary = run_etl(spark, EtlConfig(input=str(world_b), output=str(lake)))  # a rerun lands
    spec_b = FeatureSpec.load(lake)
    assert spec_b.tables == {t: v for t, v in versions(lake).items() if t in spec_b.tables}
    assert (
        spec_b.tables[SAMPLES] > versions_a[SAMPLES] and spec_b.tables[EVENTS] > versions_a[EVENTS]
    )
    seen_b = readers_see(spark, lake, world_b)
    assert not set(seen_b["ids"][SAMPLES]) & set(seen_a["ids"][SAMPLES])  # another world
    assert seen_b["profile_rows"] == len(seen_b["ids"][SAMPLES]) == summary.rows[SAMPLES]
    assert seen_b["oracle"] and set(seen_b["oracle"]) <= set(seen_b["ids"][SAMPLES])


def test_versions_are_read_through_checkpoints_and_missing_ones_refused(spark, tmp_path):
    """files_at replays the last checkpoint (partition values a map there) plus later commits,
    as Spark's time travel does; a version the log no longer holds is refused."""
    lake, interval = (
        tmp_path / "lake",
        "spark.databricks.delta.properties.defaults.checkpointInterval",
    )
    spark.conf.set(interval, "2")  # a checkpoint every 2 commits (default 10) for new tables
    try:
        for v in range(4):
            df = spark.range(v, v + 30).selectExpr("id", "IF(id % 3 = 0, 'test', 'train') split")
            write_table(df.repartition(2), lake, "t", ["split"])
    finally:
        spark.conf.unset(interval)
    log_dir = lake / "t" / DELTA_LOG_DIR
    assert (log_dir / f"{2:020d}.checkpoint.parquet").is_file()

    def spark_files(version: int, split: str) -> set[str]:
        table = spark.read.format("delta").option("versionAsOf", version)
        frame = table.load(table_path(lake, "t")).where(f"split = '{split}'")
        return {f.removeprefix("file:") for f in frame.inputFiles()}

    for version in (1, 2, 3):
        for split in ("train", "test"):
            ours = files_at(lake / "t", version, {"split": split})
            assert set(ours) == spark_files(version, split) and ours, (version, split)
    spec = FeatureSpec(source="t", max_len=1, fields=[], tables={"t": 2})
    expected = sorted("file://" + f for f in spark_files(2, "test"))
    assert snapshot_files(lake, "test", spec, "t") == expected
    for v in range(2):  # log clean-up: commits before the checkpoint are gone
        (log_dir / f"{v:020d}.json").unlink()
    assert set(files_at(lake / "t", 3, {"split": "train"})) == spark_files(3, "train")
    with pytest.raises(SnapshotError, match="version 1 of .* is not in its log"):
        files_at(lake / "t", 1)
    spec.tables["t"] = 4
    with pytest.raises(SnapshotError, match="version 4 of .* is not in its log"):
        snapshot_files(lake, "test", spec, "t")
