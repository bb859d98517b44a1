"""Delta table I/O for the lake: one folder per table under LAKE/.

Writes are full overwrites of a table (or of the partitions named in ``replace_where``) in one
Delta commit: a rerun over the same input yields the same contents, and a crash before the
commit leaves the previous version readable. Consumers read a lake's tables with
``read_recorded``: the versions its feature spec records (etl/delta_log.py, "Atomic runs"), so
the commits of an unfinished ETL run are invisible; ``read_table`` without a version reads the
latest commit, which only the ETL itself does (what its run has just written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from etl import storage
from etl.config import EtlConfig
from etl.delta_log import Replayed, delta_log, latest_version, recorded_version, replay
from etl.spec import FeatureSpec
from etl.tables import SAMPLES


def table_path(lake: str | Path, name: str) -> str:
    """Where Spark finds table ``name``: a local folder or an ``s3a://`` URI."""
    return storage.spark_uri(storage.join(lake, name))


def write_table(
    df: DataFrame,
    lake: str | Path,
    name: str,
    partition_by: list[str] | None = None,
    replace_where: str | None = None,
    options: dict[str, str] | None = None,
) -> int:
    """Overwrite table ``name`` in ``lake`` atomically; return the Delta version written.
    ``options``: Delta writer options of this write only (e.g. ``maxRecordsPerFile``), so
    concurrent writes and the caller's later ones keep the session's settings.

    A table without a commit yet is created by an append (the same one commit): an overwrite
    would first scan the empty table for files to remove, one more Spark job per table."""
    path = table_path(lake, name)
    if not replace_where and not delta_log(path)[0]:
        writer = df.write.format("delta").mode("append")
    else:
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if replace_where:
        writer = writer.option("replaceWhere", replace_where).option("overwriteSchema", "false")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.options(**(options or {})).save(path)
    return table_version(df.sparkSession, path)


def last_commit(spark: SparkSession, path: str) -> tuple[int, int]:
    """(version, rows written) of the table's latest commit, read from its Delta log file in
    Python: no Spark job (``DeltaTable.history`` runs one per call)."""
    version, info = _commit_info(path)
    return version, int((info.get("operationMetrics") or {}).get("numOutputRows", 0))


def non_null_counts(path: str, columns: list[str]) -> dict[str, int] | None:
    """Non-null values per column in the files the latest commit added (its ``add`` stats;
    Delta collects them for the first 32 columns), without a Spark job; None when a file
    has no such stats (stats collection off)."""
    _, commit = latest_version(path)
    out = dict.fromkeys(columns, 0)
    for line in storage.read_text(commit).splitlines():
        add = json.loads(line).get("add") if line.strip() else None
        if not add:
            continue
        stats = json.loads(add.get("stats") or "{}")
        nulls = stats.get("nullCount", {})
        if "numRecords" not in stats or any(c not in nulls for c in columns):
            return None
        for c in columns:
            out[c] += int(stats["numRecords"]) - int(nulls[c])
    return out


def partition_values(path: str, column: str) -> list[str]:
    """Sorted distinct values of partition ``column`` in the files the latest commit added
    (all files after a full overwrite), read from its log file: no Spark job."""
    _, commit = latest_version(path)
    values = set()
    for line in storage.read_text(commit).splitlines():
        add = json.loads(line).get("add") if line.strip() else None
        if add and (add.get("partitionValues") or {}).get(column) is not None:
            values.add(add["partitionValues"][column])
    return sorted(values)


def restore_to(spark: SparkSession, lake: str | Path, name: str, version: int) -> bool:
    """Restore table ``name`` to ``version`` when later commits exist (those of a run that
    died before its feature spec); one new commit, readers of the spec's versions unaffected.
    Returns whether it restored."""
    path = table_path(lake, name)
    if latest_version(path)[0] == version:
        return False
    DeltaTable.forPath(spark, path).restoreToVersion(version)
    return True


def _commit_info(path: str) -> tuple[int, dict]:
    version, commit = latest_version(path)
    for line in storage.read_text(commit).splitlines():
        if line.strip() and "commitInfo" in (action := json.loads(line)):
            return version, action["commitInfo"]
    return version, {}


def table_version(spark: SparkSession, path: str) -> int:
    return latest_version(path)[0]


def read_table(
    spark: SparkSession, lake: str | Path, name: str, version: int | None = None
) -> DataFrame:
    """Table ``name`` at Delta ``version`` (time travel); None: its latest commit."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(lake, name))


def read_recorded(
    spark: SparkSession, lake: str | Path, name: str, spec: FeatureSpec | None = None
) -> DataFrame:
    """Table ``name`` at the version the lake's feature spec (or ``spec``) records: the last
    complete ETL run's, whatever a later unfinished run committed."""
    spec = spec if spec is not None else FeatureSpec.load(lake)
    return read_table(spark, lake, name, recorded_version(spec, name))


def recorded_state(lake: str | Path, name: str, spec: FeatureSpec) -> Replayed:
    """Table ``name``'s state (files, schema) at the version ``spec`` records, from its log."""
    return replay(storage.join(lake, name), recorded_version(spec, name))


def read_files(spark: SparkSession, lake: str | Path, name: str, state: Replayed) -> DataFrame:
    """Table ``name`` at the version ``state`` replays (etl/delta_log.py ``replay``) read as
    the Parquet files its log lists: the rows ``read_table`` gives at that version, without
    Delta's scan planning, which costs a Spark job per scan of a table in each query (listing
    the snapshot's files; one more the first time, computing its state). A table with reader
    features (deletion vectors, column mapping: none that the ETL writes) is read through
    Delta."""
    if not _plain_parquet(state):
        return read_table(spark, lake, name, state.version)
    schema = StructType.fromJson(json.loads(state.metadata["schemaString"]))
    if not state.adds:
        return spark.createDataFrame([], schema)
    table = storage.join(lake, name)
    files = [storage.spark_uri(storage.join(table, unquote(p))) for p in sorted(state.adds)]
    reader = spark.read.schema(schema).option("basePath", storage.spark_uri(table))
    return reader.parquet(*files).select(*schema.fieldNames())  # the table's column order


def read_pandas(lake: str | Path, name: str, state: Replayed) -> pd.DataFrame:
    """An unpartitioned table at the version ``state`` replays, collected by pyarrow from its
    files (no Spark job): for small tables such as vocab."""
    if not _plain_parquet(state) or state.metadata.get("partitionColumns"):
        raise ValueError(f"{name}: read_pandas reads unpartitioned plain Parquet tables only")
    table = storage.join(lake, name)
    parts = []
    for path in sorted(state.adds):
        fs, inner = storage.filesystem(storage.join(table, unquote(path)))
        parts.append(pq.read_table(inner, filesystem=fs))
    schema = StructType.fromJson(json.loads(state.metadata["schemaString"]))
    if not parts:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in schema.fields})
    return pa.concat_tables(parts).to_pandas()[schema.fieldNames()]


def _plain_parquet(state: Replayed) -> bool:
    """Whether a reader needs nothing but the Parquet files (protocol reader version 1)."""
    return int(state.protocol.get("minReaderVersion", 1)) == 1


def is_table(spark: SparkSession, lake: str | Path, name: str) -> bool:
    return DeltaTable.isDeltaTable(spark, table_path(lake, name))


def write_samples(
    samples: DataFrame,
    cfg: EtlConfig,
    write,
    n_rows: int | None = None,
    replace_where: str | None = None,
) -> DataFrame:
    """Write samples partitioned by split/day in enough files for one shard per worker (no
    manifest: readers list a version's files from the Delta log, etl/delta_log.py).
    ``n_rows``: the row count when the caller knows it (else one count of a cached copy);
    ``replace_where``: rewrite only the rows (day partitions) it selects."""
    cached = None
    if n_rows is None:
        cached = samples = samples.persist(StorageLevel.MEMORY_AND_DISK)
        n_rows = samples.count()
    n_files = max(cfg.min_files_per_split, math.ceil(n_rows / cfg.rows_per_file))
    written = write(
        samples.repartition(n_files, "impression_id"),
        SAMPLES,
        ["split", "day"],
        replace_where,
        {"maxRecordsPerFile": str(cfg.rows_per_file)},  # this write's option, not the session's
    )
    if cached is not None:
        cached.unpersist()
    return written
