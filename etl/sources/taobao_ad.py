"""taobao_ad: Ad Display/Click Data on Taobao.com (Tianchi dataset 56).

Two input layouts:

- the published files in one directory: raw_sample.csv, behavior_log.csv, ad_feature.csv and
  user_profile.csv, exactly as released (the last user_profile header name carries a trailing
  space; empty or ``NULL`` brand = null; pid strings such as ``430548_1007`` become the slot;
  time_stamp in unix seconds; clk -> click, and nonclk must be its complement);
- the FuxiCTR joined format (raw_sample joined with ad_feature and user_profile, time_stamp as a
  UTC+8 date-time string), recognised by its header, given as the file itself or as a directory
  holding such csv files. It yields impressions, ads and users; it has no behavior log, so
  ``behaviors`` is an empty table. Its ``click_sequence`` column (earlier clicked adgroup_ids,
  without times) is ignored by the outputs and kept only in the bronze table.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from etl import quality
from etl.features import USER_PROFILE_FIELDS
from etl.formats import TAOBAO_PROFILE_COLUMNS
from etl.quality import Field, FileSpec, ParsedFile
from etl.schemas import ADS, BEHAVIORS, RAW_IMPRESSIONS, USERS
from etl.sources.base import (
    InputError,
    SourceConfig,
    SourceData,
    conform,
    first_by_line,
    quarantine_of,
    report,
    require_file,
    require_path,
)
from etl.sources.layout import parse_files

SOURCE = "taobao_ad"
DEFAULT_DAYS = ("2017-01-01", "2018-01-01")  # valid time_stamp range (UTC+8 days)
PROFILE_COLUMNS = TAOBAO_PROFILE_COLUMNS


def _nonclk_not_complement(c):
    return c["nonclk"] != 1 - c["clk"]


RAW_SAMPLE = FileSpec(
    SOURCE,
    fields=(
        Field("user"),
        Field("time_stamp", "ts"),
        Field("adgroup_id"),
        Field("pid", "string"),
        Field("nonclk", "label"),
        Field("clk", "label"),
    ),
    headers=(("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),),
    layout="taobao_ad raw_sample.csv",
    checks=(("label_mismatch", _nonclk_not_complement),),
)
BEHAVIOR_LOG = FileSpec(
    SOURCE,
    fields=(
        Field("user"),
        Field("time_stamp", "ts"),
        Field("btag", "btag"),
        Field("cate", nullable=True),
        Field("brand", nullable=True),
    ),
    headers=(("user", "time_stamp", "btag", "cate", "brand"),),
    layout="taobao_ad behavior_log.csv",
)
AD_FEATURE = FileSpec(
    SOURCE,
    fields=(
        Field("adgroup_id"),
        Field("cate_id"),
        Field("campaign_id"),
        Field("customer"),
        Field("brand", nullable=True),
        Field("price", "double"),
    ),
    headers=(("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),),
    layout="taobao_ad ad_feature.csv",
    key=("adgroup_id",),
)
USER_PROFILE = FileSpec(
    SOURCE,
    fields=(Field("userid"), *[Field(n, "int", nullable=True) for n in PROFILE_COLUMNS]),
    # as published: the last name carries a trailing space (headers compare without spaces)
    headers=(("userid", *PROFILE_COLUMNS[:-1], "new_user_class_level "),),
    key=("userid",),
    layout="taobao_ad user_profile.csv",
)
JOINED = FileSpec(
    SOURCE,
    fields=(
        Field("clk", "label"),
        Field("time_stamp", "datetime8"),
        Field("userid"),
        Field("adgroup_id"),
        Field("pid", "string"),
        Field("cate_id"),
        Field("campaign_id"),
        Field("customer"),
        Field("brand", nullable=True),
        Field("price", "double"),
        *[Field(n, "int", nullable=True) for n in PROFILE_COLUMNS],
        Field("click_sequence", "string", nullable=True),
    ),
    headers=(
        (
            "clk",
            "time_stamp",
            "userid",
            "adgroup_id",
            "pid",
            "cate_id",
            "campaign_id",
            "customer",
            "brand",
            "price",
            *PROFILE_COLUMNS,
            "click_sequence",
        ),
    ),
    layout="taobao_ad FuxiCTR joined csv",
)
RAW_FILES = {
    "raw_sample.csv": RAW_SAMPLE,
    "behavior_log.csv": BEHAVIOR_LOG,
    "ad_feature.csv": AD_FEATURE,
    "user_profile.csv": USER_PROFILE,
}
HINT = (
    "taobao_ad expects raw_sample.csv, behavior_log.csv, ad_feature.csv and user_profile.csv, "
    "or FuxiCTR joined csv files"
)
_USER_COLUMNS = dict(zip(USER_PROFILE_FIELDS, PROFILE_COLUMNS, strict=True))  # USERS <- raw


def load(spark: SparkSession, input_path: str, cfg: SourceConfig) -> SourceData:
    path = require_path(spark, SOURCE, input_path)
    ts_range = cfg.ts_range(*DEFAULT_DAYS)
    joined = joined_files(spark, path)
    if joined:
        return _load_joined(spark, joined, ts_range, cfg)
    if not quality.is_dir(spark, path):
        raise InputError(f"{SOURCE}: {path} is not a directory nor a joined csv ({HINT})")
    files = {name: require_file(spark, SOURCE, path, name, HINT) for name in RAW_FILES}
    specs = [(file, RAW_FILES[name].with_ts_range(ts_range)) for name, file in files.items()]
    parsed = dict(zip(files, parse_files(spark, specs, cfg.persist), strict=True))
    return _raw_outputs(spark, parsed)


def joined_files(spark: SparkSession, path: str) -> list[str]:
    """The joined-format csv files at ``path`` (none when raw_sample.csv is there)."""
    if quality.is_dir(spark, path):
        if quality.path_exists(spark, f"{path.rstrip('/')}/raw_sample.csv"):
            return []
        candidates = quality.list_files(spark, path)
    else:
        candidates = [path]
    return [f for f in candidates if quality.matches_header(quality.first_line(spark, f), JOINED)]


def _raw_outputs(spark: SparkSession, parsed: dict[str, ParsedFile]) -> SourceData:
    sample = parsed["raw_sample.csv"].rows()
    log_rows = parsed["behavior_log.csv"].rows()
    ad_rows = parsed["ad_feature.csv"].rows()
    user_rows = parsed["user_profile.csv"].rows()
    return SourceData(
        behaviors=conform(
            log_rows,
            BEHAVIORS,
            {
                "user_id": F.col("user"),
                "ts": F.col("time_stamp"),
                "cate_id": F.col("cate"),
                "brand_id": F.col("brand"),
                "btag": F.col("btag"),
            },
        ),
        impressions=_impressions(sample, "user"),
        ads=_ads(ad_rows),
        users=_users(user_rows),
        bronze={f"bronze_{name[:-4]}": p.bronze() for name, p in parsed.items()},
        quarantine=quarantine_of(spark, list(parsed.values())),
        reports=[report(p) for p in parsed.values()],
        conversion_match="cate_brand",
        cached=[p.table for p in parsed.values()],
    )


def _load_joined(
    spark: SparkSession, files: list[str], ts_range: tuple[int, int], cfg: SourceConfig
) -> SourceData:
    spec = JOINED.with_ts_range(ts_range)
    parsed = parse_files(spark, [(f, spec) for f in files], cfg.persist)
    rows = quality.union_all([p.rows() for p in parsed])
    return SourceData(
        behaviors=spark.createDataFrame([], BEHAVIORS),
        impressions=_impressions(rows, "userid"),
        ads=_ads(first_by_line(rows.select("line_no", *AD_FEATURE.names), ["adgroup_id"])),
        users=_users(_profiled_users(rows)),
        bronze={"bronze_taobao_ad_joined": quality.union_all([p.bronze() for p in parsed])},
        quarantine=quarantine_of(spark, parsed),
        reports=[report(p) for p in parsed],
        conversion_match="cate_brand",
        cached=[p.table for p in parsed],
    )


def _profiled_users(rows: DataFrame) -> DataFrame:
    """One row per user that has a profile (a user without one has every profile column null)."""
    has_profile = F.greatest(*[F.col(c).isNotNull() for c in PROFILE_COLUMNS])
    profiled = rows.where(has_profile).select("line_no", "userid", *PROFILE_COLUMNS)
    return first_by_line(profiled, ["userid"])


def _impressions(rows: DataFrame, user_col: str) -> DataFrame:
    exprs = {
        "user_id": F.col(user_col),
        "ts": F.col("time_stamp"),
        "ad_id": F.col("adgroup_id"),
        "slot": F.col("pid"),
        "click": F.col("clk"),
    }
    return conform(rows, RAW_IMPRESSIONS, exprs)


def _ads(rows: DataFrame) -> DataFrame:
    exprs = {
        "ad_id": F.col("adgroup_id"),
        "cate_id": F.col("cate_id"),
        "campaign_id": F.col("campaign_id"),
        "customer_id": F.col("customer"),
        "brand_id": F.col("brand"),
        "price": F.col("price"),
    }
    return conform(rows, ADS, exprs)


def _users(rows: DataFrame) -> DataFrame:
    exprs = {"user_id": F.col("userid")} | {k: F.col(v) for k, v in _USER_COLUMNS.items()}
    return conform(rows, USERS, exprs)
