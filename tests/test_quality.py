"""Quarantine machinery: line numbering, per-reason routing, reconciliation (real Spark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl import quality
from etl.quality import Field, FileSpec
from etl.sources import FileReport, InputError, check_reconciliation
from etl.sources.base import report
from etl.sources.user_behavior import DEFAULT_DAYS, USER_BEHAVIOR

DATA = Path(__file__).parent / "data"

# Every line of tests/data/malformed/UserBehavior_bad.csv that must be quarantined, and why.
EXPECTED_REASONS = {
    3: "header",
    4: "column_count:6",
    5: "column_count:4",
    6: "non_numeric:user",
    7: "non_numeric:item",
    8: "bad_timestamp:ts",
    9: "timestamp_out_of_range:ts",
    10: "timestamp_out_of_range:ts",
    11: "unknown_behavior:behavior",
    12: "duplicate",
    13: "empty_line",
    14: "missing:item",
    17: "truncated_last_line:timestamp_out_of_range:ts",
}


def test_line_numbers_exact_across_many_partitions(spark, tmp_path):
    path = tmp_path / "lines.csv"
    path.write_text("".join(f"{i},{'x' * (i % 37)}\n" for i in range(1, 1001)))
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "2048")
    try:
        assert spark.read.text(str(path)).rdd.getNumPartitions() > 5
        lines, total = quality.read_lines(spark, str(path))
        rows = lines.collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    assert total == 1000
    assert sorted(r["line_no"] for r in rows) == list(range(1, 1001))
    assert all(int(r["raw"].split(",")[0]) == r["line_no"] for r in rows)


def test_malformed_corpus_each_reason(spark):
    spec = USER_BEHAVIOR.with_ts_range(quality.date_range(*DEFAULT_DAYS))
    parsed = quality.parse_file(spark, str(DATA / "malformed" / "UserBehavior_bad.csv"), spec)
    table = parsed.table.collect()  # every line: line_no, raw, reason, typed columns
    got = {r["line_no"]: r["reason"] for r in table if r["reason"] is not None}
    assert got == EXPECTED_REASONS
    assert (parsed.read, parsed.kept, parsed.quarantined) == (17, 4, 13)
    assert parsed.read == parsed.kept + parsed.quarantined == len(table)
    kept = sorted(tuple(r)[3:] for r in table if r["reason"] is None)
    assert kept[0] == (1, 100, 10, "pv", 1511658000)  # typed, first copy of the duplicate
    assert sorted(r["line_no"] for r in table if r["reason"] is None) == [1, 2, 15, 16]
    raw = {r["line_no"]: r["raw"] for r in table}
    assert raw[17] == "301780,543546,4181361,pv,15" and raw[13] == ""
    with pytest.raises(InputError) as err:  # 13 of 17 lines quarantined
        check_reconciliation([report(parsed)], 0.05)
    assert "UserBehavior_bad.csv: 13 of 17 lines quarantined" in str(err.value)
    assert "\n" not in str(err.value)


def test_datetime_utc8_and_value_kinds(spark):
    spec = FileSpec(
        "t",
        fields=(
            Field("when", "datetime8"),
            Field("price", "double", nullable=True),
            Field("flag", "label"),
        ),
        headers=(("when", "price", "flag"),),
        ts_range=quality.date_range("2017-01-01", "2018-01-01"),
        checks=(("negative_price", lambda c: c["price"] < 0),),
    )
    raw = [
        "when,price,flag",  # line 1: header, not counted
        "2017-05-06 00:00:00,3.9,1",  # 1494000000
        "2016-02-29 23:59:59,1e2,0",  # real date, out of range
        "2017-02-29 00:00:00,1,0",  # no such day
        "2017-13-01 00:00:00,1,0",
        "2017-05-06 24:00:00,1,0",
        "2017/05/06 00:00:00,1,0",
        "2017-12-31 23:59:59,NULL,0",  # last valid second; null price
        "2017-05-06 00:00:00,abc,0",
        "2017-05-06 00:00:00,-1.5,0",
        "2017-05-06 00:00:00,1.5,2",
        "WHEN , price, flag",  # a header again
    ]
    lines = spark.createDataFrame(list(enumerate(raw, 1)), "line_no long, raw string")
    table = quality.classify(lines, spec, len(raw), True).collect()
    by_line = {r["line_no"]: r for r in table}
    assert 1 not in by_line
    assert by_line[2]["when"] == 1494000000 and by_line[2]["reason"] is None
    assert by_line[3]["reason"] == "timestamp_out_of_range:when"
    for line in (4, 5, 6, 7):
        assert by_line[line]["reason"] == "bad_timestamp:when", line
    assert by_line[8]["reason"] is None and by_line[8]["price"] is None
    assert by_line[8]["when"] == quality.date_range("2018-01-01", "2018-01-02")[0] - 1
    assert by_line[9]["reason"] == "non_numeric:price"
    assert by_line[10]["reason"] == "negative_price"
    assert by_line[11]["reason"] == "bad_label:flag"
    assert by_line[12]["reason"] == "header"


def test_reconciliation_passes_and_fails():
    ok = FileReport("s", "/d/a.csv", read=100, kept=95, quarantined=5)
    check_reconciliation([ok], 0.05)
    over = FileReport("s", "/d/b.csv", read=100, kept=94, quarantined=6)
    with pytest.raises(InputError, match=r"/d/b\.csv: 6 of 100 lines quarantined"):
        check_reconciliation([ok, over], 0.05)
    check_reconciliation([over], 0.10)
    with pytest.raises(InputError, match="empty"):
        check_reconciliation([FileReport("s", "/d/e.csv", 0, 0, 0)], 0.05)
    with pytest.raises(InputError, match="no readable line"):
        check_reconciliation([FileReport("s", "/d/f.csv", 3, 0, 3)], 1.0)


def test_empty_file_is_read_as_zero_lines(spark, tmp_path):
    empty = tmp_path / "UserBehavior.csv"
    empty.write_text("")
    parsed = quality.parse_file(spark, str(empty), USER_BEHAVIOR, persist=False)
    assert (parsed.read, parsed.kept, parsed.quarantined) == (0, 0, 0)
