"""Online features (etl/online.py): a raw request gives the ETL's samples rows, bit for bit.

Parity: every test impression of a generated lake and of the real UserBehavior slice is rebuilt
from the raw CSVs (behaviors, profile) and the bundle (vocabularies, ad table) and compared with
the lake's samples rows, field by field. Unit tests: unseen values, nulls, the time window,
event order, bad requests, the bundle files, the import path.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl import features
from etl.cross import cross_fields
from etl.delta_log import files_at
from etl.features import FIRST_ID, UNKNOWN_ID, Vocabulary
from etl.online import FeatureBundle, RankRequest, encode_request, request_rows
from etl.spec import FeatureSpec, FieldSpec
from tests.conftest import PROJECT_ROOT

T = 1_494_100_000  # a request time (2017-05-07 03:46:40 UTC+8, a Sunday)
GAP = 1800


# --- a small hand-made bundle -------------------------------------------------------------------
def small_bundle() -> FeatureBundle:
    sparse = {
        "user": "user",
        "ad": "item",
        "cate": "cate",
        "brand": "brand",
        "slot": "slot",
        "gender": "gender",
        "age_level": "age_level",
    }
    fields = [FieldSpec(n, "sparse", v, 8) for n, v in sparse.items()]
    fields += [
        FieldSpec("hour", "sparse", "hour", 26),
        FieldSpec("weekday", "sparse", "weekday", 9),
    ]
    fields += [FieldSpec(n, "dense") for n in features.DENSE_FIELDS]
    fields += [
        FieldSpec(n, "sequence", v, 8)
        for n, v in (("hist_cate", "cate"), ("hist_brand", "brand"), ("hist_btag", "btag"))
    ]
    fields.append(FieldSpec("hist_gap", "sequence", "gap", features.GAP_VOCAB_SIZE))
    fields += cross_fields(fields)
    spec = FeatureSpec("taobao_ad", 4, fields, gap_seconds=GAP, tz_offset_hours=8)
    rows = [
        ("user", "10", 2),
        ("item", "100", 2),
        ("item", "101", 3),
        ("cate", "5", 2),
        ("cate", "6", 3),
        ("brand", "7", 2),
        ("slot", "430548_1007", 2),
        ("gender", "1", 2),
        ("gender", "2", 3),
        ("age_level", "3", 2),
    ]
    vocab = pd.DataFrame(rows, columns=["vocab", "raw", "id"]).assign(count=5)
    ads = pd.DataFrame(
        {
            "ad_id": [100, 101, 102],
            "cate_id": pd.array([5, 6, 99], dtype="Int64"),
            "campaign_id": pd.array([None] * 3, dtype="Int64"),
            "customer_id": pd.array([None] * 3, dtype="Int64"),
            "brand_id": pd.array([7, None, 7], dtype="Int64"),
            "price": [10.0, np.nan, 3.5],
        }
    )
    return FeatureBundle(spec, vocab, ads)


BUNDLE = small_bundle()
EVENTS = [
    {"time": T - 5000, "btag": "pv", "cate": 5, "brand": 7},
    {"time": T - 1000, "btag": "cart", "cate": 6, "brand": None},
    {"time": T - 100, "btag": "pv", "cate": 5, "brand": 7},
]


def rows(**kwargs) -> pd.DataFrame:
    base = {"user_id": 10, "time": T, "candidates": [100, 101], "pid": "430548_1007"}
    return request_rows(BUNDLE, RankRequest(**{**base, "events": EVENTS, **kwargs}))


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return by_field(a) == by_field(b)


def by_field(frame: pd.DataFrame) -> dict[str, list]:
    return {c: [np.asarray(v).tolist() for v in frame[c]] for c in frame.columns}


def test_request_rows_on_a_crafted_request():
    out = rows(profile={"final_gender_code": 2, "age_level": "3"})
    assert out["user"].tolist() == [2, 2] and out["ad"].tolist() == [2, 3]
    assert out["cate"].tolist() == [2, 3] and out["brand"].tolist() == [2, 0]
    assert out["slot"].tolist() == [2, 2]
    assert out["gender"].tolist() == [3, 3] and out["age_level"].tolist() == [2, 2]
    assert out["hour"].tolist() == [3 + FIRST_ID] * 2 and out["weekday"].tolist() == [FIRST_ID] * 2
    assert out["price_log"].dtype == np.float32 and out["price_log"][0] == np.float32(np.log1p(10))
    assert out["price_log"][1] == 0.0  # null price
    assert out["hist_len"].tolist() == [3, 3]
    assert list(out["hist_cate"][0]) == [2, 3, 2, 0]  # chronological, right-padded
    assert list(out["hist_brand"][0]) == [2, 0, 2, 0]
    assert list(out["hist_btag"][0]) == [2, 3, 2, 0]
    assert list(out["hist_gap"][0]) == [features.gap_bucket(s) for s in (5000, 1000, 100)] + [0]
    # the session: the behaviors at T-1000 and T-100 (T-5000 is more than the gap before)
    assert out["session_events_log"][0] == np.float32(np.log1p(2))
    assert out["session_minutes_log"][0] == np.float32(np.log1p(1000 / 60))
    assert out["impression_id"].tolist() == [0, 1] and out["user_key"].tolist() == [10, 10]
    assert out["ts"].tolist() == [T, T]


def test_cross_features_of_a_crafted_request():
    out = rows()
    gap = features.gap_bucket
    # ad 100: cate 5 (id 2) and brand 7 (id 2), each twice in the history, last at T-100
    assert [out[f"x_cate_{k}"][0] for k in ("count", "gap", "btag", "last")] == [4, gap(100), 2, 3]
    assert [out[f"x_brand_{k}"][0] for k in ("count", "gap", "btag", "last")] == [4, gap(100), 2, 3]
    # ad 101: cate 6 (id 3) once, carted at T-1000, not the last behavior; its brand is null
    assert [out[f"x_cate_{k}"][1] for k in ("count", "gap", "btag", "last")] == [3, gap(1000), 3, 2]
    assert [out[f"x_brand_{k}"][1] for k in ("count", "gap", "btag", "last")] == [0, 0, 0, 0]
    assert "x_item_count" not in out  # the bundle has no item history
    # an unknown category (id 1) matches nothing, not even the history's unknown entries
    events = [{"time": T - 60, "btag": "fav", "cate": 77, "brand": 8}]
    unknown = rows(candidates=[102], events=events)
    assert unknown["x_cate_count"].tolist() == [features.UNKNOWN_ID]
    assert unknown["x_cate_last"].tolist() == [features.UNKNOWN_ID]
    assert rows(events=[])["x_cate_gap"].tolist() == [features.NO_MATCH["gap"]] * 2


def test_unseen_values_encode_to_unknown():
    events = [{"time": T - 60, "btag": "fav", "cate": 77, "brand": 8}]
    out = rows(
        user_id=999,
        candidates=[102, 555],
        pid="other_pid",
        events=events,
        profile={"final_gender_code": 9},
    )
    assert out["user"].tolist() == [UNKNOWN_ID] * 2
    assert out["ad"].tolist() == [UNKNOWN_ID] * 2  # 102 and 555 are not in the item vocabulary
    assert out["cate"].tolist() == [UNKNOWN_ID, 0]  # 555 is not in the ad table: null features
    assert out["brand"].tolist() == [2, 0]
    assert out["price_log"].tolist() == [np.float32(np.log1p(3.5)), 0.0]
    assert out["slot"].tolist() == [UNKNOWN_ID] * 2 and out["gender"].tolist() == [UNKNOWN_ID] * 2
    assert list(out["hist_cate"][0]) == [UNKNOWN_ID, 0, 0, 0]
    assert list(out["hist_brand"][0]) == [UNKNOWN_ID, 0, 0, 0]


@pytest.mark.parametrize(
    "profile",
    [
        None,
        {},
        {"final_gender_code": "", "age_level": None},
        {"gender": np.nan, "age_level": "NULL"},
    ],
)
def test_null_profile_and_slot_encode_to_padding(profile):
    out = rows(profile=profile, pid=None)
    assert out["gender"].tolist() == [0, 0] and out["age_level"].tolist() == [0, 0]
    assert out["slot"].tolist() == [0, 0]


def test_events_at_or_after_the_request_time_are_ignored():
    later = [
        {"time": T, "btag": "buy", "cate": 6, "brand": 7},
        {"time": T + 1, "btag": "pv", "cate": 5, "brand": None},
        {"time": T + 10_000, "btag": "cart", "cate": 77, "brand": 8},
    ]
    assert same(rows(events=EVENTS + later), rows(events=EVENTS))
    assert not same(rows(events=EVENTS[:2]), rows(events=EVENTS))


def test_out_of_order_events_are_sorted_like_the_etl():
    shuffled = [EVENTS[2], EVENTS[0], EVENTS[1]]
    assert same(rows(events=shuffled), rows(events=EVENTS))
    # same second: the funnel order pv, cart, fav, buy, whatever the input order
    tied = [{"time": T - 60, "btag": b, "cate": 5, "brand": 7} for b in ("buy", "fav", "pv")]
    assert list(rows(events=tied)["hist_btag"][0]) == [2, 4, 5, 0]
    # as columns or as a DataFrame: the same rows
    columns = {k: [e[k] for e in shuffled] for k in ("time", "btag", "cate", "brand")}
    assert same(rows(events=columns), rows(events=EVENTS))
    assert same(rows(events=pd.DataFrame(columns)), rows(events=EVENTS))


def test_strict_requests_reject_unordered_or_later_events():
    request = RankRequest(10, T, [100], events=[EVENTS[1], EVENTS[0]])
    with pytest.raises(ValueError, match="out of time order"):
        encode_request(BUNDLE, request, strict=True)
    later = RankRequest(10, T, [100], events=[*EVENTS, {"time": T + 5, "btag": "pv"}])
    with pytest.raises(ValueError, match="later than the request time"):
        encode_request(BUNDLE, later, strict=True)
    assert encode_request(BUNDLE, RankRequest(10, T, [100], events=EVENTS), strict=True)


def test_session_gap_rule_exactly_gap_stays():
    def session_events(gap_before: int) -> float:
        events = [{"time": T - 10 - gap_before, "btag": "pv"}, {"time": T - 10, "btag": "pv"}]
        return float(rows(events=events)["session_events_log"][0])

    assert session_events(GAP) == np.float32(np.log1p(2))  # exactly the gap: one session
    assert session_events(GAP + 1) == np.float32(np.log1p(1))  # one second more: a new one
    far = [{"time": T - GAP - 1, "btag": "pv"}]  # the last behavior more than the gap before
    out = rows(events=far)
    assert out["session_events_log"][0] == 0 and out["session_minutes_log"][0] == 0
    assert rows(events=[])["hist_len"].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"events": [{"time": T - 1, "btag": "click"}]}, "btag"),
        ({"events": [{"time": T - 1, "btag": "pv", "cate": "x1"}]}, "events.cate"),
        ({"events": [{"time": None, "btag": "pv"}]}, "no time"),
        ({"events": [{"btag": "pv"}]}, "lacks time"),
        ({"events": [{"time": T - 1, "btag": "pv", "shop": 3}]}, "unknown key"),
        ({"events": ["pv"]}, "mapping"),
        ({"candidates": []}, "empty"),
        ({"candidates": [100, None]}, "null"),
        ({"candidates": [1.5]}, "candidates"),
        ({"user_id": "abc"}, "user_id"),
        ({"time": None}, "time"),
        ({"profile": {"favourite_colour": 3}}, "unknown field"),
    ],
)
def test_bad_requests_raise_value_error(change, message):
    base = {"user_id": 10, "time": T, "candidates": [100], "events": EVENTS}
    with pytest.raises(ValueError, match=message):
        encode_request(BUNDLE, RankRequest(**{**base, **change}))


def test_bundle_files_round_trip(tmp_path):
    folder = BUNDLE.save(tmp_path / "bundle")
    assert sorted(p.name for p in folder.iterdir()) == [
        "ads.parquet",
        "feature_spec.json",
        "vocab.parquet",
    ]
    loaded = FeatureBundle.load(folder)
    assert loaded.spec == BUNDLE.spec
    request = RankRequest(10, T, [100, 101, 102, 555], "430548_1007", EVENTS, {"age_level": 3})
    assert same(request_rows(loaded, request), request_rows(BUNDLE, request))


def test_bundle_needs_the_session_settings():
    spec = FeatureSpec("taobao_ad", 4, BUNDLE.spec.fields)  # an older spec: no gap recorded
    with pytest.raises(ValueError, match="gap_seconds"):
        FeatureBundle(spec, BUNDLE.vocab, BUNDLE.ads)


def test_vocabulary_lookup_of_ids_and_strings():
    ids = Vocabulary("cate", np.array(["5", "-6", "12345678901234567"], object), [2, 3, 4])
    values = [5, "5", 5.0, -6, 12345678901234567, 4, None, np.nan, "", "NULL"]
    assert ids.encode(np.array(values, dtype=object)).tolist() == [2, 2, 2, 3, 4, 1, 0, 0, 0, 0]
    slots = Vocabulary("slot", np.array(["430548_1007", "NULL"], object), [2, 3])
    assert slots.encode(np.array(["430548_1007", " NULL", "x", None], object)).tolist() == [
        2,
        3,
        1,
        0,
    ]
    with pytest.raises(ValueError, match="decimal"):
        Vocabulary("cate", np.array(["007"], object), [2])


def test_no_spark_or_torch_on_the_import_path():
    code = (
        "import sys, etl.online; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'torch', 'ray'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)


# --- the moved computations equal the Spark expressions they replaced ---------------------------
def test_hour_weekday_and_log1p_equal_the_former_spark_expressions(spark):
    from pyspark.sql import functions as F

    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame(
        {
            "ts": rng.integers(1_480_000_000, 1_530_000_000, n),
            "price": np.round(rng.gamma(1.5, 200.0, n), 2),
            "events": rng.integers(0, 500, n),
            "seconds": rng.integers(0, 200_000, n),
        }
    )
    frame.loc[: n // 10, "price"] = np.nan  # -> null in Spark, 0 after coalesce
    df = spark.createDataFrame(frame).withColumn("price", F.when(~F.isnan("price"), F.col("price")))
    local = F.from_unixtime(F.col("ts") + F.lit(8 * 3600))
    got = df.select(
        (F.hour(local) + FIRST_ID).cast("int").alias("hour"),
        (F.dayofweek(local) + FIRST_ID - 1).cast("int").alias("weekday"),
        F.log1p(F.coalesce(F.col("price"), F.lit(0.0))).cast("float").alias("price_log"),
        F.log1p(F.col("events")).cast("float").alias("session_events_log"),
        F.log1p(F.col("seconds") / 60.0).cast("float").alias("session_minutes_log"),
    ).toPandas()
    ours = features.impression_features(
        frame["ts"].to_numpy(), frame["price"].to_numpy(), frame["events"], frame["seconds"], 8
    )
    for name in features.IMPRESSION_FEATURES:
        expected = got[name].to_numpy(np.float32 if "log" in name else np.int32)
        assert np.array_equal(expected.view(np.int32), ours[name].view(np.int32)), name


def test_spark_encoding_rule_equals_the_vocabulary(spark):
    from pyspark.sql import types as ST

    from etl.vocab import encode_column

    vocab = spark.createDataFrame(BUNDLE.vocab[["vocab", "raw", "id", "count"]])
    values = [5, 6, 99, None, 12]
    df = spark.createDataFrame(
        [(v,) for v in values], ST.StructType([ST.StructField("c", ST.LongType())])
    )
    spark_ids = [r["e"] for r in encode_column(df, "c", vocab, "cate", "e").orderBy("c").collect()]
    ordered = sorted(values, key=lambda v: (v is not None, v or 0))
    ours = BUNDLE.vocabularies["cate"].encode(np.array(ordered, dtype=object)).tolist()
    assert spark_ids == ours == [0, 2, 3, 1, 1]
    slots = spark.createDataFrame([("430548_1007",), ("x",), (None,)], "c string")
    spark_slots = [r["e"] for r in encode_column(slots, "c", vocab, "slot", "e").collect()]
    assert sorted(spark_slots) == sorted(
        BUNDLE.vocabularies["slot"].encode(np.array(["430548_1007", "x", None], object)).tolist()
    )


# --- parity with the lake ------------------------------------------------------------------------
def read_delta(lake, name: str, version: int, where: str = "") -> pd.DataFrame:
    paths = [p for p in files_at(f"{lake}/{name}", version) if where in p]
    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def assert_parity(lake, bundle: FeatureBundle, events_of, profile_of) -> int:
    """Rebuild every test impression of ``lake`` through the online function and compare with
    its samples rows; returns the number of rows compared."""
    spec = FeatureSpec.load(lake)
    samples = read_delta(lake, "samples", spec.tables["samples"], "split=test")
    keys = read_delta(lake, "impressions", spec.tables["impressions"])
    test = keys.merge(samples[["impression_id"]], on="impression_id").sort_values("impression_id")
    assert len(test) == len(samples) > 100
    built = []
    for (user, ts, slot), group in test.groupby(["user_id", "ts", "slot"], dropna=False):
        request = RankRequest(
            user_id=int(user),
            time=int(ts),
            candidates=group["ad_id"].to_numpy(np.int64),
            pid=None if pd.isna(slot) else slot,
            events=events_of(user),
            profile=profile_of(user),
        )
        out = request_rows(bundle, request)
        built.append(out.assign(impression_id=group["impression_id"].to_numpy()))
    online = pd.concat(built).set_index("impression_id").sort_index()
    lake_rows = samples.set_index("impression_id").loc[online.index]
    columns = ["user_key", "ts", *[f.name for f in spec.fields], spec.length_field]
    assert list(online.columns) == columns
    for field in columns:
        ours, theirs = online[field].to_numpy(), lake_rows[field].to_numpy()
        if ours.dtype == object:  # sequences
            ours, theirs = np.stack(ours), np.stack(theirs)
        assert ours.dtype == theirs.dtype, field
        mismatch = np.flatnonzero(
            (ours.view(np.int32) != theirs.view(np.int32)).reshape(len(ours), -1).any(axis=1)
            if ours.dtype == np.float32
            else (ours != theirs).reshape(len(ours), -1).any(axis=1)
        )
        assert mismatch.size == 0, (field, online.index[mismatch[:5]].tolist())
    return len(online)


def events_by_user(behaviors: pd.DataFrame):
    """user -> the user's raw behaviors as the serving format's list of mappings."""
    groups = {u: g.drop(columns="user").to_dict("records") for u, g in behaviors.groupby("user")}
    return lambda user: groups.get(user, [])


@pytest.fixture(scope="module")
def world_lake(ranker):
    """The session's shared generated world and its lake (tests/helpers_ranker.py)."""
    return ranker.world, ranker.lake


def test_parity_on_a_generated_lake(world_lake, tmp_path):
    world, lake = world_lake
    bundle = FeatureBundle.load(FeatureBundle.from_lake(lake).save(tmp_path / "bundle"))
    raw = pd.read_csv(world / "behavior_log.csv", dtype=str, keep_default_na=False)
    behaviors = raw.rename(columns={"time_stamp": "time"}).astype({"user": np.int64})
    profiles = pd.read_csv(world / "user_profile.csv", dtype=str, keep_default_na=False)
    profiles.columns = [c.strip() for c in profiles.columns]
    by_user = {int(r.pop("userid")): r for r in profiles.to_dict("records")}
    # the request's user, time, pid and candidates are raw_sample.csv's
    sample = pd.read_csv(world / "raw_sample.csv")
    spec = FeatureSpec.load(lake)
    keys = read_delta(lake, "impressions", spec.tables["impressions"])
    raw_keys = set(sample[["user", "time_stamp", "adgroup_id", "pid"]].itertuples(index=False))
    assert set(keys[["user_id", "ts", "ad_id", "slot"]].itertuples(index=False)) <= raw_keys
    assert {"x_cate_count", "x_brand_gap", "x_brand_last"} <= set(bundle.fields)  # cross
    compared = assert_parity(lake, bundle, events_by_user(behaviors), by_user.get)
    assert compared == len(read_delta(lake, "samples", spec.tables["samples"], "split=test"))


def test_parity_on_the_real_user_behavior_slice(spark, real_data, tmp_path):
    from etl.config import EtlConfig
    from etl.pipeline import run_etl

    src = real_data / "taobao_user_behavior" / "UserBehavior_tail10000.csv"
    cfg = EtlConfig(
        source="user_behavior",
        input=str(src),
        output=str(tmp_path / "lake"),
        max_len=20,
        gap_minutes=10,
    )
    summary = run_etl(spark, cfg)
    assert summary.rows["quarantine"] == 0
    bundle = FeatureBundle.from_lake(cfg.output)
    assert bundle.spec.gap_seconds == 600 and "hist_item" in bundle.fields
    assert {"x_item_count", "x_item_last", "x_cate_gap", "x_cate_btag"} <= set(bundle.fields)
    names = ["user", "item", "cate", "btag", "time"]
    behaviors = pd.read_csv(src, header=None, names=names)
    assert assert_parity(cfg.output, bundle, events_by_user(behaviors), lambda user: None) > 1000
