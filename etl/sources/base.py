"""What every source adapter returns, its configuration, and shared input-checking helpers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from etl import quality
from etl.quality import ParsedFile

log = logging.getLogger(__name__)


class InputError(Exception):
    """Bad input the user must fix; jobs print str(exc) as one line and exit 2."""


@dataclass
class FileReport:
    """Reconciliation of one raw file: ``read == kept + quarantined``.

    ``read`` counts every line except a header on line 1. ``flags`` counts kept rows worth a
    warning, e.g. ``conversion_without_click`` (Ali-CCP rows with click=0 and buy=1).
    """

    source: str
    file: str
    read: int
    kept: int
    quarantined: int
    flags: dict[str, int] = field(default_factory=dict)


@dataclass
class SourceConfig:
    max_quarantine_share: float = 0.05
    negatives_per_positive: int = 4  # user_behavior: sampled click=0 impressions per pv
    seed: int = 42
    # Valid timestamp range [ts_first_day, ts_end_day) as UTC+8 ISO dates; None = the source's
    # default (taobao_ad and user_behavior: 2017-01-01 .. 2018-01-01).
    ts_first_day: str | None = None
    ts_end_day: str | None = None
    ali_ccp_format: str = "auto"  # auto | raw | torch_rechub | aitm
    persist: bool = True  # keep each parsed file cached (it feeds bronze, quarantine and outputs)

    def ts_range(self, default_first: str, default_end: str) -> tuple[int, int]:
        return quality.date_range(
            self.ts_first_day or default_first, self.ts_end_day or default_end
        )


@dataclass
class SourceData:
    behaviors: DataFrame | None  # etl.schemas.BEHAVIORS (user behaviors, any order)
    impressions: DataFrame | None  # etl.schemas.RAW_IMPRESSIONS
    ads: DataFrame | None  # etl.schemas.ADS
    users: DataFrame | None  # etl.schemas.USERS
    bronze: dict[str, DataFrame]  # table name ("bronze_raw_sample", ...) -> typed rows kept
    quarantine: DataFrame  # etl.schemas.QUARANTINE rows
    reports: list[FileReport]
    conversion_match: str  # "cate_brand" (taobao_ad), "item" (user_behavior), "label" (ali_ccp)
    wide_samples: DataFrame | None = None  # ali_ccp only
    cached: list[DataFrame] = field(default_factory=list, repr=False)  # parsed files in cache

    def unpersist(self) -> None:
        """Release the cached parsed files once every output has been written."""
        for df in self.cached:
            df.unpersist()


# --- helpers shared by the adapters -------------------------------------------------------------
def require_path(spark: SparkSession, source: str, path: str) -> str:
    path = quality.norm_path(path)
    if not quality.path_exists(spark, path):
        raise InputError(f"{source}: input path not found: {path}")
    return path


def require_file(spark: SparkSession, source: str, directory: str, name: str, hint: str) -> str:
    path = f"{directory.rstrip('/')}/{name}"
    if not quality.path_exists(spark, path) or quality.is_dir(spark, path):
        raise InputError(f"{source}: required file not found: {path} ({hint})")
    return path


def report(parsed: ParsedFile, flags: dict[str, int] | None = None) -> FileReport:
    return FileReport(
        source=parsed.spec.source,
        file=parsed.path,
        read=parsed.read,
        kept=parsed.kept,
        quarantined=parsed.quarantined,
        flags={**parsed.flags, **(flags or {})},
    )


def quarantine_of(spark: SparkSession, parsed: list[ParsedFile]) -> DataFrame:
    if not parsed:
        return quality.empty_quarantine(spark)
    return quality.union_all([p.quarantine() for p in parsed])


def conform(df: DataFrame, schema: T.StructType, exprs: dict[str, Column]) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types (missing ones as typed nulls)."""
    cols = [exprs.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name) for f in schema.fields]
    return df.select(*cols)


def first_by_line(df: DataFrame, key: list[str]) -> DataFrame:
    """One row per ``key``: the one with the smallest ``line_no`` (deterministic)."""
    best = F.min(F.struct("line_no", *[c for c in df.columns if c not in key and c != "line_no"]))
    return df.groupBy(*key).agg(best.alias("_b")).select(*key, "_b.*").drop("line_no")


@dataclass(frozen=True)
class Failure:
    """Why a run's input fails reconciliation; ``quarantined``: the lines that make it fail are
    in the quarantine (the run writes that table before it fails, so the message can name it)."""

    message: str
    quarantined: bool


def reconciliation_failure(
    reports: list[FileReport], max_quarantine_share: float
) -> Failure | None:
    """The first empty/unreadable file or quarantined share above the threshold, else None."""
    for r in reports:
        where = f"{r.source}: {r.file}"
        if r.read != r.kept + r.quarantined:
            return Failure(
                f"{where}: read {r.read} != kept {r.kept} + quarantined {r.quarantined}", False
            )
        if r.read == 0:
            return Failure(f"{where}: file is empty (no data lines)", False)
        if r.kept == 0:
            return Failure(f"{where}: no readable line (all {r.read} quarantined)", True)
        share = r.quarantined / r.read
        if share > max_quarantine_share:
            return Failure(
                f"{where}: {r.quarantined} of {r.read} lines quarantined ({share:.2%} > "
                f"max {max_quarantine_share:.2%})",
                True,
            )
    return None


def check_reconciliation(reports: list[FileReport], max_quarantine_share: float) -> None:
    """Raise InputError for an empty/unreadable file or a quarantined share above the threshold."""
    failure = reconciliation_failure(reports, max_quarantine_share)
    if failure is not None:
        raise InputError(failure.message)
