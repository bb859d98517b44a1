"""Quarantine machinery: raw text lines -> typed rows kept + malformed lines with a reason.

Every raw file is read as text lines (``spark.read.text``; never schema inference), numbered
1-based in file order, split on the separator and parsed against an explicit per-file
:class:`FileSpec`. A line is either *kept* (typed columns) or *quarantined* (QUARANTINE schema:
source, file, line_no, raw, raw_bytes, raw_length, reason). ``raw_bytes`` holds the line's bytes
exactly as read (without its line break), ``raw`` the same line as valid UTF-8 text: verbatim
when the line is UTF-8, else with every byte that is not part of a UTF-8 character written as
``\\xNN`` (what Python's ``bytes.decode("utf-8", "backslashreplace")`` gives), so the table
reads with any Parquet reader however binary the input was.

Reasons are ``code`` or ``code:detail``; the code is everything before the first colon:

- ``empty_line``          the line is empty or only whitespace
- ``invalid_utf8``        the line's bytes are not UTF-8 (binary garbage, another encoding)
- ``header``              a header line that is not the first line of the file
- ``column_count``        wrong number of columns (detail: the count found)
- ``missing``             a required column is empty (detail: column)
- ``non_numeric``         an id / number column does not parse (detail: column)
- ``bad_label``           a 0/1 label column holds something else (detail: column)
- ``bad_timestamp``       a timestamp column does not parse as a date-time (detail: column)
- ``timestamp_out_of_range``  outside the source's valid range (detail: column)
- ``unknown_behavior``    a behavior type outside pv/cart/fav/buy (detail: column)
- any code of a :class:`FileSpec` row check (e.g. ``label_mismatch``, ``bad_feature``)
- ``duplicate``           an exact copy of an earlier kept line of the same file
- ``duplicate_key``       a later line repeating the unique key of an earlier kept line
- ``truncated_last_line`` the last line has no newline and fails a check (detail: that reason)

Counting (:class:`ParsedFile`): ``read`` counts every line of the file except a header on line
1 (the only place a header is expected; a header anywhere else is quarantined), so
``read == kept + quarantined`` and an empty or header-only file has ``read == 0``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from etl.features import BTAGS, NULL_TOKENS
from etl.schemas import QUARANTINE

log = logging.getLogger(__name__)

UTC8 = timezone(timedelta(hours=8))

# Kinds of a raw column -> (regex the trimmed text must match, reason code when it does not).
KINDS: dict[str, tuple[str, str]] = {
    "long": (r"^-?[0-9]{1,18}$", "non_numeric"),
    "int": (r"^-?[0-9]{1,9}$", "non_numeric"),
    "id": (r"^[0-9]{1,18}$", "non_numeric"),  # kept as its string (label-encoded raw ids)
    "double": (r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?$", "non_numeric"),
    "label": (r"^[01]$", "bad_label"),
    "btag": ("^(" + "|".join(BTAGS) + ")$", "unknown_behavior"),
    "ts": (r"^[0-9]{1,12}$", "bad_timestamp"),  # unix seconds
    "datetime8": (r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$", "bad_timestamp"),
    "string": (r"", ""),
}
TS_KINDS = ("ts", "datetime8")  # datetime8: 'yyyy-MM-dd HH:mm:ss' in UTC+8 -> unix seconds
_CASTS = {"long": "long", "int": "int", "double": "double", "label": "int", "ts": "long"}

RowCheck = Callable[[dict[str, Column]], Column]  # True where a fully typed row is bad


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = "long"  # a key of KINDS
    nullable: bool = False


@dataclass(frozen=True)
class FileSpec:
    """Explicit layout of one raw file: columns in order, optional header, validity rules."""

    source: str
    fields: tuple[Field, ...]
    headers: tuple[tuple[str, ...], ...] = ()  # header lines recognised (first one = published)
    sep: str = ","
    ts_range: tuple[int, int] | None = None  # valid [min, max) unix seconds of TS_KINDS columns
    key: tuple[str, ...] = ()  # unique key; later kept lines repeating it -> duplicate_key
    # exact duplicate lines -> duplicate; off where identical lines are distinct records (e.g.
    # label-encoded samples without an id)
    dedupe: bool = True
    layout: str = ""  # what the layout is called in messages, e.g. "taobao_ad raw_sample.csv"
    flags: tuple[tuple[str, RowCheck], ...] = ()  # (name, predicate): kept rows counted, kept
    checks: tuple[tuple[str, RowCheck], ...] = ()  # (reason, bad-row predicate), in order

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def with_ts_range(self, ts_range: tuple[int, int] | None) -> FileSpec:
        return replace(self, ts_range=ts_range)


@dataclass
class ParsedFile:
    """One parsed file: ``table`` holds every line (line_no, raw, reason, typed columns)."""

    spec: FileSpec
    path: str
    table: DataFrame
    read: int
    kept: int
    quarantined: int
    flags: dict[str, int] = field(default_factory=dict)  # kept rows per FileSpec.flags entry

    def rows(self) -> DataFrame:
        """Kept rows: typed columns plus ``line_no``."""
        return self.table.where(F.col("reason").isNull()).select("line_no", *self.spec.names)

    def bronze(self) -> DataFrame:
        """Kept rows exactly as parsed (typed columns only)."""
        return self.table.where(F.col("reason").isNull()).select(*self.spec.names)

    def quarantine(self) -> DataFrame:
        """Quarantined lines in the QUARANTINE schema."""
        q = self.table.where(F.col("reason").isNotNull())
        return q.select(
            F.lit(self.spec.source).alias("source"),
            F.lit(self.path).alias("file"),
            F.col("line_no").cast("long").alias("line_no"),
            readable_text(F.col("raw")).alias("raw"),
            F.col("raw").cast("binary").alias("raw_bytes"),
            F.octet_length("raw").cast("int").alias("raw_length"),
            F.col("reason"),
        )


# One UTF-8 character as upper-case hex (RFC 3629: no overlong forms, no surrogates, <= U+10FFFF).
_UTF8_HEX = "|".join(
    (
        "[0-7][0-9A-F]",
        "(?:C[2-9A-F]|D[0-9A-F])[89AB][0-9A-F]",
        "E0[AB][0-9A-F][89AB][0-9A-F]",
        "E[1-9A-CEF](?:[89AB][0-9A-F]){2}",
        "ED[89][0-9A-F][89AB][0-9A-F]",
        "F0[9AB][0-9A-F](?:[89AB][0-9A-F]){2}",
        "F[1-3](?:[89AB][0-9A-F]){3}",
        "F48[0-9A-F](?:[89AB][0-9A-F]){2}",
    )
)
# Runs of UTF-8 characters, or one stray byte: every match has an even length and one of the
# two always matches, so the scan stays on byte boundaries.
_HEX_TOKENS = f"(?:{_UTF8_HEX})+|[8-9A-F][0-9A-F]"


def is_utf8(raw: Column) -> Column:
    """True where the string's bytes are valid UTF-8 (Spark keeps a text line's bytes as read;
    decoding replaces what is not UTF-8, so the round trip changes exactly those lines)."""
    return raw == F.decode(raw.cast("binary"), "UTF-8")


def readable_text(raw: Column) -> Column:
    """``raw`` when it is UTF-8, else its bytes decoded with each stray byte as ``\\xNN``."""
    tokens = F.regexp_extract_all(F.hex(raw.cast("binary")), F.lit(_HEX_TOKENS), 0)

    def text(t: Column) -> Column:  # a stray byte: the only 2-digit token at or above 0x80
        stray = (F.length(t) == 2) & (t >= F.lit("80"))
        return F.when(stray, F.concat(F.lit("\\x"), F.lower(t))).otherwise(
            F.decode(F.unhex(t), "UTF-8")
        )

    return F.when(is_utf8(raw), raw).otherwise(F.array_join(F.transform(tokens, text), ""))


def date_range(first: str, end: str) -> tuple[int, int]:
    """[first, end) as unix seconds, both ISO dates read as UTC+8 days."""
    return (_utc8_day(first), _utc8_day(end))


def _utc8_day(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC8).timestamp())


# --- file system (Hadoop FileSystem, so hdfs://, s3a://, file: paths work as local ones) -------
def norm_path(path: str | os.PathLike[str]) -> str:
    text = str(path)
    return text if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", text) else os.path.abspath(text)


def _fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath))


def is_dir(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath) and fs.getFileStatus(hpath).isDirectory())


def list_files(spark: SparkSession, directory: str, suffix: str = ".csv") -> list[str]:
    """Plain files directly in ``directory`` whose name ends with ``suffix``, sorted by name."""
    fs, hpath = _fs(spark, directory)
    found = []
    for status in fs.listStatus(hpath):
        name = status.getPath().getName()
        if status.isFile() and name.endswith(suffix) and not name.startswith((".", "_")):
            found.append(f"{directory.rstrip('/')}/{name}")
    return sorted(found)


def first_line(spark: SparkSession, path: str) -> str | None:
    """The file's first line (without its newline), None when the file is empty."""
    jvm = spark.sparkContext._jvm
    fs, hpath = _fs(spark, path)
    stream = fs.open(hpath)
    try:
        line = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8")).readLine()
    finally:
        stream.close()
    return None if line is None else str(line)


def ends_with_newline(spark: SparkSession, path: str) -> bool:
    """True when the file is empty or its last byte is a line break."""
    fs, hpath = _fs(spark, path)
    length = int(fs.getFileStatus(hpath).getLen())
    if length == 0:
        return True
    stream = fs.open(hpath)
    try:
        stream.seek(length - 1)
        return int(stream.read()) in (10, 13)
    finally:
        stream.close()


# --- reading ------------------------------------------------------------------------------------
def read_lines(
    spark: SparkSession, path: str, need_count: bool = True
) -> tuple[DataFrame, int | None]:
    """Lines of one file as (line_no, raw) with exact 1-based line numbers, and the line count.

    A text file's splits become partitions in file order, and inside a partition rows keep file
    order, so line_no = lines in earlier partitions + position inside the partition. One cheap
    job counts the lines per partition (skipped for a one-partition file when ``need_count`` is
    false; the count is then None). Everything stays in the JVM (no Python row transfer).
    """
    text = spark.read.text(path)
    n_parts = text.rdd.getNumPartitions()
    tagged = text.select(
        F.spark_partition_id().alias("_part"),
        F.monotonically_increasing_id().alias("_mid"),
        F.col("value").alias("raw"),
    )
    if n_parts <= 1 and not need_count:
        return tagged.select((F.col("_mid") + 1).alias("line_no"), "raw"), None
    counts = {r["_part"]: r["count"] for r in tagged.groupBy("_part").count().collect()}
    offsets, total = [], 0
    for part in range(n_parts):
        offsets.append(total)
        total += counts.get(part, 0)
    offset = F.element_at(
        F.array(*[F.lit(o).cast("long") for o in offsets or [0]]), F.col("_part") + 1
    )
    position = F.col("_mid") - F.shiftleft(F.col("_part").cast("long"), 33)
    lines = tagged.select((offset + position + 1).alias("line_no"), "raw")
    return lines, total


def parse_file(spark: SparkSession, path: str, spec: FileSpec, persist: bool = True) -> ParsedFile:
    """Read, number, parse and classify every line of ``path``; count read/kept/quarantined."""
    return parse_all(spark, [(path, spec)], persist)[0]


def parse_all(
    spark: SparkSession, files: list[tuple[str, FileSpec]], persist: bool = True
) -> list[ParsedFile]:
    """:func:`parse_file` of every file, all counted in one Spark job."""
    files = [(norm_path(path), spec) for path, spec in files]
    tables = []
    for path, spec in files:
        ends_nl = ends_with_newline(spark, path)
        lines, n_lines = read_lines(spark, path, need_count=not ends_nl)
        table = classify(lines, spec, n_lines or 0, ends_nl)
        tables.append(table.persist(StorageLevel.MEMORY_AND_DISK) if persist else table)
    counts = [
        _counts(i, t, spec) for i, (t, (_, spec)) in enumerate(zip(tables, files, strict=True))
    ]
    rows = {r["file"]: r for r in union_all(counts).collect()}
    parsed = []
    for i, ((path, spec), table) in enumerate(zip(files, tables, strict=True)):
        read, bad = int(rows[i]["read"]), int(rows[i]["bad"])
        flags = {name: int(n) for (name, _), n in zip(spec.flags, rows[i]["flags"], strict=True)}
        log.info("%s %s: read %d kept %d quarantined %d", spec.source, path, read, read - bad, bad)
        for name, n in flags.items():
            if n:
                log.warning("%s %s: %d kept rows with %s", spec.source, path, n, name)
        parsed.append(ParsedFile(spec, path, table, read, read - bad, bad, flags))
    return parsed


def _counts(index: int, table: DataFrame, spec: FileSpec) -> DataFrame:
    """One row: the file's index, its lines read, quarantined and kept per FileSpec.flags."""
    kept, cols = F.col("reason").isNull(), {name: F.col(name) for name in spec.names}
    flags = [
        F.count(F.when(kept & F.coalesce(check(cols), F.lit(False)), 1)) for _, check in spec.flags
    ]
    return table.agg(
        F.lit(index).alias("file"),
        F.count(F.lit(1)).alias("read"),
        F.count("reason").alias("bad"),
        F.array(*flags).cast("array<bigint>").alias("flags"),
    )


def classify(lines: DataFrame, spec: FileSpec, n_lines: int, ends_nl: bool) -> DataFrame:
    """Add ``reason`` (null = kept) and the typed columns; drop a header on line 1."""
    header = _is_header(F.col("raw"), spec)
    df = lines.where(~((F.col("line_no") == 1) & header))
    parts = F.split(F.col("raw"), re.escape(spec.sep), -1)
    texts = [F.trim(F.get(F.col("_f"), i)).alias(f"_t{i}") for i in range(len(spec.fields))]
    df = df.withColumn("_f", parts).select("line_no", "raw", F.size("_f").alias("_n"), *texts)
    df = df.select(
        "*", *[_typed(f, F.col(f"_t{i}")).alias(f.name) for i, f in enumerate(spec.fields)]
    )
    df = df.withColumn("reason", _reason(spec, header))
    if not ends_nl:  # a last line without newline that fails to parse was cut off
        last = (F.col("line_no") == n_lines) & F.col("reason").isNotNull()
        truncated = F.concat(F.lit("truncated_last_line:"), F.col("reason"))
        df = df.withColumn("reason", F.when(last, truncated).otherwise(F.col("reason")))
    df = _mark_duplicates(df, spec)
    # the raw text is only needed for quarantined lines
    df = df.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("raw")))
    return df.select("line_no", "raw", "reason", *spec.names)


def _is_header(raw: Column, spec: FileSpec) -> Column:
    if not spec.headers:
        return F.lit(False)
    normalized = F.lower(F.regexp_replace(raw, r"[\s\x{FEFF}]", ""))
    return normalized.isin(*[_norm_header(h, spec.sep) for h in spec.headers])


def _norm_header(names: tuple[str, ...], sep: str) -> str:
    return re.sub(r"\s", "", sep.join(names)).lower()


def _is_null(f: Field, text: Column) -> Column:
    return text.isin(*NULL_TOKENS) if f.nullable else F.lit(False)


def _typed(f: Field, text: Column) -> Column:
    """The typed value of a column (null when null, malformed or unparseable)."""
    regex = KINDS[f.kind][0]
    ok = ~_is_null(f, text) & (text.rlike(regex) if regex else F.lit(True))
    if f.kind == "datetime8":
        return F.when(ok, _datetime8_seconds(text))
    if f.kind in _CASTS:
        return F.when(ok, text.cast(_CASTS[f.kind]))
    return F.when(ok, text)


def _datetime8_seconds(text: Column) -> Column:
    """'yyyy-MM-dd HH:mm:ss' read in UTC+8 -> unix seconds; null for an impossible date-time.

    Plain arithmetic on the parts (no parser): independent of the session time zone, of ANSI
    mode and of the legacy time parser policy.
    """
    y, m, d = (text.substr(pos, n).cast("int") for pos, n in ((1, 4), (6, 2), (9, 2)))
    hh, mi, ss = (text.substr(pos, 2).cast("int") for pos in (12, 15, 18))
    month_ok = m.between(1, 12)
    days_in_month = F.when(month_ok, F.dayofmonth(F.last_day(F.make_date(y, m, F.lit(1)))))
    valid = month_ok & (d >= 1) & (d <= days_in_month) & (hh < 24) & (mi < 60) & (ss < 60)
    seconds = F.unix_date(F.make_date(y, m, d)).cast("long") * 86400 + hh * 3600 + mi * 60 + ss
    return F.when(F.coalesce(valid, F.lit(False)), seconds - 8 * 3600)


def _reason(spec: FileSpec, header: Column) -> Column:
    """The first failed check of a line, in order; null when the line is kept."""
    n = len(spec.fields)
    reason = F.when(F.trim(F.col("raw")) == "", F.lit("empty_line"))
    reason = reason.when(~is_utf8(F.col("raw")), F.lit("invalid_utf8"))
    reason = reason.when(header, F.lit("header"))
    reason = reason.when(
        F.col("_n") != n, F.concat(F.lit("column_count:"), F.col("_n").cast("string"))
    )
    for i, f in enumerate(spec.fields):
        for bad, why in _field_rules(spec, f, F.col(f"_t{i}"), F.col(f.name)):
            reason = reason.when(bad, F.lit(why))
    cols = {f.name: F.col(f.name) for f in spec.fields}
    for why, check in spec.checks:
        reason = reason.when(F.coalesce(check(cols), F.lit(False)), F.lit(why))
    return reason


def _field_rules(spec: FileSpec, f: Field, text: Column, typed: Column) -> list[tuple[Column, str]]:
    regex, code = KINDS[f.kind]
    present = ~_is_null(f, text)
    rules = [] if f.nullable else [(text == "", f"missing:{f.name}")]
    if regex:
        rules.append((present & ~text.rlike(regex), f"{code}:{f.name}"))
    if f.kind in TS_KINDS:
        rules.append((present & typed.isNull(), f"bad_timestamp:{f.name}"))
        if spec.ts_range is not None:
            lo, hi = spec.ts_range
            out = present & ((typed < F.lit(lo)) | (typed >= F.lit(hi)))
            rules.append((out, f"timestamp_out_of_range:{f.name}"))
    return rules


def _mark_duplicates(df: DataFrame, spec: FileSpec) -> DataFrame:
    """Exact copies of an earlier kept line -> duplicate; repeated unique keys -> duplicate_key."""
    if spec.dedupe:
        kept = F.col("reason").isNull()
        first = Window.partitionBy(kept, F.col("raw")).orderBy("line_no")
        dup = kept & (F.row_number().over(first) > 1)
        df = df.withColumn("reason", F.when(dup, F.lit("duplicate")).otherwise(F.col("reason")))
    if spec.key:
        kept = F.col("reason").isNull()
        by_key = Window.partitionBy(kept, *spec.key).orderBy("line_no")
        dup_key = kept & (F.row_number().over(by_key) > 1)
        df = df.withColumn(
            "reason", F.when(dup_key, F.lit("duplicate_key")).otherwise(F.col("reason"))
        )
    return df


def empty_quarantine(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], QUARANTINE)


def union_all(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def matches_header(line: str | None, spec: FileSpec) -> bool:
    """True when ``line`` (Python side, e.g. from :func:`first_line`) is one of spec's headers."""
    if line is None:
        return False
    normalized = re.sub(r"[\s\ufeff]", "", line).lower()
    return normalized in {_norm_header(h, spec.sep) for h in spec.headers}
