"""Source adapters on the real slices and on the hand-written fixtures (real Spark).

Each test collects what it checks once and asserts in Python: few Spark jobs keep it fast.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from etl.schemas import ADS, BEHAVIORS, QUARANTINE, RAW_IMPRESSIONS, USERS
from etl.sources import SOURCES, InputError, SourceConfig, SourceData, load_source
from etl.sources.ali_ccp import preprocessed_wide_columns, raw_wide_columns
from etl.sources.taobao_ad import joined_files
from etl.sources.user_behavior import derive_impressions

DATA = Path(__file__).parent / "data"
CFG = SourceConfig()
KEYS = ["impression_id", "user_key", "split", "click", "conversion"]


def names_types(schema):
    return [(f.name, f.dataType) for f in schema.fields]


def reports_by_name(data: SourceData) -> dict[str, tuple[int, int, int]]:
    return {Path(r.file).name: (r.read, r.kept, r.quarantined) for r in data.reports}


def reasons(data: SourceData) -> dict[tuple[str, int], str]:
    rows = data.quarantine.collect()
    assert len(rows) == sum(r.quarantined for r in data.reports)
    return {(Path(r["file"]).name, r["line_no"]): r["reason"] for r in rows}


def assert_reconciles(data: SourceData) -> None:
    for r in data.reports:
        assert r.read == r.kept + r.quarantined, r
    assert names_types(data.quarantine.schema) == names_types(QUARANTINE)


def assert_canonical(data: SourceData) -> None:
    for attr, schema in (
        ("behaviors", BEHAVIORS),
        ("impressions", RAW_IMPRESSIONS),
        ("ads", ADS),
        ("users", USERS),
    ):
        assert names_types(getattr(data, attr).schema) == names_types(schema), attr


# --- user_behavior ------------------------------------------------------------------------------
def test_user_behavior_tail_slice(spark, real_data):
    path = real_data / "taobao_user_behavior" / "UserBehavior_tail10000.csv"
    data = load_source(spark, "user_behavior", str(path), CFG)
    assert_canonical(data)
    assert_reconciles(data)
    assert reports_by_name(data) == {"UserBehavior_tail10000.csv": (10000, 10000, 0)}
    assert data.conversion_match == "item"
    assert set(data.bronze) == {"bronze_user_behavior"}
    behaviors = data.behaviors.collect()
    assert Counter(r["btag"] for r in behaviors) == {
        "pv": 9046,
        "cart": 536,
        "fav": 212,
        "buy": 206,
    }
    assert all(r["brand_id"] is None for r in behaviors)
    assert min(r["ts"] for r in behaviors) < 1511539200  # real rows before 11-25 (UTC+8) kept
    ads = {r["ad_id"]: r for r in data.ads.collect()}
    assert len(ads) == 7623 and all(r["price"] is None for r in ads.values())
    assert data.users.count() == 114

    imps = data.impressions.collect()
    assert Counter(r["click"] for r in imps) == {1: 9046, 0: 4 * 9046}
    assert all(r["slot"] is None for r in imps)
    pv = {(r["user_id"], r["ts"], r["item_id"]) for r in behaviors if r["btag"] == "pv"}
    pv_times = {(u, ts) for u, ts, _ in pv}
    negatives = [(r["user_id"], r["ts"], r["ad_id"]) for r in imps if r["click"] == 0]
    assert not any(n in pv for n in negatives)  # never viewed by the user in that second
    assert all((u, ts) in pv_times for u, ts, _ in negatives)  # at the time of a pv
    assert all(item in ads for _, _, item in negatives)  # items of the data


def test_negative_sampling_is_deterministic(spark):
    rows = [(u, 1511658000 + s, 100 + i, 1, "pv") for u in (1, 2) for s in (0, 60) for i in (0, 1)]
    rows += [(3, 1511658000, 200 + i, 2, "cart") for i in range(300)]
    behaviors = spark.createDataFrame(
        [(u, ts, item, cate, None, b) for u, ts, item, cate, b in rows], BEHAVIORS
    )

    def sample(df):
        return sorted(tuple(r) for r in derive_impressions(df, 3, seed=7).collect())

    first = sample(behaviors)
    assert first == sample(behaviors.repartition(3))  # independent of partitioning
    negatives = [r for r in first if r[4] == 0]
    assert len(negatives) == 8 * 3 and len(set(negatives)) == 24
    viewed = {(u, ts, item) for u, ts, item, *_ in rows}
    assert not any(r[:3] in viewed for r in negatives)


def test_user_behavior_truncated_timewindow_slice(spark, real_data):
    path = real_data / "taobao_user_behavior" / "UserBehavior_timewindow_20171126.csv"
    data = load_source(spark, "user_behavior", str(path), CFG)
    assert_reconciles(data)
    (report,) = data.reports
    assert (report.read, report.kept, report.quarantined) == (96169, 96168, 1)
    (bad,) = data.quarantine.collect()
    assert bad["line_no"] == 96169
    assert bad["raw"] == "301780,543546,4181361,pv,15"
    assert bad["reason"] == "truncated_last_line:timestamp_out_of_range:ts"


def test_user_behavior_directory_input(spark, tmp_path):
    (tmp_path / "part-a.csv").write_text("1,100,10,pv,1511658000\n1,101,10,buy,1511658060\n")
    (tmp_path / "part-b.csv").write_text("2,100,10,pv,1511658000\n")
    (tmp_path / "notes.txt").write_text("not data\n")
    data = load_source(spark, "user_behavior", str(tmp_path), CFG)
    assert reports_by_name(data) == {"part-a.csv": (2, 2, 0), "part-b.csv": (1, 1, 0)}


# --- taobao_ad ----------------------------------------------------------------------------------
def test_taobao_joined_real_slice(spark, real_data):
    path = real_data / "taobao_display_ad" / "fuxictr_taobao_ad_tiny_joined.csv"
    assert joined_files(spark, str(path.parent)) == [str(path)]  # found in its directory too
    data = load_source(spark, "taobao_ad", str(path), CFG)
    assert reports_by_name(data) == {"fuxictr_taobao_ad_tiny_joined.csv": (100, 100, 0)}
    assert_canonical(data)
    assert_reconciles(data)
    assert data.conversion_match == "cate_brand"
    assert data.behaviors.count() == 0
    imps = data.impressions.collect()
    assert len(imps) == 100 and sum(r["click"] for r in imps) == 4
    assert {r["slot"] for r in imps} == {"430548_1007", "430539_1007"}
    # 2017-05-06 00:00:00..00:00:02 in UTC+8
    assert {r["ts"] for r in imps} == {1494000000, 1494000001, 1494000002}
    assert len({r["user_id"] for r in imps}) == 24
    ads = data.ads.collect()
    assert len(ads) == 99 and sum(r["brand_id"] is None for r in ads) == 27
    assert "click_sequence" in data.bronze["bronze_taobao_ad_joined"].columns
    users = data.users.collect()
    assert len(users) == 23  # one of the 24 users has no profile (8 rows)
    assert sum(r["pvalue_level"] is None for r in users) > 0
    assert all(r["new_user_class_level"] is None for r in users)


def test_taobao_raw_fixture(spark):
    data = load_source(spark, "taobao_ad", str(DATA / "taobao_ad_raw"), CFG)
    assert_canonical(data)
    assert_reconciles(data)
    assert reports_by_name(data) == {
        "raw_sample.csv": (13, 10, 3),  # the header line is not counted
        "behavior_log.csv": (8, 7, 1),
        "ad_feature.csv": (10, 9, 1),
        "user_profile.csv": (6, 5, 1),
    }
    assert reasons(data) == {
        ("raw_sample.csv", 12): "duplicate",
        ("raw_sample.csv", 13): "label_mismatch",
        ("raw_sample.csv", 14): "missing:clk",
        ("behavior_log.csv", 8): "unknown_behavior:btag",
        ("ad_feature.csv", 11): "duplicate_key",
        ("user_profile.csv", 7): "duplicate_key",
    }
    assert sorted(data.bronze) == [
        "bronze_ad_feature",
        "bronze_behavior_log",
        "bronze_raw_sample",
        "bronze_user_profile",
    ]
    imps = {(r["user_id"], r["ad_id"]): r for r in data.impressions.collect()}
    assert len(imps) == 10
    assert imps[(117840, 11)]["click"] == 1 and imps[(117840, 11)]["slot"] == "430548_1007"
    assert imps[(581738, 1)]["ts"] == 1494137644
    ads = {r["ad_id"]: r for r in data.ads.collect()}
    assert ads[1]["brand_id"] is None and ads[3]["brand_id"] is None  # NULL and empty
    assert ads[11]["price"] == 199.0 and ads[12]["price"] == 100.0  # first copy wins; 1e2
    logs = data.behaviors.collect()
    assert all(r["item_id"] is None for r in logs)
    assert sum(r["brand_id"] is None for r in logs) == 2
    users = {r["user_id"]: r for r in data.users.collect()}
    assert users[117840]["new_user_class_level"] == 1 and users[581738]["gender"] == 1


# --- ali_ccp ------------------------------------------------------------------------------------
def test_ali_ccp_raw_fixture(spark):
    data = load_source(spark, "ali_ccp", str(DATA / "ali_ccp_raw"), CFG)
    assert data.behaviors is None and data.impressions is None and data.conversion_match == "label"
    assert_reconciles(data)
    assert reports_by_name(data) == {
        "sample_skeleton_train.csv": (6, 6, 0),
        "common_features_train.csv": (2, 2, 0),
        "sample_skeleton_test.csv": (3, 3, 0),
        "common_features_test.csv": (1, 1, 0),
    }
    flags = {Path(r.file).name: r.flags for r in data.reports}
    assert flags["sample_skeleton_train.csv"]["conversion_without_click"] == 1
    assert flags["sample_skeleton_test.csv"]["missing_common_features"] == 1
    assert "bronze_sample_skeleton_train" in data.bronze
    wide = data.wide_samples
    assert wide.columns == KEYS + raw_wide_columns()
    assert dict(wide.dtypes)["s_109_14"] == "array<string>"  # a user history: a sequence
    assert dict(wide.dtypes)["f_210"] == "array<string>"
    assert dict(wide.dtypes)["d_508"] == "double"
    collected = wide.collect()
    assert len({r["impression_id"] for r in collected}) == 9
    rows = {(r["split"], r["f_205"], r["user_key"]): r for r in collected}
    first = rows[("train", "301", 11001)]
    assert first["f_124"] == "41" and first["f_301"] == "1"
    assert first["s_109_14"] == ["1091", "1092", "1093"] and first["f_210"] == ["7001", "7003"]
    assert first["d_508"] == pytest.approx(2.30259)
    bought = rows[("train", "303", 11001)]
    assert (bought["click"], bought["conversion"]) == (1, 1)
    orphan = rows[("test", "307", 0)]  # its common_feature_index is not in common_features_test
    assert orphan["f_101"] is None and orphan["s_109_14"] == [] and orphan["f_210"]


def test_ali_ccp_raw_malformed(spark):
    data = load_source(spark, "ali_ccp", str(DATA / "malformed" / "ali_ccp_raw"), CFG)
    assert_reconciles(data)
    skeleton = "sample_skeleton_train.csv"
    assert reasons(data) == {
        (skeleton, 2): "feature_count_mismatch",
        (skeleton, 3): "bad_feature",
        (skeleton, 4): "unknown_field",
        (skeleton, 5): "bad_label:click",
        (skeleton, 6): "column_count:4",
        (skeleton, 7): "duplicate_key",
        (skeleton, 8): "duplicate",
        ("common_features_train.csv", 2): "duplicate_key",
    }


def test_ali_ccp_torch_rechub_real(spark, real_data):
    data = load_source(spark, "ali_ccp", str(real_data / "ali_ccp"), CFG)  # auto: torch-rechub
    assert_reconciles(data)
    assert reports_by_name(data) == {
        "torch_rechub_ali_ccp_train_sample.csv": (100, 100, 0),  # identical rows are kept
        "torch_rechub_ali_ccp_val_sample.csv": (50, 50, 0),
    }
    wide = data.wide_samples
    assert wide.columns == KEYS + preprocessed_wide_columns("torch_rechub")
    assert dict(wide.dtypes)["f_205"] == "string" and dict(wide.dtypes)["d_853"] == "double"
    rows = wide.select("impression_id", "split", "click", "conversion").collect()
    got = {}
    for split in ("train", "valid"):
        part = [r for r in rows if r["split"] == split]
        got[split] = (len(part), sum(r["click"] for r in part), sum(r["conversion"] for r in part))
    assert got == {"train": (100, 7, 1), "valid": (50, 3, 1)}
    assert len({r["impression_id"] for r in rows}) == 150


def test_ali_ccp_aitm_real(spark, real_data):
    cfg = SourceConfig(ali_ccp_format="aitm")
    data = load_source(spark, "ali_ccp", str(real_data / "ali_ccp"), cfg)
    assert_reconciles(data)
    assert reports_by_name(data) == {
        "paddlerec_aitm_sample_train.csv": (48, 48, 0),  # header skipped
        "paddlerec_aitm_sample_test.csv": (50, 50, 0),  # no header
    }
    flags = {Path(r.file).name: r.flags["conversion_without_click"] for r in data.reports}
    assert flags == {"paddlerec_aitm_sample_train.csv": 2, "paddlerec_aitm_sample_test.csv": 3}
    wide = data.wide_samples
    assert wide.columns == KEYS + preprocessed_wide_columns("aitm")
    rows = wide.select("split", "user_key").collect()
    assert Counter(r["split"] for r in rows) == {"train": 48, "test": 50}
    assert len({r["user_key"] for r in rows if r["split"] == "test"}) == 10


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_missing_input_path(spark, tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=f"^{name}: input path not found: {missing}$"):
        load_source(spark, name, str(missing), CFG)


def test_missing_required_files(spark, tmp_path):
    (tmp_path / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid,nonclk,clk\n")
    with pytest.raises(InputError, match=f"required file not found: {tmp_path}/behavior_log.csv"):
        load_source(spark, "taobao_ad", str(tmp_path), CFG)
    (tmp_path / "sample_skeleton_train.csv").write_text("")
    with pytest.raises(InputError, match="common_features_train.csv"):
        load_source(spark, "ali_ccp", str(tmp_path), CFG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no \*\.csv file"):
        load_source(spark, "user_behavior", str(empty), CFG)
    with pytest.raises(InputError, match="unknown source"):
        load_source(spark, "nope", str(tmp_path), CFG)


def test_ali_ccp_without_a_train_file_is_refused(spark, tmp_path):
    """Only test files: no vocabulary could be built (every categorical field would be
    dropped), so the source refuses before reading anything."""
    for name in ("sample_skeleton_test.csv", "common_features_test.csv"):
        (tmp_path / name).write_bytes((DATA / "ali_ccp_raw" / name).read_bytes())
    with pytest.raises(InputError, match="no train file among sample_skeleton_test.csv"):
        load_source(spark, "ali_ccp", str(tmp_path), CFG)


def test_wrong_format_names_what_it_looks_like(spark, real_data, tmp_path):
    raw_sample = DATA / "taobao_ad_raw" / "raw_sample.csv"
    with pytest.raises(InputError) as err:  # header on line 1: the taobao_ad layout
        load_source(spark, "user_behavior", str(raw_sample), CFG)
    assert str(err.value) == (
        f"user_behavior: {raw_sample} has 6 columns where 5 are expected "
        "(looks like taobao_ad raw_sample.csv: --source taobao_ad)"
    )
    joined = real_data / "taobao_display_ad" / "fuxictr_taobao_ad_tiny_joined.csv"
    with pytest.raises(
        InputError, match="has 19 columns where 5 are expected .*--source taobao_ad"
    ):
        load_source(spark, "user_behavior", str(joined), CFG)
    aitm = (real_data / "ali_ccp" / "paddlerec_aitm_sample_test.csv").read_bytes()
    (tmp_path / "sample_skeleton_train.csv").write_bytes(aitm)  # AITM rows named as raw
    (tmp_path / "common_features_train.csv").write_text("")
    with pytest.raises(
        InputError, match=r"20 columns where 6 are expected \(looks like ali_ccp AITM"
    ):
        load_source(spark, "ali_ccp", str(tmp_path), CFG)
