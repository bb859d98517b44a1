"""Steps shared by the full ETL run (etl/pipeline.py) and the incremental one
(etl/incremental.py): the run's summary, option and output checks, keyed and enriched
impressions, the encoded per-user pass and the samples rows it gives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from etl import storage
from etl.config import EtlConfig
from etl.cross import with_cross_features
from etl.features import EVENT_FIELDS, SEQUENCE_SOURCE, SPARSE_FIELDS
from etl.impressions import (
    ENCODED_PREFIX,
    Encoding,
    PassConfig,
    bucket_count,
    label_and_history,
)
from etl.lake import non_null_counts
from etl.samples import Splits, sample_columns
from etl.schemas import ADS, USERS
from etl.sessionize import local_day
from etl.sources.base import FileReport, InputError, SourceConfig
from etl.spec import FieldSpec
from etl.tables import is_lake_entry
from etl.vocab import vocabularies

# Impression columns the per-user pass carries through for the impressions and samples tables.
PASS_CARRY = ("user_id", "ts", "ad_id", "slot", "click", "day", "split")
# The raw impression columns (plus key and day) the pass reads, as the impressions table holds.
RAW_IMPRESSION_COLUMNS = ("impression_id", "user_id", "ts", "ad_id", "slot", "click", "day")
# SQL settings of a run. Adaptive execution runs each query stage as a Spark job of its own (a
# plan with n shuffles: n + 1 jobs), and per-job cost dominates small inputs; the ETL sizes
# its shuffles itself (spark.sql.shuffle.partitions, pass buckets, samples files), so static
# plans lose nothing it relies on and cut the jobs of a run by more than half. A value the job
# was given wins (infra/k8s's SparkApplications keep adaptive execution on for the full logs,
# where per-job cost is small and skewed joins are not).
RUN_SQL_CONF = {"spark.sql.adaptive.enabled": "false"}
# Delta writes a run keeps in flight at once (etl/incremental.py): a small table's overwrite is
# mostly driver-side latency (three Spark jobs, log reads and the commit), so independent ones
# overlap well even on two cores.
CONCURRENT_WRITES = 4


@dataclass
class EtlSummary:
    source: str
    lake: str
    rows: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    reports: list[FileReport] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    days: list[str] = field(default_factory=list)  # incremental runs: the days processed

    def lines(self) -> list[str]:
        out = [f"ETL {self.source} -> {self.lake} in {self.seconds:.1f}s"]
        out += [
            f"  file {r.file}: read {r.read} = kept {r.kept} + quarantined {r.quarantined}"
            for r in self.reports
        ]
        out += [
            f"  table {name:<22} rows {self.rows.get(name, 0):>12,}  delta version {version}"
            for name, version in self.versions.items()
        ]
        out += [f"  {key}: {value:.6g}" for key, value in self.stats.items()]
        out += [f"  split {name}: {', '.join(days)}" for name, days in self.splits.items()]
        return out


@contextmanager
def run_sql_conf(spark: SparkSession) -> Iterator[None]:
    """RUN_SQL_CONF for the duration of a run; the session's own values restored after. A
    setting the job was given (``spark-submit --conf``, the session builder) wins."""
    given = spark.sparkContext.getConf()
    chosen = {k: v for k, v in RUN_SQL_CONF.items() if not given.contains(k)}
    saved = {key: spark.conf.get(key, None) for key in chosen}
    for key, value in chosen.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


@contextmanager
def concurrent_writes(workers: int = CONCURRENT_WRITES) -> Iterator[Callable[..., Future]]:
    """A ``submit(fn, *args)`` that runs ``fn`` on a pool thread with the caller's Spark local
    properties (job group, scheduler pool: ``inheritable_thread_target``); on leaving, every
    submitted call has finished and the first failure is raised. Each call is still one
    atomic Delta commit of its own table, so a failed or killed run leaves what a sequential
    one would: some tables committed past the spec, which readers ignore (etl/delta_log.py)."""
    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etl-write") as pool:

        def submit(fn: Callable, *args) -> Future:
            future = pool.submit(inheritable_thread_target(fn), *args)
            futures.append(future)
            return future

        yield submit
    for future in futures:
        future.result()


def check_output_folder(output: str) -> None:
    """InputError (before any read or write) for a local output that is a file or a folder
    holding anything but a lake's tables: the ETL would write its tables among them."""
    if storage.is_uri(output):
        return  # an object-store prefix: no folder to mix tables into
    path = Path(storage.local_path(output))
    if path.is_file():
        raise InputError(f"--output {output} is a file, not a folder for the lake")
    strangers = (
        sorted(p.name for p in path.iterdir() if not is_lake_entry(p.name)) if path.is_dir() else []
    )
    if strangers:
        raise InputError(
            f"--output {output} holds {len(strangers)} entries that are not a lake's tables "
            f"(e.g. {strangers[0]!r}): give an empty or new folder, or an existing lake"
        )


def source_config(cfg: EtlConfig) -> SourceConfig:
    return SourceConfig(
        max_quarantine_share=cfg.max_quarantine_share,
        negatives_per_positive=cfg.negatives_per_positive,
        seed=cfg.seed,
    )


def keyed_impressions(raw: DataFrame, tz: int) -> DataFrame:
    key = F.xxhash64("user_id", "ts", "ad_id", "slot", "click")
    return raw.withColumn("impression_id", key).withColumn("day", local_day(F.col("ts"), tz))


def one_row_per_key(df: DataFrame | None, schema, key: str) -> DataFrame:
    """Side tables joined many-to-one: keep one deterministic row per key (min of each column)."""
    spark = SparkSession.getActiveSession()
    if df is None:
        return spark.createDataFrame([], schema)
    others = [f.name for f in schema.fields if f.name != key]
    return df.groupBy(key).agg(*[F.min(c).alias(c) for c in others])


def enrich(impressions: DataFrame, splits: Splits, ads: DataFrame, users: DataFrame | None):
    """Keyed impressions with their split, the ad's and the user's columns (cached)."""
    return (
        impressions.withColumn("split", splits.column(F.col("day")))
        .join(ads, "ad_id", "left")
        .join(one_row_per_key(users, USERS, "user_id"), "user_id", "left")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


def encoded_pass(
    spark: SparkSession,
    events: DataFrame,
    enriched: DataFrame,
    vocab: pd.DataFrame,
    cfg: EtlConfig,
    conversion_match: str,
    n_rows: int,
) -> tuple[DataFrame, Encoding]:
    """The per-user pass over ``events`` and ``enriched`` with the ids of ``vocab`` (collected:
    no Spark join per field); its output is cached, the caller materializes it once."""
    n_buckets = bucket_count(
        n_rows, cfg.pass_rows_per_bucket, int(spark.conf.get("spark.sql.shuffle.partitions"))
    )
    encoding = Encoding(
        spark.sparkContext.broadcast(vocabularies(vocab)),
        EVENT_FIELDS,
        SPARSE_FIELDS,
        tuple(enriched.schema[c] for c in PASS_CARRY),
    )
    config = PassConfig(
        cfg.gap_seconds,
        cfg.attribution_seconds,
        cfg.max_len,
        conversion_match,
        n_buckets,
        cfg.tz_offset_hours,
    )
    passed = label_and_history(events, enriched, config, encoding)
    return passed.persist(StorageLevel.MEMORY_AND_DISK), encoding


def sample_rows(passed: DataFrame, fields: list[FieldSpec]) -> DataFrame:
    """The samples rows of the pass's output for the spec's ``fields``."""
    return with_cross_features(decoded_names(passed)).select(*sample_columns(fields))


def events_have(events: DataFrame, path: str) -> dict[str, bool]:
    """Whether the events hold any value of each SEQUENCE_SOURCE column: from the write's
    Delta file stats, or one aggregation when they have none."""
    columns = list(SEQUENCE_SOURCE.values())
    known = non_null_counts(path, columns)
    if known is None:
        known = events.agg(*[F.count(c).alias(c) for c in columns]).collect()[0].asDict()
    return {c: known[c] > 0 for c in columns}


def decoded_names(passed: DataFrame) -> DataFrame:
    """The pass's encoded fields under their samples names (replacing raw namesakes: slot)."""
    encoded = {c: c[len(ENCODED_PREFIX) :] for c in passed.columns if c.startswith(ENCODED_PREFIX)}
    kept = [c for c in passed.columns if c not in encoded and c not in encoded.values()]
    return passed.select(*kept, *[F.col(c).alias(name) for c, name in encoded.items()])


def ads_table(ads: DataFrame | None) -> DataFrame:
    """The ads exactly as joined: one row per ad (the table a model ships, etl/online.py)."""
    return one_row_per_key(ads, ADS, "ad_id")


def label_stats(samples: DataFrame) -> dict[str, float]:
    row = samples.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("click").alias("clicks"),
        F.sum("conversion").alias("conversions"),
        F.avg("n_future_views").alias("views"),
    ).collect()[0]
    n, clicks = row["n"] or 0, row["clicks"] or 0.0
    return {
        "impressions": float(n),
        "ctr": clicks / n if n else float("nan"),
        "cvr_per_click": (row["conversions"] or 0.0) / clicks if clicks else float("nan"),
        "mean_future_views": float(row["views"] or 0.0),
    }
