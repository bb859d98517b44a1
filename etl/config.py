"""ETL configuration: one dataclass with defaults, and the one place that defines the ETL CLI.

Every EtlConfig field is a ``--kebab-case`` option of jobs/etl.py (through etl/cli.py);
``SparkOptions`` holds the job's own ``--master``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from datetime import date

from etl import cli

SOURCES = ("taobao_ad", "user_behavior", "ali_ccp")
# Options whose value changes what the tables hold (not how fast or in how many files).
TABLE_OPTIONS = (
    "source",
    "gap_minutes",
    "max_len",
    "attribution_hours",
    "min_count",
    "tz_offset_hours",
    "test_days",
    "valid_days",
    "test_start",
    "negatives_per_positive",
    "seed",
    "max_user_behaviors",
)


@dataclass
class EtlConfig:
    source: str = field(default="taobao_ad", metadata={"help": "raw format", "choices": SOURCES})
    input: str = field(
        default="",
        metadata={"help": "folder, file or s3a:// URI of the raw logs", "required": True},
    )
    output: str = field(
        default="",
        metadata={"help": "lake for the Delta tables: folder or s3a:// URI", "required": True},
    )
    gap_minutes: float = field(
        default=30.0, metadata={"help": "a gap longer than this starts a new session"}
    )
    max_len: int = field(default=50, metadata={"help": "history length L per impression"})
    attribution_hours: float = field(
        default=24.0, metadata={"help": "a buy this long after a click counts as its conversion"}
    )
    min_count: int = field(
        default=1, metadata={"help": "values seen fewer times in train map to unknown (id 1)"}
    )
    tz_offset_hours: int = field(default=8, metadata={"help": "day boundaries (UTC+8 for Taobao)"})
    test_days: int = field(default=1, metadata={"help": "last N impression days -> test"})
    valid_days: int = field(
        default=1, metadata={"help": "N days before test -> valid (0: no valid split)"}
    )
    test_start: str | None = field(
        default=None, metadata={"help": "first test day YYYY-MM-DD (overrides test_days)"}
    )
    max_quarantine_share: float = field(
        default=0.05, metadata={"help": "fail when more than this share of a file is malformed"}
    )
    negatives_per_positive: int = field(
        default=4, metadata={"help": "user_behavior: sampled non-viewed items per view"}
    )
    seed: int = field(default=7, metadata={"help": "seed for sampled negatives"})
    rows_per_file: int = field(
        default=1_000_000, metadata={"help": "max rows per samples parquet file"}
    )
    min_files_per_split: int = field(
        default=8, metadata={"help": "samples files per split at least (one shard per worker)"}
    )
    pass_rows_per_bucket: int = field(
        default=100_000,
        metadata={"help": "impressions pass: events + impressions per user bucket (pandas call)"},
    )
    incremental: bool = field(
        default=False,
        metadata={
            "help": "process only the input's days after the lake's last day, rewriting the "
            "affected day partitions (etl/incremental.py); the lake must exist"
        },
    )
    max_user_behaviors: int = field(
        default=200_000,
        metadata={
            "help": "per-user pass: a user's most recent N behaviors at most (0: no cap; "
            "events and sessions keep all)"
        },
    )

    def validate(self) -> None:
        """ValueError with a one-line message for the first option out of range: checked
        before anything is read or written (etl/cli.py runs it after parsing, run_etl again)."""
        lower = {
            "max_len": (self.max_len, 1),
            "min_count": (self.min_count, 1),
            "test_days": (self.test_days, 0),
            "valid_days": (self.valid_days, 0),
            "negatives_per_positive": (self.negatives_per_positive, 0),
            "rows_per_file": (self.rows_per_file, 1),
            "min_files_per_split": (self.min_files_per_split, 1),
            "pass_rows_per_bucket": (self.pass_rows_per_bucket, 1),
            "max_user_behaviors": (self.max_user_behaviors, 0),
        }
        for name, (value, least) in lower.items():
            if value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
        for name in ("gap_minutes", "attribution_hours"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if not -12 <= self.tz_offset_hours <= 14:
            raise ValueError(f"--tz-offset-hours must be in [-12, 14], got {self.tz_offset_hours}")
        if not 0.0 <= self.max_quarantine_share <= 1.0:
            raise ValueError("--max-quarantine-share must be in [0, 1]")
        if self.test_start is not None:
            check_day(self.test_start, "--test-start")

    @property
    def gap_seconds(self) -> int:
        return int(self.gap_minutes * 60)

    @property
    def attribution_seconds(self) -> int:
        return int(self.attribution_hours * 3600)

    def table_options(self) -> dict:
        """The options that define the lake's tables (the spec records them; an incremental
        run must use the same)."""
        return {name: getattr(self, name) for name in TABLE_OPTIONS}

    def to_dict(self) -> dict:
        return asdict(self)


def check_day(text: str, option: str) -> None:
    """A strict YYYY-MM-DD date (2017/05/08 or 2017-5-8 would silently compare wrong)."""
    try:
        ok = len(text) == 10 and date.fromisoformat(text).isoformat() == text
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{option} must be a date YYYY-MM-DD, got {text!r}")


@dataclass
class SparkOptions:
    """Where a Spark job runs when it is not started by spark-submit (whose --master wins)."""

    master: str | None = field(
        default=None,
        metadata={
            "help": "Spark master outside spark-submit (default: $ISREC_SPARK_MASTER or local[*])"
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every EtlConfig field as a --kebab-case option of a parser of the caller's own."""
    cli.add_options(parser, EtlConfig)
