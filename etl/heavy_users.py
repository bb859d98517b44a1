"""Heavy users: a cap on the behaviors one user brings into the per-user pass.

The pass (etl/impressions.py) receives all rows of a user bucket in one pandas call, so one
crawler-like user of the public behavior log (tens of thousands of behaviors, millions in a
generated stress case) would be held in memory whole. Users with more than
``max_user_behaviors`` events (a full run counts the input's behaviors in the job that finds
its days; an incremental run sums the ``sessions`` table's counts) keep only their most recent
``max_user_behaviors`` behaviors in the pass: their histories, session features and
conversions are computed from those. The events and sessions tables keep every row; the
run's summary reports how many users were capped. A run without heavy users is
unchanged (no extra shuffle: the cap filter is then not built).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from etl.sessionize import btag_rank


def heavy_users(sessions: DataFrame, max_user_behaviors: int) -> list[int]:
    """User ids with more than ``max_user_behaviors`` events (0: no cap, no Spark job)."""
    if max_user_behaviors <= 0:
        return []
    rows = heavy_sessions_users(sessions, max_user_behaviors).collect()
    return sorted(int(r["user_id"]) for r in rows)


def heavy_sessions_users(sessions: DataFrame, max_user_behaviors: int) -> DataFrame:
    """heavy_users as a lazy (user_id) DataFrame, for a caller collecting it with others."""
    totals = sessions.groupBy("user_id").agg(F.sum("n_events").alias("n"))
    return totals.where(F.col("n") > max_user_behaviors).select("user_id")


def users_above(rows: DataFrame, max_user_behaviors: int) -> DataFrame:
    """(user_id, count) of the users with more than ``max_user_behaviors`` rows in ``rows``
    (behaviors or events; lazy, for a caller that collects it with other aggregates)."""
    return rows.groupBy("user_id").count().where(F.col("count") > max_user_behaviors)


def cap_user_events(events: DataFrame, heavy: list[int], max_user_behaviors: int) -> DataFrame:
    """``events`` with each heavy user's behaviors cut to its most recent
    ``max_user_behaviors`` (in the ETL's event order); other users' rows untouched."""
    if not heavy:
        return events
    is_heavy = F.col("user_id").isin(heavy)
    # the reverse of etl.sessionize.event_order (ts, btag rank, ids with nulls first)
    reverse = [F.col("ts").desc(), btag_rank(F.col("btag")).desc()]
    reverse += [F.col(c).desc_nulls_last() for c in ("item_id", "cate_id", "brand_id")]
    latest_first = Window.partitionBy("user_id").orderBy(*reverse)
    kept = (
        events.where(is_heavy)
        .withColumn("_rank", F.row_number().over(latest_first))
        .where(F.col("_rank") <= max_user_behaviors)
        .drop("_rank")
    )
    return events.where(~is_heavy).unionByName(kept)
