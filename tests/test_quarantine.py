"""The quarantine on the worst input (real Spark + Delta): binary lines kept byte for byte and
readable by any Parquet reader, a failed run's quarantine written before it fails and named by
version, and a file of another format refused before any write."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from test_etl_options import error_lines, spark_submit_etl

from etl import quality
from etl.config import EtlConfig
from etl.delta_log import files_at, latest_version
from etl.lake import read_table
from etl.pipeline import run_etl
from etl.schemas import QUARANTINE
from etl.sources import InputError
from etl.world import WorldConfig, write_world

DATA = Path(__file__).parent / "data"
T0 = 1511658000  # 2017-11-26 09:00 UTC+8


def behavior_lines(n: int, users: int = 3) -> list[bytes]:
    return [f"{i % users + 1},{100 + i},10,pv,{T0 + 60 * i}".encode() for i in range(n)]


# Binary garbage (no line breaks inside), each with the reason it must get.
GARBAGE = {
    b"\xff\xfe\x00\x00garbage\x00\x01": "invalid_utf8",
    b"1,100,10,pv,15116580\xe2\x82": "invalid_utf8",  # cut inside a UTF-8 character
    b"\x89PNG\x1a\x00\x00\x00IHDR\x00\x00\x01\x00": "invalid_utf8",
    b"caf\xc3\xa9,\xed\xa0\x80,\xf4\x90\x80\x80,\xc0\xaf,1": "invalid_utf8",  # surrogate, overlong
    b"\x00\x00\x00": "column_count:1",  # NUL bytes are UTF-8
    "ü,ß,漢字,pv,1".encode(): "non_numeric:user",
}


def test_readable_text_is_pythons_backslashreplace(spark):
    rng = random.Random(0)
    values = [*GARBAGE, b"", b"\\xff", "€𝄞".encode(), b"\xf0\x9f\x98", b"\xe0\x80\x80"]
    values += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(300)]
    values += [bytes(rng.choice(b"\x00a,\x80\xbf\xc2\xe0\xed\xf0\xf4\xff") for _ in range(12))]
    df = spark.createDataFrame([(v,) for v in values], "b binary").select(
        F.col("b").cast("string").alias("s")
    )
    got = df.select(
        quality.readable_text(F.col("s")).alias("text"),
        F.col("s").cast("binary").alias("bytes"),
        quality.is_utf8(F.col("s")).alias("utf8"),
    ).collect()
    for value, row in zip(values, got, strict=True):
        assert bytes(row["bytes"]) == value
        assert row["text"] == value.decode("utf-8", "backslashreplace"), value
        assert row["utf8"] == _is_utf8(value), value


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def quarantine_by_pyarrow(table: Path, version: int | None = None):
    """The quarantine table's rows at ``version`` read without Spark (pyarrow -> pandas)."""
    parts = [pq.read_table(f) for f in files_at(table, version)]
    return pa.concat_tables(parts).to_pandas().set_index("line_no").sort_index()


def user_behavior_config(src: Path, lake: Path, max_share: float) -> EtlConfig:
    return EtlConfig(
        source="user_behavior",
        input=str(src),
        output=str(lake),
        test_days=0,
        valid_days=0,
        max_quarantine_share=max_share,
    )


BINARY_LINES = [*GARBAGE][:1] + behavior_lines(12)[:6] + [*GARBAGE][1:] + behavior_lines(12)[6:]


@pytest.fixture(scope="module")
def binary_lake(spark, tmp_path_factory):
    """The module's one full ETL run: binary garbage mixed into a UserBehavior file."""
    src = tmp_path_factory.mktemp("binary") / "UserBehavior.csv"
    src.write_bytes(b"\n".join(BINARY_LINES) + b"\n")
    lake = tmp_path_factory.mktemp("lake")
    return lake, run_etl(spark, user_behavior_config(src, lake, 0.5))


def test_binary_lines_are_quarantined_byte_for_byte(binary_lake):
    lake, summary = binary_lake
    (report,) = summary.reports
    assert (report.read, report.kept, report.quarantined) == (18, 12, 6)
    assert summary.rows["events"] == report.kept
    table = quarantine_by_pyarrow(lake / "quarantine", 0)
    assert list(table.columns) == [f.name for f in QUARANTINE.fields if f.name != "line_no"]
    expected = {no: line for no, line in enumerate(BINARY_LINES, 1) if line in GARBAGE}
    assert sorted(table.index) == sorted(expected)
    for line_no, line in expected.items():
        row = table.loc[line_no]
        assert row["raw_bytes"] == line
        assert row["raw_length"] == len(line)
        assert row["raw"] == line.decode("utf-8", "backslashreplace")
        assert row["reason"] == GARBAGE[line], line
    assert (table["source"] == "user_behavior").all()


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def lake_state(lake: Path) -> tuple[dict[str, int], str]:
    tables = sorted(p.name for p in lake.iterdir() if (p / "_delta_log").is_dir())
    return {t: latest_version(lake / t)[0] for t in tables}, (
        lake / "_feature_spec.json"
    ).read_text()


def test_failed_run_writes_its_quarantine_first_and_names_the_version(spark, binary_lake, tmp_path):
    lake, _ = binary_lake

    def run(lines: list[bytes]):
        src = write_lines(tmp_path / "UserBehavior.csv", lines)
        return run_etl(spark, user_behavior_config(src, lake, 0.1))

    versions, spec = lake_state(lake)  # a good run's lake
    v = versions["quarantine"]
    bad = [b"1,2,3,pv", b"x,100,10,pv,1511658000", b"\xff\xfe", b"2,100,10,pv,15"]
    with pytest.raises(InputError) as err:
        run(behavior_lines(12) + bad)
    where = f"{lake / 'quarantine'}"
    assert str(err.value).endswith(
        "4 of 16 lines quarantined (25.00% > max 10.00%); "
        f"see quarantine table {where} at version {v + 1}"
    )
    table = quarantine_by_pyarrow(lake / "quarantine", v + 1)
    assert sorted(table.index) == [13, 14, 15, 16]
    assert list(table["raw_bytes"]) == bad
    after, spec_after = lake_state(lake)
    assert after == {**versions, "quarantine": v + 1} and spec_after == spec  # only the quarantine

    out_of_range = [b"1,100,10,pv,15", b"2,101,10,pv,16"]  # fits the layout, no line readable
    with pytest.raises(InputError) as err:
        run(out_of_range)
    assert str(err.value).endswith(
        f"no readable line (all 2 quarantined); see quarantine table {where} at version {v + 2}"
    )
    reasons = read_table(spark, lake, "quarantine", version=v + 2).select("reason").collect()
    assert {r["reason"] for r in reasons} == {"timestamp_out_of_range:ts"}

    for lines, words in (([], "file is empty"), ([b"user,time_stamp,adgroup_id"] * 2, "columns")):
        with pytest.raises(InputError, match=words) as err:
            run(lines)
        assert "quarantine" not in str(err.value)  # nothing written: not pointed at
        assert lake_state(lake) == ({**versions, "quarantine": v + 2}, spec)


# --- files of another format ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def taobao_lake(binary_lake, tmp_path_factory):
    """A good taobao_ad input (a tiny generated world) and a lake of a good run."""
    world = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(users=30, days=3, history_days=1, seed=5), world)
    return world, binary_lake[0]


def wide_file() -> bytes:
    header = ",".join(f"c{i}" for i in range(267))
    return (header + "\n" + ",".join("1" for _ in range(267)) + "\n").encode()


def user_behavior_file() -> bytes:
    return b"\n".join(behavior_lines(5)) + b"\n"


WRONG = [
    (
        "raw_sample.csv",
        wide_file,
        "has 267 columns where 6 are expected (not a layout any source reads)",
    ),
    (
        "raw_sample.csv",
        lambda: (DATA / "ali_ccp_raw" / "sample_skeleton_train.csv").read_bytes(),
        "has 6 columns but none of its first 6 lines fits taobao_ad "
        "raw_sample.csv (line 1: bad_label:nonclk) (looks like ali_ccp sample_skeleton_*.csv: "
        "--source ali_ccp)",
    ),
    (
        "raw_sample.csv",
        user_behavior_file,
        "has 5 columns where 6 are expected (looks like user_behavior "
        "UserBehavior.csv: --source user_behavior)",
    ),
    (
        "ad_feature.csv",
        lambda: (DATA / "taobao_ad_raw" / "user_profile.csv").read_bytes(),
        "has 9 columns where 6 are expected (looks like taobao_ad user_profile.csv)",
    ),
]


@pytest.mark.parametrize(("name", "content", "words"), WRONG, ids=["267", "skeleton", "ub", "ad"])
def test_wrong_format_is_one_line_and_writes_nothing(
    spark, taobao_lake, tmp_path, name, content, words
):
    world, lake = taobao_lake
    raw = tmp_path / "raw"
    shutil.copytree(world, raw)
    (raw / name).write_bytes(content())
    before = lake_state(lake)
    with pytest.raises(InputError) as err:
        run_etl(spark, EtlConfig(input=str(raw), output=str(lake)))
    message = str(err.value)
    assert message == f"taobao_ad: {raw / name} {words}"
    assert "\n" not in message and "quarantine" not in message
    assert lake_state(lake) == before


def test_wrong_format_through_spark_submit(taobao_lake, tmp_path):
    world, lake = taobao_lake
    raw = tmp_path / "raw"
    shutil.copytree(world, raw)
    (raw / "raw_sample.csv").write_bytes(user_behavior_file())
    before = lake_state(lake)
    done = spark_submit_etl(raw, lake, jars=True)
    assert done.returncode == 2, done.stderr[-3000:]
    assert error_lines(done) == [
        f"error: taobao_ad: {raw / 'raw_sample.csv'} has 5 columns where 6 are expected "
        "(looks like user_behavior UserBehavior.csv: --source user_behavior)"
    ]
    assert "Traceback" not in done.stdout + done.stderr
    assert lake_state(lake) == before
