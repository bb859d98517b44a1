"""Source adapters: one per raw format, each mapping raw files onto the canonical input tables.

An adapter writes nothing: it parses every raw file with an explicit schema (etl.quality routes
malformed lines to the quarantine) and returns DataFrames in a :class:`SourceData`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from etl.sources import ali_ccp, taobao_ad, user_behavior
from etl.sources.base import (
    FileReport,
    InputError,
    SourceConfig,
    SourceData,
    check_reconciliation,
)

Loader = Callable[[SparkSession, str, SourceConfig], SourceData]
SOURCES: dict[str, Loader] = {
    "taobao_ad": taobao_ad.load,
    "user_behavior": user_behavior.load,
    "ali_ccp": ali_ccp.load,
}

__all__ = [
    "SOURCES",
    "FileReport",
    "InputError",
    "SourceConfig",
    "SourceData",
    "check_reconciliation",
    "load_source",
]


def load_source(spark: SparkSession, name: str, input_dir: str, cfg: SourceConfig) -> SourceData:
    """Parse the raw files of source ``name`` under ``input_dir`` (a directory or one file)."""
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r} (expected one of {', '.join(SOURCES)})")
    return SOURCES[name](spark, str(input_dir), cfg)
