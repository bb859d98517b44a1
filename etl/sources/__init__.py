"""Source adapters: one per raw format, each mapping raw files onto the canonical input tables.

An adapter writes nothing: it checks each raw file's layout (etl.sources.layout: a file of
another format fails at once, naming what it looks like), parses every raw file with an explicit
schema (etl.quality routes malformed lines to the quarantine) and returns DataFrames in a
:class:`SourceData`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from etl.quality import FileSpec
from etl.sources import ali_ccp, taobao_ad, user_behavior
from etl.sources.base import (
    FileReport,
    InputError,
    SourceConfig,
    SourceData,
    check_reconciliation,
)
from etl.sources.layout import LayoutMismatch, looks_like

Loader = Callable[[SparkSession, str, SourceConfig], SourceData]
SOURCES: dict[str, Loader] = {
    "taobao_ad": taobao_ad.load,
    "user_behavior": user_behavior.load,
    "ali_ccp": ali_ccp.load,
}
# Every raw layout a source reads, for naming what a wrong-format file looks like.
LAYOUTS: tuple[FileSpec, ...] = (
    *taobao_ad.RAW_FILES.values(),
    taobao_ad.JOINED,
    user_behavior.USER_BEHAVIOR,
    ali_ccp.SKELETON,
    ali_ccp.COMMON,
    *ali_ccp.PREPROCESSED.values(),
)

__all__ = [
    "LAYOUTS",
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
    try:
        return SOURCES[name](spark, str(input_dir), cfg)
    except LayoutMismatch as exc:
        raise InputError(exc.message(looks_like(exc.lines, LAYOUTS, exc.spec))) from None
