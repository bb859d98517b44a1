"""The ETL: raw logs -> bronze, quarantine, events, sessions, ads, impressions, vocab, samples,
spec.

Every table is written with one atomic Delta overwrite, so a rerun over the same input gives
the same contents and a crash leaves the previous version readable. The feature spec is written
last and records the versions of all tables of the run (it is the run's commit marker).

Bad input fails before the first write, with one exception: a run that fails because lines were
quarantined (a file with no readable line, or a quarantined share above the threshold) writes
its quarantine table first, and its message names the Delta version holding those lines. The
other tables and the spec keep the last good run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from etl import storage
from etl.config import EtlConfig
from etl.cross import cross_fields, with_cross_features
from etl.features import EVENT_FIELDS, SEQUENCE_SOURCE, SPARSE_FIELDS
from etl.heavy_users import cap_user_events, heavy_users
from etl.impressions import (
    ENCODED_PREFIX,
    Encoding,
    PassConfig,
    bucket_count,
    label_and_history,
)
from etl.lake import (
    last_commit,
    non_null_counts,
    read_table,
    table_path,
    write_samples,
    write_table,
)
from etl.samples import Splits, assign_splits, build_vocabularies, feature_fields, sample_columns
from etl.schemas import ADS, BEHAVIORS, IMPRESSIONS, USERS
from etl.sessionize import local_day, sessionize, summarize_sessions
from etl.sources import load_source
from etl.sources.base import (
    FileReport,
    InputError,
    SourceConfig,
    SourceData,
    reconciliation_failure,
)
from etl.spec import FeatureSpec
from etl.tables import AD_TABLE, QUARANTINE, is_lake_entry
from etl.vocab import vocab_sizes, vocabularies
from etl.wide import build_wide_samples

log = logging.getLogger(__name__)
# Impression columns the per-user pass carries through for the impressions and samples tables.
PASS_CARRY = ("user_id", "ts", "ad_id", "slot", "click", "day", "split")


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


def run_etl(spark: SparkSession, cfg: EtlConfig) -> EtlSummary:
    started = time.time()
    cfg.validate()
    check_output_folder(cfg.output)
    summary = EtlSummary(source=cfg.source, lake=cfg.output)
    data = load_source(spark, cfg.source, storage.spark_uri(cfg.input), source_config(cfg))
    summary.reports = data.reports
    try:
        spec = _write_tables(spark, data, cfg, summary)
    finally:
        data.unpersist()
    spec.tables = dict(summary.versions)
    spec.save(cfg.output)
    if "impressions" not in summary.stats:  # wide sources: no pass whose output gives them
        summary.stats.update(_label_stats(read_table(spark, cfg.output, "samples")))
    summary.stats["quarantined_rows"] = float(sum(r.quarantined for r in data.reports))
    summary.splits = spec.splits
    summary.seconds = time.time() - started
    return summary


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


def _write_tables(
    spark: SparkSession, data: SourceData, cfg: EtlConfig, summary: EtlSummary
) -> FeatureSpec:
    for report in data.reports:
        log.info(
            "%s: read %d kept %d quarantined %d",
            report.file,
            report.read,
            report.kept,
            report.quarantined,
        )
    write = _writer(spark, cfg, summary)
    _check_reconciliation(data, cfg, write, summary)
    splits = None
    if data.wide_samples is None:  # the splits before the first write: a bad one writes nothing
        if data.impressions is None:
            raise InputError(f"{cfg.source}: the input holds no impressions to build samples from")
        splits = _splits(_keyed_impressions(data.impressions, cfg.tz_offset_hours), cfg)
    for name, df in data.bronze.items():
        write(df, name, None)
    write(data.quarantine, QUARANTINE, None)
    if data.wide_samples is not None:
        return build_wide_samples(spark, data.wide_samples, cfg, write)
    return _build_session_tables(spark, data, cfg, write, summary, splits)


def _check_reconciliation(data: SourceData, cfg: EtlConfig, write, summary: EtlSummary) -> None:
    """Raise InputError when the input fails reconciliation; when quarantined lines make it
    fail, write the quarantine table first and name the version that holds them."""
    failure = reconciliation_failure(data.reports, cfg.max_quarantine_share)
    if failure is None:
        return
    if not failure.quarantined:
        raise InputError(failure.message)
    write(data.quarantine, QUARANTINE, None)
    where = storage.join(cfg.output, QUARANTINE)
    raise InputError(
        f"{failure.message}; see quarantine table {where} at version {summary.versions[QUARANTINE]}"
    )


def source_config(cfg: EtlConfig) -> SourceConfig:
    return SourceConfig(
        max_quarantine_share=cfg.max_quarantine_share,
        negatives_per_positive=cfg.negatives_per_positive,
        seed=cfg.seed,
    )


def _writer(spark: SparkSession, cfg: EtlConfig, summary: EtlSummary):
    def write(df: DataFrame, name: str, partition_by: list[str] | None) -> DataFrame:
        log.info("writing %s", name)
        write_table(df, cfg.output, name, partition_by)
        version, rows = last_commit(spark, table_path(cfg.output, name))
        summary.versions[name], summary.rows[name] = version, rows
        return read_table(spark, cfg.output, name)

    return write


def _build_session_tables(
    spark: SparkSession,
    data: SourceData,
    cfg: EtlConfig,
    write,
    summary: EtlSummary,
    splits: Splits,
) -> FeatureSpec:
    tz = cfg.tz_offset_hours
    behaviors = data.behaviors
    if behaviors is None:  # e.g. the joined FuxiCTR slice: impressions without a behavior log
        behaviors = spark.createDataFrame([], BEHAVIORS)
    events = write(sessionize(behaviors, cfg.gap_seconds, tz), "events", ["day"])
    sessions = write(summarize_sessions(events, tz), "sessions", ["day"])
    summary.stats["sessions"] = float(summary.rows["sessions"])
    heavy = heavy_users(sessions, cfg.max_user_behaviors)
    summary.stats["capped_users"] = float(len(heavy))
    impressions = _keyed_impressions(data.impressions, tz)
    # The ads exactly as joined: the ad table a model ships for online features (etl/online.py).
    ads = write(_one_row_per_key(data.ads, ADS, "ad_id"), AD_TABLE, None)
    enriched = (
        impressions.withColumn("split", splits.column(F.col("day")))
        .join(ads, "ad_id", "left")
        .join(_one_row_per_key(data.users, USERS, "user_id"), "user_id", "left")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    train_events = events.where(F.col("ts") < splits.train_end_ts(tz))
    vocab = write(
        build_vocabularies(enriched.where(F.col("split") == "train"), train_events, cfg.min_count),
        "vocab",
        None,
    ).toPandas()  # one collect: the pass encodes with it (no Spark join per field)
    n_buckets = bucket_count(
        summary.rows["events"] + enriched.count(),
        cfg.pass_rows_per_bucket,
        int(spark.conf.get("spark.sql.shuffle.partitions")),
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
        data.conversion_match,
        n_buckets,
        tz,
    )
    pass_events = cap_user_events(events, heavy, cfg.max_user_behaviors)
    passed = label_and_history(pass_events, enriched, config, encoding).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    summary.stats.update(_label_stats(passed))  # materializes the cache both writes read
    write(passed.select(*[f.name for f in IMPRESSIONS.fields]), "impressions", ["day"])
    events_have = _events_have(events, table_path(cfg.output, "events"))
    fields = feature_fields(vocab_sizes(vocab), events_have)
    fields += cross_fields(fields)
    samples = with_cross_features(_decoded_names(passed)).select(*sample_columns(fields))
    write_samples(spark, samples, cfg, write, int(summary.stats["impressions"]))
    enriched.unpersist()
    passed.unpersist()
    encoding.vocabularies.unpersist()
    return FeatureSpec(
        source=cfg.source,
        max_len=cfg.max_len,
        fields=fields,
        splits=splits.as_dict(),
        gap_seconds=cfg.gap_seconds,
        tz_offset_hours=tz,
    )


def _events_have(events: DataFrame, path: str) -> dict[str, bool]:
    """Whether the events hold any value of each SEQUENCE_SOURCE column: from the write's
    Delta file stats, or one aggregation when they have none."""
    columns = list(SEQUENCE_SOURCE.values())
    known = non_null_counts(path, columns)
    if known is None:
        known = events.agg(*[F.count(c).alias(c) for c in columns]).collect()[0].asDict()
    return {c: known[c] > 0 for c in columns}


def _decoded_names(passed: DataFrame) -> DataFrame:
    """The pass's encoded fields under their samples names (replacing raw namesakes: slot)."""
    encoded = {c: c[len(ENCODED_PREFIX) :] for c in passed.columns if c.startswith(ENCODED_PREFIX)}
    kept = [c for c in passed.columns if c not in encoded and c not in encoded.values()]
    return passed.select(*kept, *[F.col(c).alias(name) for c, name in encoded.items()])


def _keyed_impressions(raw: DataFrame, tz: int) -> DataFrame:
    key = F.xxhash64("user_id", "ts", "ad_id", "slot", "click")
    return raw.withColumn("impression_id", key).withColumn("day", local_day(F.col("ts"), tz))


def _splits(impressions: DataFrame, cfg: EtlConfig) -> Splits:
    days = [r["day"].isoformat() for r in impressions.select("day").distinct().collect()]
    splits = assign_splits(days, cfg.test_days, cfg.valid_days, cfg.test_start)
    if cfg.test_start and not splits.test:
        raise InputError(
            f"--test-start {cfg.test_start} is after the last impression day {max(days)}: "
            "the test split would be empty"
        )
    return splits


def _one_row_per_key(df: DataFrame | None, schema, key: str) -> DataFrame:
    """Side tables joined many-to-one: keep one deterministic row per key (min of each column)."""
    spark = SparkSession.getActiveSession()
    if df is None:
        return spark.createDataFrame([], schema)
    others = [f.name for f in schema.fields if f.name != key]
    return df.groupBy(key).agg(*[F.min(c).alias(c) for c in others])


def _label_stats(samples: DataFrame) -> dict[str, float]:
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
