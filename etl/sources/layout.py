"""Wrong-format input, caught before any parse or write: each file's first lines against its
:class:`~etl.quality.FileSpec` (column count, each column's kind, the header on line 1).

A file of another format (a UserBehavior file given as raw_sample.csv, an Ali-CCP skeleton given
as a taobao_ad file, a 267-column export) would otherwise be parsed in full and end as "no
readable line" with every line quarantined. Here it is one line naming what it looks like, and
nothing is read further. A file passes when line 1 is one of the spec's headers or when any of
its first :data:`HEAD_LINES` non-empty lines fits the layout, so malformed lines mixed into a
good file are left to the quarantine.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from pyspark.sql import SparkSession

from etl import quality
from etl.features import NULL_TOKENS
from etl.quality import KINDS, FileSpec
from etl.sources.base import InputError

HEAD_LINES = 100  # non-empty lines sampled from the start of each file
MAX_LINE_BYTES = 1 << 20  # a longer line is cut there (its column count is then a lower bound)


class LayoutMismatch(InputError):
    """A file whose first lines do not fit the layout it was given as."""

    def __init__(self, path: str, spec: FileSpec, lines: list[str]):
        self.path, self.spec, self.lines = path, spec, lines
        super().__init__(self.message())

    def message(self, looks_like: str | None = None) -> str:
        """One line: what was found, what was expected, and (when given) what it looks like."""
        spec, data = self.spec, [line for line in self.lines if line.strip()]
        counts = Counter(len(line.split(spec.sep)) for line in data)
        n, expected = counts.most_common(1)[0][0], len(spec.fields)
        where = f"{spec.source}: {self.path}"
        if n != expected:
            text = f"{where} has {n} columns where {expected} are expected"
        else:
            line_no, why = next(
                (i, why) for i, line in enumerate(self.lines, 1) if (why := misfit(line, spec))
            )
            text = (
                f"{where} has {expected} columns but none of its first {len(data)} lines fits "
                f"{spec.layout or spec.source} (line {line_no}: {why})"
            )
        return f"{text} ({looks_like})" if looks_like else text


def head_lines(spark: SparkSession, path: str, n: int = HEAD_LINES) -> list[str]:
    """The file's first lines (up to ``n`` non-empty ones), split as Spark's text reader splits
    them (\\n, \\r or \\r\\n), decompressed when the name says so, decoded with replacement."""
    jvm = spark.sparkContext._jvm
    fs, hpath = quality._fs(spark, path)
    stream = fs.open(hpath)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.org.apache.hadoop.util.LineReader(stream)
    text = jvm.org.apache.hadoop.io.Text()
    lines: list[str] = []
    try:
        while sum(1 for line in lines if line.strip()) < n:
            if reader.readLine(text, MAX_LINE_BYTES, 2 * MAX_LINE_BYTES) == 0:
                break
            lines.append(bytes(text.copyBytes()).decode("utf-8", "replace"))
    finally:
        reader.close()
    return lines


def misfit(line: str, spec: FileSpec) -> str | None:
    """Why a non-empty line does not fit ``spec`` (a quarantine reason), None when it does.
    Kinds and counts only: value ranges and row checks are the parser's."""
    if not line.strip():
        return None
    parts = line.split(spec.sep)
    if len(parts) != len(spec.fields):
        return f"column_count:{len(parts)}"
    for f, part in zip(spec.fields, parts, strict=True):
        text = part.strip(" ")
        if f.nullable and text in NULL_TOKENS:
            continue
        if text == "":
            return f"missing:{f.name}"
        regex, code = KINDS[f.kind]
        if regex and not re.search(regex, text):
            return f"{code}:{f.name}"
    return None


def fits(lines: list[str], spec: FileSpec) -> int:
    """How many of the non-empty lines fit ``spec`` (a header of it on line 1 counts as all)."""
    if lines and quality.matches_header(lines[0], spec):
        return len(lines)
    return sum(1 for line in lines if line.strip() and misfit(line, spec) is None)


def check(spark: SparkSession, path: str, spec: FileSpec) -> None:
    """Raise :class:`LayoutMismatch` when ``path`` is plainly not a ``spec`` file."""
    lines = head_lines(spark, path)
    if any(line.strip() for line in lines) and fits(lines, spec) == 0:
        raise LayoutMismatch(path, spec, lines)


def looks_like(lines: list[str], specs: Sequence[FileSpec], given: FileSpec) -> str:
    """What the lines look like: the known layout they fit best (a header match first), with
    the source to give when it is another one."""
    best, best_fits = None, 0
    for spec in specs:
        if spec.with_ts_range(None) == given.with_ts_range(None):
            continue
        if lines and quality.matches_header(lines[0], spec):
            best, best_fits = spec, len(lines) + 1
            break
        if (n := fits(lines, spec)) > best_fits:
            best, best_fits = spec, n
    if best is None:
        return "not a layout any source reads"
    name = f"looks like {best.layout or best.source}"
    return name if best.source == given.source else f"{name}: --source {best.source}"


def parse_files(
    spark: SparkSession, files: Sequence[tuple[str, FileSpec]], persist: bool = True
) -> list[quality.ParsedFile]:
    """Check every file's layout first (a wrong one fails before any Spark job), then parse."""
    for path, spec in files:
        check(spark, quality.norm_path(path), spec)
    return quality.parse_all(spark, list(files), persist)
