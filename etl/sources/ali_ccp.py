"""ali_ccp: Ali-CCP, the ESMM paper dataset (Tianchi dataset 408).

Ali-CCP has no timestamps and no sessions, so the adapter yields no behaviors, impressions, ads
or users; it fills ``SourceData.wide_samples`` instead: one row per sample with
``impression_id`` (long, xxhash64 of the file name and the sample id, or of the line number in
the preprocessed formats), ``user_key`` (long: the field-101 id, 0 if absent), ``split`` (from
the file name: train / valid for a "val" file / test), ``click``, ``conversion`` (= buy or
purchase), ``f_<field>`` categorical columns (raw ids as strings) and ``d_<field>`` dense
columns (double). Rows with click=0 and buy=1 are kept; each file report counts them in
``flags["conversion_without_click"]`` and a warning is logged.

Three input formats (``SourceConfig.ali_ccp_format``, default auto-detected):

- ``raw``: sample_skeleton_{train,test}.csv (``sample_id,click,buy,common_feature_index,
  feature_num,feature_list``) joined with common_features_{train,test}.csv
  (``common_feature_index,feature_num,feature_list``); a feature_list is items
  ``field\\x02feature_id\\x03value`` joined by ``\\x01``. Single-valued fields give string
  columns (the last id seen, as torch-rechub does), the multi-valued fields array<string>
  columns (all ids, skeleton then common features, each in the order its line lists them): the
  user histories 109_14, 110_14, 127_14, 150_14 as ``s_<field>`` (sequence fields
  ``hist_<field>`` of samples, the first ``max_len`` ids: etl/wide_sequences.py), the item's
  intention nodes 210 as ``f_210`` (left out of samples); the cross fields 508, 509, 702, 853
  also give their value as ``d_<field>``. A sample whose
  common_feature_index is missing from the common features keeps null user columns (counted in
  ``flags["missing_common_features"]``).
- ``torch_rechub``: its preprocessed csv (header ``click,purchase,101,...,D853``): every field is
  one label-encoded id (string column, the *_14 and 210 fields included) and the ``D*`` columns
  become ``d_<field>``.
- ``aitm``: PaddleRec/AITM preprocessed csv, 20 columns, header optional.

In ``auto`` mode a directory holding several formats uses raw, else torch_rechub, else aitm, and
logs a warning naming the csv files it ignores.
"""

from __future__ import annotations

import logging
import re

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from etl import quality
from etl.quality import Field, FileSpec, ParsedFile
from etl.sources.base import (
    FileReport,
    InputError,
    SourceConfig,
    SourceData,
    quarantine_of,
    report,
    require_path,
)
from etl.sources.layout import parse_files

log = logging.getLogger(__name__)

SOURCE = "ali_ccp"
SINGLE_FIELDS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",
    "205", "206", "207", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
HISTORY_FIELDS = ("109_14", "110_14", "127_14", "150_14")  # the user's behaviors: sequences
MULTI_FIELDS = (*HISTORY_FIELDS, "210")
KNOWN_FIELDS = SINGLE_FIELDS + MULTI_FIELDS
RAW_DENSE = ("508", "509", "702", "853")
ITEM, FIELD, VALUE = "\x01", "\x02", "\x03"
_NUMBER = r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?"
ITEM_RE = f"^[0-9]+(_[0-9]+)?{FIELD}[0-9]{{1,18}}{VALUE}{_NUMBER}$"

TORCH_RECHUB_CATS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",
    "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
    "109_14", "110_14", "127_14", "150_14",
)  # fmt: skip
TORCH_RECHUB_DENSE = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")
AITM_CATS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",
    "205", "206", "207", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
FORMATS = ("raw", "torch_rechub", "aitm")


def _items(feature_list: Column) -> Column:
    return F.split(feature_list, ITEM, -1)


def _count_mismatch(c: dict[str, Column]) -> Column:
    return F.size(_items(c["feature_list"])) != c["feature_num"]


def _bad_item(c: dict[str, Column]) -> Column:
    return F.exists(_items(c["feature_list"]), lambda x: ~x.rlike(ITEM_RE))


def _unknown_field(c: dict[str, Column]) -> Column:
    known = F.array(*[F.lit(f) for f in KNOWN_FIELDS])
    return F.exists(
        _items(c["feature_list"]),
        lambda x: ~F.array_contains(known, F.substring_index(x, FIELD, 1)),
    )


def _buy_without_click(c: dict[str, Column]) -> Column:
    return (c["click"] == 0) & (c["buy"] == 1)


def _purchase_without_click(c: dict[str, Column]) -> Column:
    return (c["click"] == 0) & (c["purchase"] == 1)


FLAG = "conversion_without_click"
FEATURE_CHECKS = (
    ("feature_count_mismatch", _count_mismatch),
    ("bad_feature", _bad_item),
    ("unknown_field", _unknown_field),
)
SKELETON = FileSpec(
    SOURCE,
    fields=(
        Field("sample_id"),
        Field("click", "label"),
        Field("buy", "label"),
        Field("common_feature_index", "string"),
        Field("feature_num", "int"),
        Field("feature_list", "string"),
    ),
    headers=(("sample_id", "click", "buy", "common_feature_index", "feature_num", "feature_list"),),
    key=("sample_id",),
    checks=FEATURE_CHECKS,
    flags=((FLAG, _buy_without_click),),
    layout="ali_ccp sample_skeleton_*.csv",
)
COMMON = FileSpec(
    SOURCE,
    fields=(
        Field("common_feature_index", "string"),
        Field("feature_num", "int"),
        Field("feature_list", "string"),
    ),
    headers=(("common_feature_index", "feature_num", "feature_list"),),
    key=("common_feature_index",),
    checks=FEATURE_CHECKS,
    layout="ali_ccp common_features_*.csv",
)
TORCH_RECHUB = FileSpec(
    SOURCE,
    fields=(
        Field("click", "label"),
        Field("purchase", "label"),
        *[Field(f, "id") for f in TORCH_RECHUB_CATS],
        *[Field(f"D{f}", "double") for f in TORCH_RECHUB_DENSE],
    ),
    headers=(("click", "purchase", *TORCH_RECHUB_CATS, *[f"D{f}" for f in TORCH_RECHUB_DENSE]),),
    dedupe=False,  # label-encoded rows have no id: identical lines are distinct samples
    flags=((FLAG, _purchase_without_click),),
    layout="ali_ccp torch-rechub csv",
)
AITM = FileSpec(
    SOURCE,
    fields=(
        Field("click", "label"),
        Field("purchase", "label"),
        *[Field(f, "id") for f in AITM_CATS],
    ),
    headers=(("click", "purchase", *AITM_CATS),),
    dedupe=False,
    flags=((FLAG, _purchase_without_click),),
    layout="ali_ccp AITM csv",
)
PREPROCESSED = {"torch_rechub": TORCH_RECHUB, "aitm": AITM}


def load(spark: SparkSession, input_path: str, cfg: SourceConfig) -> SourceData:
    path = require_path(spark, SOURCE, input_path)
    fmt, files = detect(spark, path, cfg.ali_ccp_format)
    if fmt == "raw":
        return _load_raw(spark, files, cfg)
    return _load_preprocessed(spark, fmt, files, cfg)


# --- format detection ---------------------------------------------------------------------------
def detect(spark: SparkSession, path: str, wanted: str = "auto") -> tuple[str, list[str]]:
    """(format, files) for ``path`` (a directory or one csv file)."""
    if wanted not in ("auto", *FORMATS):
        raise InputError(f"{SOURCE}: unknown format {wanted!r} (expected auto or {FORMATS})")
    files = quality.list_files(spark, path) if quality.is_dir(spark, path) else [path]
    found: dict[str, list[str]] = {f: [] for f in FORMATS}
    for file in files:
        fmt = _format_of(spark, file)
        if fmt:
            found[fmt].append(file)
    order = FORMATS if wanted == "auto" else (wanted,)
    for fmt in order:
        if found[fmt]:
            ignored = [f for other in FORMATS if other != fmt for f in found[other]]
            if ignored:
                log.warning("%s: using the %s files, ignoring %s", SOURCE, fmt, ", ".join(ignored))
            return fmt, found[fmt]
    want = "Ali-CCP" if wanted == "auto" else f"Ali-CCP {wanted}"
    raise InputError(
        f"{SOURCE}: no {want} file in {path} (expected sample_skeleton_*.csv with "
        "common_features_*.csv, torch-rechub or AITM csv files)"
    )


def _format_of(spark: SparkSession, file: str) -> str | None:
    name = file.rsplit("/", 1)[-1]
    if name.startswith("sample_skeleton_"):
        return "raw"
    if name.startswith("common_features_"):
        return None  # read with its skeleton file
    line = quality.first_line(spark, file)
    for fmt, spec in PREPROCESSED.items():
        if quality.matches_header(line, spec) or _numeric_row(line, len(spec.fields)):
            return fmt
    return None


def _numeric_row(line: str | None, n_columns: int) -> bool:
    parts = (line or "").split(",")
    return len(parts) == n_columns and all(re.fullmatch(r"[0-9.eE+-]+", p.strip()) for p in parts)


def splits_of(files: list[str]) -> list[str]:
    """Each file's split, refusing (before anything is read) an input without a train file:
    its vocabularies would be empty and every categorical field dropped."""
    splits = [split_of(f) for f in files]
    if "train" not in splits:
        names = ", ".join(f.rsplit("/", 1)[-1] for f in files)
        raise InputError(f"{SOURCE}: no train file among {names}: the vocabularies need one")
    return splits


def split_of(file: str) -> str:
    name = file.rsplit("/", 1)[-1].lower()
    for token, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        if token in name:
            return split
    raise InputError(
        f"{SOURCE}: cannot tell the split of {file}: its name needs train, val or test"
    )


def _base_name(file: str) -> str:
    return file.rsplit("/", 1)[-1]


def _bronze_name(file: str) -> str:
    stem = _base_name(file).rsplit(".", 1)[0]
    return "bronze_" + re.sub(r"[^a-z0-9_]", "_", stem.lower())


# --- raw format ---------------------------------------------------------------------------------
def _load_raw(spark: SparkSession, skeletons: list[str], cfg: SourceConfig) -> SourceData:
    splits = splits_of(skeletons)
    commons = [_common_file_of(spark, f) for f in skeletons]
    files = [(f, SKELETON) for f in skeletons] + [(f, COMMON) for f in commons]
    parsed = parse_files(spark, files, cfg.persist)
    reports: list[FileReport] = []
    wides: list[DataFrame] = []
    n = len(skeletons)
    for skeleton, common, split in zip(parsed[:n], parsed[n:], splits, strict=True):
        wide, missing = _raw_wide(skeleton, common, split)
        if missing:
            log.warning(
                "%s: %s: %d samples without common features", SOURCE, skeleton.path, missing
            )
        reports += [report(skeleton, {"missing_common_features": missing}), report(common)]
        wides.append(wide)
    return _source_data(spark, parsed, reports, wides)


def _common_file_of(spark: SparkSession, skeleton_file: str) -> str:
    directory, name = skeleton_file.rsplit("/", 1)
    common = f"{directory}/common_features_{name[len('sample_skeleton_') :]}"
    if not quality.path_exists(spark, common):
        raise InputError(f"{SOURCE}: required file not found: {common} (pairs with {name})")
    return common


def _features(feature_list: Column) -> Column:
    """array<struct<field, fid, value>> of a feature_list."""
    return F.transform(
        _items(feature_list),
        lambda x: F.struct(
            F.substring_index(x, FIELD, 1).alias("field"),
            F.substring_index(F.substring_index(x, FIELD, -1), VALUE, 1).alias("fid"),
            F.substring_index(x, VALUE, -1).alias("value"),
        ),
    )


def _has_field(name: str):
    # a one-argument lambda: F.filter reads a second argument as the element index
    return lambda x: x["field"] == F.lit(name)


def column_of(field: str) -> str:
    """The raw wide column of a field: ``s_`` for the user histories, else ``f_``."""
    return f"s_{field}" if field in HISTORY_FIELDS else f"f_{field}"


def _field_columns(features: Column, prefix: str) -> list[Column]:
    cols = []
    for f in KNOWN_FIELDS:
        hits = F.filter(features, _has_field(f))
        if f in MULTI_FIELDS:
            cols.append(F.transform(hits, lambda x: x["fid"]).alias(prefix + column_of(f)))
            continue
        last = F.try_element_at(hits, F.lit(-1))
        cols.append(last["fid"].alias(f"{prefix}f_{f}"))
        if f in RAW_DENSE:
            cols.append(last["value"].cast("double").alias(f"{prefix}d_{f}"))
    return cols


def raw_wide_columns() -> list[str]:
    cols = []
    for f in KNOWN_FIELDS:
        cols.append(column_of(f))
        if f in RAW_DENSE:
            cols.append(f"d_{f}")
    return cols


def _raw_wide(skeleton: ParsedFile, common: ParsedFile, split: str) -> tuple[DataFrame, int]:
    s = skeleton.rows().select(
        "sample_id", "click", "buy", "common_feature_index",
        *_field_columns(_features(F.col("feature_list")), "s_"),
    )  # fmt: skip
    c = common.rows().select(
        F.col("common_feature_index").alias("c_index"),
        *_field_columns(_features(F.col("feature_list")), "c_"),
    )
    joined = s.join(c, s["common_feature_index"] == c["c_index"], "left")
    user = F.coalesce(F.col("s_f_101"), F.col("c_f_101")).cast("long")
    wide = joined.select(
        F.xxhash64(F.lit(_base_name(skeleton.path)), "sample_id").alias("impression_id"),
        F.coalesce(user, F.lit(0).cast("long")).alias("user_key"),
        F.lit(split).alias("split"),
        "click",
        F.col("buy").alias("conversion"),
        *[_merge(col) for col in raw_wide_columns()],
    )
    wide = wide.select(*_key_columns(), *raw_wide_columns())
    index = c.select("c_index")
    missing = s.join(index, s["common_feature_index"] == index["c_index"], "left_anti").count()
    return wide, missing


def _merge(col: str) -> Column:
    s, c = F.col(f"s_{col}"), F.col(f"c_{col}")
    if col[2:] in MULTI_FIELDS:
        empty = F.array().cast("array<string>")
        return F.concat(F.coalesce(s, empty), F.coalesce(c, empty)).alias(col)
    return F.coalesce(s, c).alias(col)


def _key_columns() -> list[Column]:
    names = ("impression_id", "user_key", "split", "click", "conversion")
    types = ("long", "long", "string", "int", "int")
    return [F.col(n).cast(t).alias(n) for n, t in zip(names, types, strict=True)]


# --- preprocessed formats -----------------------------------------------------------------------
def _load_preprocessed(
    spark: SparkSession, fmt: str, files: list[str], cfg: SourceConfig
) -> SourceData:
    splits = splits_of(files)
    parsed = parse_files(spark, [(file, PREPROCESSED[fmt]) for file in files], cfg.persist)
    reports = [report(p) for p in parsed]
    wides = [_preprocessed_wide(p, split) for p, split in zip(parsed, splits, strict=True)]
    return _source_data(spark, parsed, reports, wides)


def preprocessed_wide_columns(fmt: str) -> list[str]:
    spec = PREPROCESSED[fmt]
    cats = [f"f_{f.name}" for f in spec.fields if f.kind == "id"]
    dense = [f"d_{f.name[1:]}" for f in spec.fields if f.kind == "double"]
    return cats + dense


def _preprocessed_wide(parsed: ParsedFile, split: str) -> DataFrame:
    features = []
    for f in parsed.spec.fields:
        if f.kind == "id":
            features.append(F.col(f.name).alias(f"f_{f.name}"))
        elif f.kind == "double":
            features.append(F.col(f.name).alias(f"d_{f.name[1:]}"))
    wide = parsed.rows().select(
        F.xxhash64(F.lit(_base_name(parsed.path)), "line_no").alias("impression_id"),
        F.col("101").cast("long").alias("user_key"),
        F.lit(split).alias("split"),
        "click",
        F.col("purchase").alias("conversion"),
        *features,
    )
    return wide.select(*_key_columns(), *preprocessed_wide_columns(parsed_format(parsed)))


def parsed_format(parsed: ParsedFile) -> str:
    return next(fmt for fmt, spec in PREPROCESSED.items() if spec == parsed.spec)


# --- shared -------------------------------------------------------------------------------------
def _source_data(
    spark: SparkSession, parsed: list[ParsedFile], reports: list[FileReport], wides: list[DataFrame]
) -> SourceData:
    return SourceData(
        behaviors=None,
        impressions=None,
        ads=None,
        users=None,
        bronze={_bronze_name(p.path): p.bronze() for p in parsed},
        quarantine=quarantine_of(spark, parsed),
        reports=reports,
        conversion_match="label",
        wide_samples=quality.union_all(wides),
        cached=[p.table for p in parsed],
    )
