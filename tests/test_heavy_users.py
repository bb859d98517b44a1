"""Heavy users: the per-user pass gets at most ``max_user_behaviors`` behaviors of one user."""

from __future__ import annotations

from pyspark.sql import functions as F

from etl.heavy_users import cap_user_events, heavy_users
from etl.impressions import PassConfig, label_and_history
from etl.schemas import EVENTS
from etl.sessionize import summarize_sessions

HEAVY, LIGHT = 7, 8
N_HEAVY = 1_000_000  # a generated crawler-like user
CAP = 1_000


def _events(spark):
    """User 7: 1 M pv behaviors one second apart (one long session); user 8: 5 behaviors."""
    rows = spark.range(N_HEAVY + 5).select(
        F.when(F.col("id") < N_HEAVY, HEAVY).otherwise(LIGHT).cast("long").alias("user_id"),
        (F.lit(1_494_000_000) + F.col("id")).alias("ts"),
    )
    cols = {
        "item_id": F.lit(None).cast("long"),
        "cate_id": (F.col("ts") % 50).cast("long"),
        "brand_id": F.lit(None).cast("long"),
        "btag": F.lit("pv"),
        "session_id": F.col("user_id"),
        "pos": F.lit(0),
        "day": F.to_date(F.from_unixtime(F.col("ts"))),
    }
    return rows.select(*[(cols.get(f.name, F.col(f.name))).alias(f.name) for f in EVENTS.fields])


def test_a_user_of_one_million_behaviors_is_capped_before_the_pass(spark):
    events = _events(spark)
    heavy = heavy_users(summarize_sessions(events, 8), CAP)
    assert heavy == [HEAVY]
    capped = cap_user_events(events, heavy, CAP)
    per_user = {
        r["user_id"]: (r["n"], r["first"])
        for r in capped.groupBy("user_id")
        .agg(F.count("*").alias("n"), F.min("ts").alias("first"))
        .collect()
    }
    # the heavy user keeps exactly its most recent CAP behaviors, the light one all of them
    assert per_user[HEAVY] == (CAP, 1_494_000_000 + N_HEAVY - CAP)
    assert per_user[LIGHT] == (5, 1_494_000_000 + N_HEAVY)
    # the pass then holds at most CAP behaviors of the heavy user: its history is the latest
    last_ts = 1_494_000_000 + N_HEAVY - 1
    imps = spark.createDataFrame(
        [(HEAVY, 1, last_ts + 1, 99, 3, None, 1.0, 0)],
        "user_id long, impression_id long, ts long, ad_id long, cate_id long, brand_id long, "
        "price double, click int",
    )
    cfg = PassConfig(1800, 86400, 4, "cate_brand", n_buckets=2)
    encoded = capped.select("*", *[F.lit(2).alias(c) for c in ("e_item", "e_cate", "e_brand")])
    row = label_and_history(encoded, imps, cfg).collect()[0]
    assert row["hist_len"] == 4 and row["session_events"] == CAP  # the capped session
    assert heavy_users(summarize_sessions(events, 8), 0) == []  # 0: no cap


def test_no_heavy_user_leaves_the_events_unchanged(spark):
    events = _events(spark).where(F.col("user_id") == LIGHT)
    assert cap_user_events(events, heavy_users(summarize_sessions(events, 8), CAP), CAP) is events
