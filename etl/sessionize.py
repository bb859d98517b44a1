"""Sessionization: a new session starts when a user's consecutive behaviors are more than
``gap_seconds`` apart (DSIN rule). Exactly ``gap_seconds`` apart stays in the same session.

These are the Spark window forms of ``etl.features.session_starts`` and ``btag_rank``, which
the per-user pass and online serving use; tests/test_sessionize.py checks that both draw the
same session boundaries.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from etl.features import BTAGS
from etl.schemas import EVENTS


def btag_rank(btag: Column) -> Column:
    """Deterministic order of behaviors sharing a timestamp: the funnel pv, cart, fav, buy."""
    rank = F.lit(len(BTAGS))
    for i, tag in reversed(list(enumerate(BTAGS))):
        rank = F.when(btag == tag, i).otherwise(rank)
    return rank


def local_day(ts: Column, tz_offset_hours: int) -> Column:
    """Calendar day of unix seconds ``ts`` in UTC+offset (the session time zone is UTC)."""
    return F.to_date(F.from_unixtime(ts + F.lit(tz_offset_hours * 3600)))


def event_order() -> list[Column]:
    return [
        F.col("ts"),
        btag_rank(F.col("btag")),
        F.col("item_id").asc_nulls_first(),
        F.col("cate_id").asc_nulls_first(),
        F.col("brand_id").asc_nulls_first(),
    ]


def sessionize(behaviors: DataFrame, gap_seconds: int, tz_offset_hours: int) -> DataFrame:
    """BEHAVIORS -> EVENTS: adds session_id, pos (0-based within the session) and day."""
    by_user = Window.partitionBy("user_id").orderBy(*event_order())
    prev_ts = F.lag("ts").over(by_user)
    starts = behaviors.withColumn(
        "_new", F.when(prev_ts.isNull() | (F.col("ts") - prev_ts > gap_seconds), 1).otherwise(0)
    ).withColumn("_seq", F.sum("_new").over(by_user.rowsBetween(Window.unboundedPreceding, 0)))
    by_session = Window.partitionBy("user_id", "_seq")
    events = (
        starts.withColumn("_start", F.min("ts").over(by_session))
        # Stable across reruns and input order: a user's session is named by its start time.
        .withColumn("session_id", F.xxhash64("user_id", "_start"))
        .withColumn(
            "pos",
            (F.row_number().over(by_session.orderBy(*event_order())) - 1).cast("int"),
        )
        .withColumn("day", local_day(F.col("ts"), tz_offset_hours))
    )
    return events.select(*[f.name for f in EVENTS.fields])


def summarize_sessions(events: DataFrame, tz_offset_hours: int) -> DataFrame:
    """EVENTS -> SESSIONS (one row per session)."""

    def n(tag: str) -> Column:
        return F.sum(F.when(F.col("btag") == tag, 1).otherwise(0)).cast("long").alias(f"n_{tag}")

    return (
        events.groupBy("user_id", "session_id")
        .agg(
            F.min("ts").alias("start_ts"),
            F.max("ts").alias("end_ts"),
            F.count(F.lit(1)).alias("n_events"),
            *[n(tag) for tag in BTAGS],
        )
        .withColumn("day", local_day(F.col("start_ts"), tz_offset_hours))
    )
