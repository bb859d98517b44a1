"""The ETL: raw logs -> bronze, quarantine, events, sessions, ads, impressions, vocab, samples,
spec.

Every table is written with one atomic Delta overwrite, so a rerun over the same input gives
the same contents and a crash leaves the previous version readable. The feature spec is written
last and records the versions of all tables of the run (it is the run's commit marker).

Bad input fails before the first write, with one exception: a run that fails because lines were
quarantined (a file with no readable line, or a quarantined share above the threshold) writes
its quarantine table first, and its message names the Delta version holding those lines. The
other tables and the spec keep the last good run.

``EtlConfig.incremental`` runs load the input the same way and hand over to
etl/incremental.py, which adds the input's new days with ``replaceWhere`` commits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from etl import storage
from etl.config import EtlConfig
from etl.cross import cross_fields
from etl.heavy_users import cap_user_events, users_above
from etl.incremental import lake_before_increment, run_increment
from etl.lake import (
    last_commit,
    partition_values,
    read_table,
    table_path,
    write_samples,
    write_table,
)
from etl.quality import union_all
from etl.run_steps import (
    EtlSummary,
    ads_table,
    check_output_folder,
    encoded_pass,
    enrich,
    events_have,
    keyed_impressions,
    run_sql_conf,
    sample_rows,
    source_config,
)
from etl.run_steps import label_stats as _label_stats
from etl.samples import Splits, assign_splits, build_vocabularies, feature_fields
from etl.schemas import BEHAVIORS, IMPRESSIONS, VOCAB
from etl.sessionize import sessionize, summarize_sessions
from etl.sources import load_source
from etl.sources.base import InputError, SourceData, reconciliation_failure
from etl.spec import FeatureSpec
from etl.tables import AD_TABLE, EVENTS, QUARANTINE
from etl.vocab import vocab_sizes
from etl.wide import build_wide_samples

__all__ = ["EtlSummary", "check_output_folder", "run_etl"]
log = logging.getLogger(__name__)


def run_etl(spark: SparkSession, cfg: EtlConfig) -> EtlSummary:
    with run_sql_conf(spark):
        return _run(spark, cfg)


def _run(spark: SparkSession, cfg: EtlConfig) -> EtlSummary:
    started = time.time()
    cfg.validate()
    check_output_folder(cfg.output)
    previous = lake_before_increment(cfg) if cfg.incremental else None  # before any read
    summary = EtlSummary(source=cfg.source, lake=cfg.output)
    data = load_source(spark, cfg.source, storage.spark_uri(cfg.input), source_config(cfg))
    summary.reports = data.reports
    try:
        spec = _write_tables(spark, data, cfg, summary, previous)
    finally:
        data.unpersist()
    if spec is None:  # an incremental run with no new day: nothing written
        summary.stats["quarantined_rows"] = float(sum(r.quarantined for r in data.reports))
        summary.splits = previous.splits
        summary.seconds = time.time() - started
        return summary
    spec.tables = {**(previous.tables if previous else {}), **summary.versions}
    spec.save(cfg.output)
    if "impressions" not in summary.stats:  # wide sources: no pass whose output gives them
        summary.stats.update(_label_stats(read_table(spark, cfg.output, "samples")))
    summary.stats["quarantined_rows"] = float(sum(r.quarantined for r in data.reports))
    summary.splits = spec.splits
    summary.seconds = time.time() - started
    return summary


def _write_tables(
    spark: SparkSession,
    data: SourceData,
    cfg: EtlConfig,
    summary: EtlSummary,
    previous: FeatureSpec | None,
) -> FeatureSpec | None:
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
    if previous is not None:
        return run_increment(spark, data, cfg, write, summary, previous)
    counts = None
    if data.wide_samples is None:  # the splits before the first write: a bad one writes nothing
        if data.impressions is None:
            raise InputError(f"{cfg.source}: the input holds no impressions to build samples from")
        counts = _input_counts(data, cfg)
    for name, df in data.bronze.items():
        write(df, name, None)
    write(data.quarantine, QUARANTINE, None)
    if data.wide_samples is not None:
        return build_wide_samples(data.wide_samples, cfg, write)
    return _build_session_tables(spark, data, cfg, write, summary, counts)


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


def _writer(spark: SparkSession, cfg: EtlConfig, summary: EtlSummary):
    def write(
        df: DataFrame,
        name: str,
        partition_by: list[str] | None,
        replace_where: str | None = None,
        options: dict[str, str] | None = None,
    ) -> DataFrame:
        log.info("writing %s%s", name, f" where {replace_where}" if replace_where else "")
        write_table(df, cfg.output, name, partition_by, replace_where, options)
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
    counts: _InputCounts,
) -> FeatureSpec:
    tz, splits, heavy = cfg.tz_offset_hours, counts.splits, counts.heavy_users
    behaviors = data.behaviors
    if behaviors is None:  # e.g. the joined FuxiCTR slice: impressions without a behavior log
        behaviors = spark.createDataFrame([], BEHAVIORS)
    # The events and ads as written, cached: the later steps read them without a Delta scan
    # (each scan of a Delta table plans with a Spark job listing its files).
    events = sessionize(behaviors, cfg.gap_seconds, tz).persist(StorageLevel.MEMORY_AND_DISK)
    write(events, EVENTS, ["day"])
    write(summarize_sessions(events, tz), "sessions", ["day"])
    summary.stats["sessions"] = float(summary.rows["sessions"])
    summary.stats["capped_users"] = float(len(heavy))
    impressions = keyed_impressions(data.impressions, tz)
    ads = ads_table(data.ads)
    write(ads, AD_TABLE, None)
    enriched = enrich(impressions, splits, ads, data.users)
    train_events = events.where(F.col("ts") < splits.train_end_ts(tz))
    train = enriched.where(F.col("split") == "train")
    # one collect: the pass encodes with it (no Spark join per field), the table is written from it
    vocab = build_vocabularies(train, train_events, cfg.min_count).toPandas()
    write(spark.createDataFrame(vocab, VOCAB), "vocab", None)
    pass_events = cap_user_events(events, heavy, cfg.max_user_behaviors)
    n_rows = summary.rows[EVENTS] + counts.impressions  # enrich keeps one row per impression
    passed, encoding = encoded_pass(
        spark, pass_events, enriched, vocab, cfg, data.conversion_match, n_rows
    )
    summary.stats.update(_label_stats(passed))  # materializes the cache both writes read
    write(passed.select(*[f.name for f in IMPRESSIONS.fields]), "impressions", ["day"])
    fields = feature_fields(vocab_sizes(vocab), events_have(events, table_path(cfg.output, EVENTS)))
    fields += cross_fields(fields)
    samples = sample_rows(passed, fields)
    write_samples(samples, cfg, write, int(summary.stats["impressions"]))
    for df in (enriched, passed, events):
        df.unpersist()
    encoding.vocabularies.unpersist()
    event_days = partition_values(table_path(cfg.output, EVENTS), "day")
    return FeatureSpec(
        source=cfg.source,
        max_len=cfg.max_len,
        fields=fields,
        splits=splits.as_dict(),
        gap_seconds=cfg.gap_seconds,
        tz_offset_hours=tz,
        last_day=max([*event_days, *splits.train, *splits.valid, *splits.test]),
        vocab_version=1,
        vocabulary_sizes=vocab_sizes(vocab),
        options=cfg.table_options(),
    )


@dataclass(frozen=True)
class _InputCounts:
    splits: Splits
    impressions: int
    heavy_users: list[int]  # more than --max-user-behaviors behaviors (etl/heavy_users.py)


def _input_counts(data: SourceData, cfg: EtlConfig) -> _InputCounts:
    """The splits of the impression days, the impressions' count and the heavy users (a
    user's events are its behaviors), from one Spark job."""
    keyed = keyed_impressions(data.impressions, cfg.tz_offset_hours)
    day = F.date_format("day", "yyyy-MM-dd").alias("key")
    parts = [keyed.groupBy("day").count().select(F.lit("day").alias("kind"), day, "count")]
    if cfg.max_user_behaviors > 0 and data.behaviors is not None:
        above = users_above(data.behaviors, cfg.max_user_behaviors)
        user = F.col("user_id").cast("string").alias("key")
        parts.append(above.select(F.lit("user").alias("kind"), user, "count"))
    rows = union_all(parts).collect()
    per_day = {r["key"]: int(r["count"]) for r in rows if r["kind"] == "day"}
    heavy = sorted(int(r["key"]) for r in rows if r["kind"] == "user")
    return _InputCounts(_splits(sorted(per_day), cfg), sum(per_day.values()), heavy)


def _splits(days: list[str], cfg: EtlConfig) -> Splits:
    splits = assign_splits(days, cfg.test_days, cfg.valid_days, cfg.test_start)
    if cfg.test_start and not splits.test:
        raise InputError(
            f"--test-start {cfg.test_start} is after the last impression day {max(days)}: "
            "the test split would be empty"
        )
    return splits
