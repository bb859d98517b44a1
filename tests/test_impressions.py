"""The per-user pass: labels, session attachment and leakage-free histories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_impressions import ORACLE_COLUMNS, ORACLE_EVENT_COLUMNS, reference_user_pass

import etl.impressions as pass_module
from etl.cross import with_cross_features
from etl.features import cross_features, cross_names
from etl.impressions import (
    EVENT_INPUT_COLUMNS,
    IMPRESSION_INPUT_COLUMNS,
    PASS_OUTPUT,
    PassConfig,
    label_and_history,
    user_pass,
)

GAP = 1800
CFG = PassConfig(
    gap_seconds=GAP, attribution_seconds=24 * 3600, max_len=4, conversion_match="cate_brand"
)
FEATURES = [
    "hist_len",
    "hist_item",
    "hist_cate",
    "hist_brand",
    "hist_btag",
    "hist_gap",
    "session_events",
    "session_seconds",
]
BTAG_RANK = {"pv": 0, "cart": 1, "fav": 2, "buy": 3}


def events(rows) -> pd.DataFrame:
    """rows: (ts, btag, cate, brand, session)."""
    df = pd.DataFrame(rows, columns=["ts", "btag", "cate_id", "brand_id", "session_id"])
    df["user_id"] = 1
    df["item_id"] = pd.array([None] * len(df), dtype="Int64")
    df["btag_rank"] = df["btag"].map(BTAG_RANK)
    df["e_item"] = 0
    df["e_cate"] = df["cate_id"] + 100  # stand-in ids, distinguishable from raw values
    df["e_brand"] = df["brand_id"].fillna(0).astype(int) + 200
    df["e_btag"] = df["btag_rank"] + 2
    return df[[*EVENT_INPUT_COLUMNS, *ORACLE_EVENT_COLUMNS]]


def impressions(rows) -> pd.DataFrame:
    """rows: (impression_id, ts, cate, brand, click)."""
    df = pd.DataFrame(rows, columns=["impression_id", "ts", "cate_id", "brand_id", "click"])
    df["user_id"] = 1
    df["ad_id"] = 99
    df["price"] = 12.5
    return df[list(IMPRESSION_INPUT_COLUMNS)]


BASE_EVENTS = [
    (1000, "pv", 10, 5, 1),
    (1500, "cart", 10, 5, 1),
    (2000, "pv", 20, 5, 1),  # same second as the impression: not history, not a further view
    (2500, "pv", 30, 6, 1),
    (5000, "buy", 10, 5, 2),
]


def test_history_labels_and_session_on_crafted_case():
    out = user_pass(events(BASE_EVENTS), impressions([(7, 2000, 10, 5, 1)]), CFG).iloc[0]
    assert out["hist_len"] == 2
    assert list(out["hist_cate"]) == [110, 110, 0, 0]  # chronological, right-padded
    assert list(out["hist_btag"]) == [2, 3, 0, 0]
    assert out["session_id"] == 1
    assert out["session_events"] == 2 and out["session_seconds"] == 1000
    assert out["n_future_views"] == 1  # only the pv at 2500
    assert out["conversion"] == 1  # buy of cate 10 / brand 5 3000 s after the click


def test_no_feature_uses_anything_at_or_after_the_impression_time():
    imp = impressions([(7, 2000, 10, 5, 1)])
    before = user_pass(events(BASE_EVENTS), imp, CFG)
    # Rewrite everything at or after the impression: other categories, extra behaviors.
    future = [(ts, "fav", 77, 8, 1) for ts, *_ in BASE_EVENTS if ts >= 2000]
    future += [(2000, "buy", 55, 1, 1), (2100, "pv", 56, 1, 1)]
    past = [row for row in BASE_EVENTS if row[0] < 2000]
    after = user_pass(events(past + future), imp, CFG)
    for col in FEATURES:
        assert np.array_equal(np.stack([before[col].iloc[0]]), np.stack([after[col].iloc[0]])), col
    # ... while the labels, which are about the future, do change.
    assert (before["n_future_views"].iloc[0], before["conversion"].iloc[0]) != (
        after["n_future_views"].iloc[0],
        after["conversion"].iloc[0],
    )


def candidate_codes(imp: pd.DataFrame) -> pd.DataFrame:
    """The impressions' cate and brand as the stand-in codes of ``events``."""
    return pd.DataFrame(
        {
            "impression_id": imp["impression_id"],
            "cate": imp["cate_id"] + 100,
            "brand": imp["brand_id"].fillna(0).astype(int) + 200,
        }
    )


CROSS = cross_names({"cate", "brand", "hist_cate", "hist_brand", "hist_btag", "hist_gap"})


def cross_of(out: pd.DataFrame, imp: pd.DataFrame) -> dict[str, list[int]]:
    """The cross features (etl/features.py) of pass rows, by impression order of ``imp``."""
    out = out.set_index("impression_id").loc[imp["impression_id"]]
    hist = {c: np.stack(out[c]) for c in ("hist_cate", "hist_brand", "hist_btag", "hist_gap")}
    cands = candidate_codes(imp)
    got = cross_features(cands, hist, out["hist_len"].to_numpy(), CROSS)
    return {name: got[name].tolist() for name in CROSS}


def spark_cross_of(spark, evs: pd.DataFrame, imp: pd.DataFrame) -> dict[str, list[int]]:
    """The same through the Spark pass and etl/cross.py."""
    passed = label_and_history(spark.createDataFrame(evs), spark.createDataFrame(imp), CFG)
    joined = passed.join(spark.createDataFrame(candidate_codes(imp)), "impression_id")
    got = with_cross_features(joined).toPandas().set_index("impression_id")
    got = got.loc[imp["impression_id"]]
    return {name: got[name].astype(int).tolist() for name in CROSS}


def test_cross_features_use_nothing_at_or_after_the_impression_time(spark):
    imp = impressions([(7, 2000, 10, 5, 1), (8, 1700, 10, 5, 0)])
    past = [row for row in BASE_EVENTS if row[0] < 1600] + [(1550, "pv", 30, 6, 1)]
    # behaviors matching the candidates exactly (deepest step buy) at or after both impressions
    matching = [(t, b, 10, 5, 1) for t in (2000, 2600) for b in ("pv", "buy")]
    base = cross_of(user_pass(events(past), imp, CFG), imp)
    leaky = cross_of(user_pass(events(past + matching), imp, CFG), imp)
    assert leaky == base
    assert spark_cross_of(spark, events(past + matching), imp) == base
    # one second before the impressions the same behaviors are history: the features change
    earlier = [(1599, *row[1:]) for row in matching]
    seen = cross_of(user_pass(events(past + earlier), imp, CFG), imp)
    assert all(seen[name] != base[name] for name in CROSS), (seen, base)
    assert spark_cross_of(spark, events(past + earlier), imp) == seen


def test_history_keeps_last_max_len_behaviors_and_gap_buckets():
    rows = [(100 * i, "pv", i, 1, 1) for i in range(1, 8)]  # 7 behaviors, max_len 4
    out = user_pass(events(rows), impressions([(1, 750, 3, 1, 0)]), CFG).iloc[0]
    assert out["hist_len"] == 4
    assert list(out["hist_cate"]) == [104, 105, 106, 107]
    gaps = list(out["hist_gap"])
    assert gaps == sorted(gaps, reverse=True) and min(gaps) >= 2  # older -> larger bucket


def test_conversion_rules():
    evs = events(
        [(1000, "pv", 10, None, 1), (1000 + 25 * 3600, "buy", 10, 5, 2), (1100, "buy", 11, 5, 1)]
    )
    imps = impressions(
        [
            (1, 1000, 10, 5, 1),  # buy of cate 10 only 25 h later: outside the window
            (2, 1000, 11, 5, 0),  # matching buy but no click: never a conversion
            (3, 1000, 11, None, 1),  # null brand: category match is enough
        ]
    )
    out = user_pass(evs, imps, CFG).set_index("impression_id")["conversion"]
    assert out.to_dict() == {1: 0, 2: 0, 3: 1}


def test_impression_without_behaviors_and_far_from_sessions():
    out = user_pass(events([(0, "pv", 1, 1, 1)]), impressions([(1, 10_000, 1, 1, 0)]), CFG).iloc[0]
    assert pd.isna(out["session_id"]) and out["n_future_views"] == 0
    assert out["hist_len"] == 1
    empty = user_pass(events([]), impressions([(2, 5, 1, 1, 1)]), CFG).iloc[0]
    assert empty["hist_len"] == 0 and list(empty["hist_cate"]) == [0, 0, 0, 0]


def test_next_session_attachment_counts_its_views():
    evs = events([(5000, "pv", 1, 1, 9), (5100, "pv", 1, 1, 9)])
    out = user_pass(evs, impressions([(1, 4000, 1, 1, 0)]), CFG).iloc[0]
    assert out["session_id"] == 9 and out["n_future_views"] == 2 and out["session_events"] == 0


@pytest.mark.parametrize("shuffle_seed", [0, 1])
def test_spark_pass_matches_pandas(spark, shuffle_seed):
    evs = events(BASE_EVENTS).sample(frac=1.0, random_state=shuffle_seed)
    imps = impressions([(7, 2000, 10, 5, 1), (8, 1200, 20, 6, 0)])
    expected = user_pass(evs, imps, CFG).set_index("impression_id")
    got = label_and_history(spark.createDataFrame(evs), spark.createDataFrame(imps), CFG).toPandas()
    got = got.set_index("impression_id").loc[expected.index]
    for col in FEATURES + ["n_future_views", "conversion"]:
        assert [list(np.atleast_1d(v)) for v in got[col]] == [
            list(np.atleast_1d(v)) for v in expected[col]
        ], col


def test_user_with_behaviors_only_yields_no_rows_in_spark(spark):
    evs = pd.concat([events(BASE_EVENTS), events(BASE_EVENTS).assign(user_id=2)])
    imps = impressions([(7, 2000, 10, 5, 1)])
    got = label_and_history(spark.createDataFrame(evs), spark.createDataFrame(imps), CFG).collect()
    assert [r["impression_id"] for r in got] == [7]


# --- many users per call ------------------------------------------------------------------------
STEP = 300  # coarse times: equal timestamps, gaps of exactly GAP and of exactly the window
WINDOW_CFG = PassConfig(
    gap_seconds=GAP, attribution_seconds=4 * STEP, max_len=4, conversion_match="cate_brand"
)


def random_events(rng, user: int, n: int) -> pd.DataFrame:
    """A sessionized user log; session id = session start time, so ids repeat across users."""
    ts = np.sort(rng.integers(0, 40, n)) * STEP
    new = np.r_[True, np.diff(ts) > GAP]
    btag = rng.choice(list(BTAG_RANK), n, p=[0.5, 0.1, 0.1, 0.3])
    df = pd.DataFrame(
        {
            "user_id": user,
            "ts": ts,
            "btag_rank": [BTAG_RANK[b] for b in btag],
            "item_id": np.where(rng.random(n) < 0.2, np.nan, rng.integers(1, 4, n)),
            "cate_id": rng.integers(1, 4, n),
            "brand_id": np.where(rng.random(n) < 0.2, np.nan, rng.integers(1, 3, n)),
            "btag": btag,
            "session_id": ts[np.maximum.accumulate(np.where(new, np.arange(n), 0))],
        }
    )
    df["e_item"] = df["item_id"].fillna(0).astype(int) + 10
    df["e_cate"] = df["cate_id"] + 100
    df["e_brand"] = df["brand_id"].fillna(0).astype(int) + 200
    df["e_btag"] = df["btag_rank"] + 2
    return df[[*EVENT_INPUT_COLUMNS, *ORACLE_EVENT_COLUMNS]]


def random_impressions(rng, user: int, n: int, first_id: int) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": user,
            "impression_id": np.arange(first_id, first_id + n),
            "ts": rng.integers(0, 40, n) * STEP + rng.choice([0, 0, STEP // 2], n),
            "ad_id": rng.integers(1, 4, n),
            "cate_id": rng.integers(1, 4, n),
            "brand_id": np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 3, n)),
            "price": np.where(rng.random(n) < 0.2, np.nan, rng.gamma(2.0, 50.0, n).round(2)),
            "click": rng.integers(0, 2, n),
        }
    )
    return df[list(IMPRESSION_INPUT_COLUMNS)]


def random_world(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users with behaviors only, impressions only, or both, on overlapping (interleaved)
    times; two users whose sessions share an id and sit next to each other in user order."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(3, 1000), 14, replace=False)
    evs, imps = [], []
    for k, user in enumerate(users):
        if k % 5 != 1:
            evs.append(random_events(rng, user, int(rng.integers(1, 40))))
        if k % 5 != 0:
            imps.append(random_impressions(rng, user, int(rng.integers(1, 15)), 100 * k))
    twins = events([(0, "pv", 1, 1, 0), (STEP, "pv", 1, 1, 0)]).astype({"item_id": float})
    evs += [twins, twins.assign(user_id=2)]
    imps.append(impressions([(9000, STEP // 2, 1, 1, 0)]))
    ev = pd.concat(evs).sample(frac=1.0, random_state=seed)  # arrival order is arbitrary
    return ev.reset_index(drop=True), pd.concat(imps).reset_index(drop=True)


def by_impression(frame: pd.DataFrame) -> dict[int, tuple]:
    """impression_id -> row, arrays as lists and a missing session as None."""
    cols = sorted(c for c in frame.columns if c != "impression_id")
    return {
        int(row["impression_id"]): tuple(
            None if np.ndim(row[c]) == 0 and pd.isna(row[c]) else np.atleast_1d(row[c]).tolist()
            for c in cols
        )
        for _, row in frame.iterrows()
    }


def per_user(pass_fn, ev: pd.DataFrame, imp: pd.DataFrame, cfg: PassConfig) -> pd.DataFrame:
    return pd.concat(
        [
            pass_fn(ev[ev["user_id"] == u], imp[imp["user_id"] == u], cfg)
            for u in imp["user_id"].unique()
        ]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("match", ["cate_brand", "item"])
def test_many_users_at_once_equal_each_user_alone(seed, match):
    cfg = PassConfig(WINDOW_CFG.gap_seconds, WINDOW_CFG.attribution_seconds, 4, match)
    ev, imp = random_world(seed)
    passed = user_pass(ev, imp, cfg)
    together = by_impression(passed)
    assert len(together) == len(imp)
    assert together == by_impression(per_user(user_pass, ev, imp, cfg))
    oracle = by_impression(per_user(reference_user_pass, ev, imp, cfg))
    assert by_impression(passed[ORACLE_COLUMNS]) == oracle
    assert sum(row[0][0] for row in together.values()) > 0  # converted (first sorted column)


def test_sessions_sharing_an_id_across_users_stay_apart():
    ev, imp = random_world(0)
    out = user_pass(ev, imp, WINDOW_CFG).set_index("impression_id").loc[9000]
    assert out["session_id"] == 0 and out["n_future_views"] == 1  # not the twin user's views


def test_chunked_conversions_and_histories_give_the_same_rows(monkeypatch):
    ev, imp = random_world(4)
    expected = by_impression(user_pass(ev, imp, WINDOW_CFG))
    monkeypatch.setattr(pass_module, "PAIRS_PER_CHUNK", 3)
    monkeypatch.setattr(pass_module, "HISTORY_ROWS_PER_CHUNK", 5)
    assert by_impression(user_pass(ev, imp, WINDOW_CFG)) == expected


def test_behaviors_only_bucket_yields_no_rows():
    ev, imp = random_world(0)
    assert user_pass(ev, imp.iloc[:0], WINDOW_CFG).empty


def test_spark_buckets_match_pandas(spark):
    ev, imp = random_world(3)
    cfg = PassConfig(GAP, WINDOW_CFG.attribution_seconds, 4, "cate_brand", n_buckets=3)
    got = label_and_history(spark.createDataFrame(ev), spark.createDataFrame(imp), cfg)
    assert got.schema == PASS_OUTPUT
    assert by_impression(got.toPandas()) == by_impression(user_pass(ev, imp, cfg))
