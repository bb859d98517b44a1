"""Sessionization edge cases on real local Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl.features import BTAGS, session_starts
from etl.schemas import BEHAVIORS
from etl.sessionize import sessionize, summarize_sessions

GAP = 30 * 60


def _sessions(spark, rows):
    events = sessionize(spark.createDataFrame(rows, BEHAVIORS), GAP, 8)
    return events, [tuple(r) for r in events.orderBy("user_id", "ts", "pos").collect()]


def test_exact_gap_stays_in_session_and_one_second_more_splits(spark):
    rows = [
        (1, 1_000, None, 5, None, "pv"),
        (1, 1_000 + GAP, None, 5, None, "pv"),  # exactly 30 min later: same session
        (1, 1_000 + 2 * GAP + 1, None, 5, None, "pv"),  # 30 min + 1 s later: new session
    ]
    events, _ = _sessions(spark, rows)
    ids = [r["session_id"] for r in events.orderBy("ts").collect()]
    assert ids[0] == ids[1] != ids[2]
    assert [r["pos"] for r in events.orderBy("ts").collect()] == [0, 1, 0]


def test_out_of_order_input_and_same_timestamp_are_deterministic(spark):
    ordered = [
        (7, 100, 1, 2, 3, "pv"),
        (7, 100, 1, 2, 3, "buy"),
        (7, 200, 4, 2, 3, "cart"),
        (8, 100, 9, 9, None, "pv"),
    ]
    shuffled = [ordered[2], ordered[3], ordered[1], ordered[0]]
    first, _ = _sessions(spark, ordered)
    second, _ = _sessions(spark, shuffled)
    cols = ["user_id", "ts", "btag", "session_id", "pos"]
    a = [tuple(r) for r in first.select(*cols).orderBy("user_id", "pos").collect()]
    b = [tuple(r) for r in second.select(*cols).orderBy("user_id", "pos").collect()]
    assert a == b
    # same timestamp: the funnel order pv before buy
    user7 = [r for r in a if r[0] == 7]
    assert [r[2] for r in user7] == ["pv", "buy", "cart"]
    assert len({r[3] for r in user7}) == 1


def test_sessions_table_counts(spark):
    rows = [
        (1, 0, None, 1, None, "pv"),
        (1, 60, None, 1, None, "buy"),
        (2, 0, None, 1, None, "fav"),
    ]
    events, _ = _sessions(spark, rows)
    sessions = {r["user_id"]: r for r in summarize_sessions(events, 8).collect()}
    assert sessions[1]["n_events"] == 2 and sessions[1]["n_pv"] == 1 and sessions[1]["n_buy"] == 1
    assert sessions[1]["end_ts"] - sessions[1]["start_ts"] == 60
    assert sessions[2]["n_fav"] == 1


def test_day_is_utc_plus_8(spark):
    # 2017-05-05 16:00:00 UTC is 2017-05-06 00:00:00 in UTC+8
    events, _ = _sessions(spark, [(1, 1_494_000_000, None, 1, None, "pv")])
    assert events.collect()[0]["day"].isoformat() == "2017-05-06"


def test_spark_sessions_equal_the_numpy_gap_rule(spark):
    """etl.features.session_starts (the per-user pass and online serving) draws the session
    boundaries of the Spark windows, exact-gap ties and same-second behaviors included."""
    rng = np.random.default_rng(5)
    n = 3000
    rows = pd.DataFrame(
        {
            "user_id": rng.integers(1, 40, n),
            # coarse times: many gaps of exactly GAP, many same-second behaviors
            "ts": rng.integers(0, 400, n) * (GAP // 6),
            "item_id": None,
            "cate_id": rng.integers(1, 5, n),
            "brand_id": None,
            "btag": rng.choice(list(BTAGS), n),
        }
    )
    rows.loc[rng.random(n) < 0.1, "ts"] += 1  # and gaps of exactly GAP + 1
    events = sessionize(spark.createDataFrame(rows, BEHAVIORS), GAP, 8).toPandas()
    events = events.sort_values(["user_id", "ts", "pos"], kind="stable")
    starts = session_starts(events["user_id"].to_numpy(), events["ts"].to_numpy(), GAP)
    spark_starts = np.r_[
        True,
        (np.diff(events["user_id"].to_numpy()) != 0)
        | (events["session_id"].to_numpy()[1:] != events["session_id"].to_numpy()[:-1]),
    ]
    assert np.array_equal(starts, spark_starts)
    assert np.array_equal(starts, events["pos"].to_numpy() == 0)
    assert 50 < starts.sum() < n / 2
