"""Incremental daily runs: ``jobs/etl.py --incremental`` adds the input's new days to a lake.

The same job and tables as a full run (etl/pipeline.py, which calls ``run_increment`` after
loading the input). What a run does, given a lake whose feature spec records ``last_day``:

- new days: the input's behaviors and impressions on days after the lake's ``last_day``
  (UTC+offset); rows on earlier days are taken to be in the lake already and are ignored, so
  the input may hold every day (the closed loop's merged ``raw/``) or the new days only. No
  new day: nothing is written (a rerun of the same day is a no-op).
- splits: assigned again over all impression days (lake + new) with the same
  ``--test-days/--valid-days/--test-start`` as the full run; with ``test_days=0,
  valid_days=1`` the last day is valid and the previous valid day becomes train.
- affected days, rewritten with one Delta ``replaceWhere`` commit per table: ``events`` the
  new days; ``sessions`` the new days and the start days of the lake's sessions that the new
  behaviors may continue (ending at most a gap before the first new day: sessions crossing
  midnight); ``impressions`` and ``samples`` every day from D0 on, where D0 is the earliest of
  the day a gap or an attribution window (whichever is longer) before the first new day (the
  conversions and future views a new behavior can change), the day a gap before the first
  continued session's start, and every lake day that is not train in the old or the new
  splits (its split changes, or its encoding: ids the vocabulary gains). Days before D0 are
  train days whose rows a full run over all days gives unchanged.
- context from the lake (at the versions its spec records): the events of continued sessions
  (sessionized again with the new behaviors: the same session ids and positions), the events
  from D0 on, and per user with an affected impression the last ``max_len`` events before D0
  plus every event of a session reaching D0: enough for histories (the last max_len behaviors
  strictly before each impression), session features, future views and conversions.
- vocabularies, append-only: the train period's new occurrences (the impressions of days
  that became train; the behaviors between the old and the new end of the train period) are
  counted; a known (vocab, raw) keeps its id and adds its count; a new one gets the next id
  after its vocabulary's max, by count (desc) then raw among the new ones. The known values
  and their counts equal a full run's; the ids differ from a full run's (which orders all
  values by count), so equality with a full run holds for decoded values (id -> raw), not for
  ids. ``--min-count`` must be 1 (the vocab table keeps no counts below it). The spec records
  ``vocabulary_sizes`` and ``vocab_version`` (+1 per run that adds ids).
- the ads table: the input's ads plus the lake's ads the input lacks (one overwrite);
  bronze and quarantine hold the run's input, as in a full run.
- refused before any read or write: no lake or a spec written before incremental runs, a
  table option (``EtlConfig.table_options``) other than the lake's, ``--min-count`` > 1, the
  ali_ccp source; before any write: a field set that would change (run a full ETL).
- crashes: every table is read at the version the spec records and the spec is written last,
  so readers see the previous lake; a table that a dead run committed past its recorded
  version is restored to it (one more commit) before this run writes it. The tables the pass
  does not read (bronze, quarantine, events, sessions, ads, vocab) are written on pool threads
  while the pass runs (``concurrent_writes``): each is still one commit, and a run that fails
  part-way leaves the same kind of state as a sequential one (commits past the spec, ignored).
- not identical to a full run: users above ``--max-user-behaviors`` (their pass keeps the most
  recent behaviors of the context, not of all days), and days before D0 keep the ad and user
  attributes of the run that wrote them.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from etl.config import EtlConfig
from etl.cross import cross_fields
from etl.features import SEQUENCE_SOURCE
from etl.heavy_users import cap_user_events, heavy_sessions_users
from etl.lake import read_files, read_pandas, recorded_state, restore_to, write_samples
from etl.quality import union_all
from etl.run_steps import (
    RAW_IMPRESSION_COLUMNS,
    EtlSummary,
    ads_table,
    concurrent_writes,
    encoded_pass,
    enrich,
    keyed_impressions,
    label_stats,
    sample_rows,
)
from etl.samples import Splits, assign_splits, build_vocabularies, feature_fields
from etl.schemas import BEHAVIORS, EVENTS, IMPRESSIONS
from etl.schemas import VOCAB as VOCAB_SCHEMA
from etl.sessionize import btag_rank, sessionize, summarize_sessions
from etl.sources.base import InputError, SourceData
from etl.spec import FeatureSpec
from etl.tables import AD_TABLE, QUARANTINE, SAMPLES, SESSIONS, VOCAB
from etl.tables import EVENTS as EVENTS_TABLE
from etl.tables import IMPRESSIONS as IMPRESSIONS_TABLE
from etl.vocab import extend_vocab, vocab_sizes

log = logging.getLogger(__name__)
REPLACED = (EVENTS_TABLE, SESSIONS, IMPRESSIONS_TABLE, SAMPLES)  # replaceWhere tables
CONTEXT = (EVENTS_TABLE, SESSIONS, IMPRESSIONS_TABLE, AD_TABLE)  # read from the lake by Spark


def lake_before_increment(cfg: EtlConfig) -> FeatureSpec:
    """The lake's feature spec, or InputError when an incremental run cannot extend it."""
    if cfg.source == "ali_ccp":
        raise InputError("--incremental: the ali_ccp source has no days to add; run a full ETL")
    if cfg.min_count > 1:
        raise InputError(
            f"--incremental needs --min-count 1 (got {cfg.min_count}): the vocab table keeps "
            "no counts below it"
        )
    try:
        spec = FeatureSpec.load(cfg.output)
    except FileNotFoundError:
        raise InputError(
            f"--incremental: no lake at {cfg.output} (no feature spec): run a full ETL first"
        ) from None
    if spec.last_day is None or spec.vocab_version is None or not spec.options:
        raise InputError(
            f"--incremental: the feature spec of {cfg.output} predates incremental runs "
            "(no last_day, vocab_version or options): run a full ETL first"
        )
    for name, value in cfg.table_options().items():
        if spec.options.get(name) != value:
            raise InputError(
                f"--incremental: --{name.replace('_', '-')} {value!r} differs from the lake's "
                f"{spec.options.get(name)!r}: use the lake's options or run a full ETL"
            )
    return spec


def run_increment(
    spark: SparkSession,
    data: SourceData,
    cfg: EtlConfig,
    write,
    summary: EtlSummary,
    previous: FeatureSpec,
) -> FeatureSpec | None:
    """Add the input's new days to the lake (module docstring); None when it has none."""
    if data.impressions is None:
        raise InputError(f"{cfg.source}: the input holds no impressions to build samples from")
    tz, gap = cfg.tz_offset_hours, cfg.gap_seconds
    new_start = day_start(next_day(previous.last_day), tz)
    behaviors = data.behaviors
    if behaviors is None:
        behaviors = spark.createDataFrame([], BEHAVIORS)
    behaviors = behaviors.where(F.col("ts") >= new_start)
    impressions = keyed_impressions(data.impressions, tz).where(F.col("ts") >= new_start)
    new_days, new_imp_days, n_new_imps = _new_days(behaviors, impressions, tz)
    summary.days = new_days
    if not new_days:
        summary.stats["new_days"] = 0.0
        log.info("no day after %s in the input: nothing to do", previous.last_day)
        return None
    old_days = sorted(d for days in previous.splits.values() for d in days)
    splits = assign_splits(old_days + new_imp_days, cfg.test_days, cfg.valid_days, cfg.test_start)
    # The recorded versions' files, read without a Delta scan (etl/lake.py read_files).
    states = {n: recorded_state(cfg.output, n, previous) for n in (*CONTEXT, VOCAB)}
    lake = {n: read_files(spark, cfg.output, n, states[n]) for n in CONTEXT}
    old_vocab = read_pandas(cfg.output, VOCAB, states[VOCAB])

    # Sessions the new behaviors may continue, sessionized again with them.
    reaching = lake[SESSIONS].where(F.col("end_ts") >= new_start - gap)
    keys = reaching.select("user_id", "session_id")
    continued = lake[EVENTS_TABLE].join(keys, ["user_id", "session_id"], "left_semi")
    combined = sessionize(
        continued.select(*BEHAVIORS.fieldNames()).unionByName(behaviors), gap, tz
    ).persist()
    new_events = combined.where(F.col("ts") >= new_start)
    changed_sessions = summarize_sessions(combined, tz)
    kept = lake[SESSIONS].join(keys, ["user_id", "session_id"], "left_anti")
    all_sessions = kept.unionByName(changed_sessions)
    continued_start, heavy = _session_counts(reaching, all_sessions, cfg.max_user_behaviors)

    first_new = new_days[0]
    d0 = _first_affected(previous, splits, old_days, new_start, continued_start, cfg)
    s0 = local_day(continued_start, tz) if continued_start is not None else first_new
    log.info("incremental: new days %s, impressions from %s, sessions from %s", new_days, d0, s0)

    fresh = ads_table(data.ads)
    ads = fresh.unionByName(lake[AD_TABLE].join(fresh.select("ad_id"), "ad_id", "left_anti"))
    affected = lake[IMPRESSIONS_TABLE].where(F.col("day") >= F.lit(d0).cast("date"))
    imps = affected.select(*RAW_IMPRESSION_COLUMNS).unionByName(
        impressions.select(*RAW_IMPRESSION_COLUMNS)
    )
    enriched = enrich(imps, splits, ads, data.users)
    vocab, grew = _extended_vocab(
        lake, old_vocab, enriched, previous, splits, new_start, new_events, tz
    )
    fields = _fields(vocab, previous, combined)  # the last refusal: nothing written before it

    for name in REPLACED:  # the commits of a run that died before its spec
        if restore_to(spark, cfg.output, name, previous.tables[name]):
            log.warning("restored %s to its recorded version %d", name, previous.tables[name])
    # The tables the pass does not read are written on pool threads while this thread runs
    # the pass and writes impressions and samples (the run's wall time: mostly per-write latency).
    with concurrent_writes() as submit:
        written = submit(write, new_events, EVENTS_TABLE, ["day"], f"day > '{previous.last_day}'")
        session_rows = all_sessions.where(F.col("day") >= F.lit(s0).cast("date"))
        submit(write, session_rows, SESSIONS, ["day"], _from(s0))
        submit(write, ads, AD_TABLE, None)
        submit(write, spark.createDataFrame(vocab, VOCAB_SCHEMA), VOCAB, None)
        for name, df in data.bronze.items():
            submit(write, df, name, None)
        submit(write, data.quarantine, QUARANTINE, None)
        written.result()  # the pass's bucket count needs the events' row count
        events = _pass_events(lake, imps, new_events, d0, cfg)
        kept_imps = states[IMPRESSIONS_TABLE].rows("day", d0)  # the log's stats: no count job
        n_imps = enriched.count() if kept_imps is None else kept_imps + n_new_imps
        n_rows = summary.rows[EVENTS_TABLE] + n_imps  # enrich keeps one row per impression
        passed, encoding = encoded_pass(
            spark,
            cap_user_events(events, heavy, cfg.max_user_behaviors),
            enriched,
            vocab,
            cfg,
            data.conversion_match,
            n_rows,
        )
        summary.stats.update(label_stats(passed))
        write(passed.select(*IMPRESSIONS.fieldNames()), IMPRESSIONS_TABLE, ["day"], _from(d0))
        samples = sample_rows(passed, fields)
        n = int(summary.stats["impressions"])
        write_samples(samples, cfg, write, n, replace_where=_from(d0))
    summary.stats["sessions_written"] = float(summary.rows[SESSIONS])
    summary.stats["capped_users"] = float(len(heavy))
    for df in (enriched, passed, combined):
        df.unpersist()
    encoding.vocabularies.unpersist()
    summary.stats["new_days"] = float(len(new_days))
    return FeatureSpec(
        source=cfg.source,
        max_len=cfg.max_len,
        fields=fields,
        labels=previous.labels,
        length_field=previous.length_field,
        key_fields=previous.key_fields,
        splits=splits.as_dict(),
        gap_seconds=gap,
        tz_offset_hours=tz,
        last_day=max(new_days[-1], previous.last_day),
        vocab_version=previous.vocab_version + int(grew),
        vocabulary_sizes=vocab_sizes(vocab),
        options=cfg.table_options(),
    )


def _session_counts(
    reaching: DataFrame, sessions: DataFrame, max_user_behaviors: int
) -> tuple[int | None, list[int]]:
    """(the first start of the sessions the new behaviors may continue, None when none; the
    heavy users of ``sessions``, etl/heavy_users.py), from one Spark job."""
    parts = [reaching.agg(F.lit("start").alias("kind"), F.min("start_ts").alias("value"))]
    if max_user_behaviors > 0:
        users = heavy_sessions_users(sessions, max_user_behaviors)
        parts.append(users.select(F.lit("user").alias("kind"), F.col("user_id").alias("value")))
    rows = union_all(parts).collect()
    start = next(r["value"] for r in rows if r["kind"] == "start")
    return start, sorted(int(r["value"]) for r in rows if r["kind"] == "user")


def _from(day: str) -> str:
    return f"day >= '{day}'"


def _new_days(
    behaviors: DataFrame, impressions: DataFrame, tz: int
) -> tuple[list[str], list[str], int]:
    """(every new day, the new days with impressions, ISO; the new impressions' count), from
    one Spark job."""
    days = (
        behaviors.select(F.to_date(F.from_unixtime(F.col("ts") + tz * 3600)).alias("day"))
        .withColumn("imp", F.lit(False))
        .unionByName(impressions.select("day").withColumn("imp", F.lit(True)))
        .groupBy("day", "imp")
        .count()
        .collect()
    )
    every = sorted({r["day"].isoformat() for r in days})
    imps = [r for r in days if r["imp"]]
    return every, sorted({r["day"].isoformat() for r in imps}), sum(r["count"] for r in imps)


def _first_affected(
    previous: FeatureSpec,
    splits: Splits,
    old_days: list[str],
    new_start: int,
    continued_start: int | None,
    cfg: EtlConfig,
) -> str:
    """D0: the first day whose impressions and samples this run rewrites."""
    tz, gap = cfg.tz_offset_hours, cfg.gap_seconds
    reach = [new_start - max(cfg.attribution_seconds, gap)]
    if continued_start is not None:
        reach.append(continued_start - gap)
    old_train, new_train = set(previous.splits.get("train", [])), set(splits.train)
    moved = [d for d in old_days if d not in old_train or d not in new_train]
    return min([local_day(min(reach), tz), *moved, local_day(new_start, tz)])


def _extended_vocab(
    lake: dict[str, DataFrame],
    old: pd.DataFrame,
    enriched: DataFrame,
    previous: FeatureSpec,
    splits: Splits,
    new_start: int,
    new_events: DataFrame,
    tz: int,
) -> tuple[pd.DataFrame, bool]:
    """(the lake's vocab extended with the train period's new occurrences, whether it gained
    ids): the impressions of the days that became train (all from D0 on, in ``enriched``) and
    the behaviors between the old and the new end of the train period."""
    gained = sorted(set(splits.train) - set(previous.splits.get("train", [])))
    cut = min(Splits(**previous.splits).train_end_ts(tz), new_start)
    events = (
        lake[EVENTS_TABLE]
        .where(F.col("ts") >= cut)
        .select(*EVENTS.fieldNames())
        .unionByName(new_events.select(*EVENTS.fieldNames()))
        .where(F.col("ts") < splits.train_end_ts(tz))
    )
    gained_imps = enriched.where(F.date_format("day", "yyyy-MM-dd").isin(gained))
    counted = build_vocabularies(gained_imps, events, 1).select("vocab", "raw", "count")
    vocab = extend_vocab(old, counted.toPandas())
    return vocab, len(vocab) > len(old)


def _fields(vocab, previous: FeatureSpec, combined: DataFrame):
    """The spec's fields for the extended vocab; InputError when they would change."""
    names = {f.name for f in previous.fields}
    have = {src: hist in names for hist, src in SEQUENCE_SOURCE.items()}
    if not all(have.values()):
        columns = [c for c, known in have.items() if not known]
        counts = combined.agg(*[F.count(c).alias(c) for c in columns]).collect()[0]
        have |= {c: counts[c] > 0 for c in columns}
    fields = feature_fields(vocab_sizes(vocab), have)
    fields += cross_fields(fields)
    if [f.name for f in fields] != [f.name for f in previous.fields]:
        raise InputError(
            "--incremental: the new days change the samples' fields "
            f"({sorted({f.name for f in fields} ^ names)}): run a full ETL"
        )
    return fields


def _pass_events(lake, imps: DataFrame, new_events: DataFrame, d0: str, cfg: EtlConfig):
    """The events the pass needs for the impressions from D0 on (module docstring)."""
    start = F.lit(d0).cast("date")
    d0_start = day_start(d0, cfg.tz_offset_hours)
    events = lake[EVENTS_TABLE].select(*EVENTS.fieldNames())
    users = imps.select("user_id").distinct()
    reaching = (
        lake[SESSIONS]
        .where((F.col("end_ts") >= d0_start - cfg.gap_seconds) & (F.col("day") < start))
        .select("user_id", "session_id", F.lit(True).alias("_reach"))
    )
    reverse = [F.col("ts").desc(), F.col("_rank_btag").desc()]
    reverse += [F.col(c).desc_nulls_last() for c in ("item_id", "cate_id", "brand_id")]
    prior = (
        events.where(F.col("day") < start)
        .join(users, "user_id", "left_semi")
        .withColumn("_rank_btag", btag_rank(F.col("btag")))
        .withColumn("_rank", F.row_number().over(Window.partitionBy("user_id").orderBy(*reverse)))
        .join(reaching, ["user_id", "session_id"], "left")
        .where((F.col("_rank") <= cfg.max_len) | F.col("_reach").isNotNull())
        .select(*EVENTS.fieldNames())
    )
    recent = events.where(F.col("day") >= start)
    return prior.unionByName(recent).unionByName(new_events.select(*EVENTS.fieldNames()))


def next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def day_start(day: str, tz: int) -> int:
    """Unix seconds where ``day`` (ISO, UTC+tz) starts."""
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return int(start.timestamp()) - tz * 3600


def local_day(ts: int, tz: int) -> str:
    """The UTC+tz day (ISO) of unix seconds ``ts``."""
    return (dt.datetime.fromtimestamp(ts, dt.UTC) + dt.timedelta(hours=tz)).date().isoformat()
