"""Names of the lake's Delta tables and of the folders inside them: the one place for each.

A lake is a folder (or object-store prefix) with one Delta table per name below, written by
``jobs/etl.py``, plus ``_feature_spec.json`` (etl/spec.py), written last.
"""

from __future__ import annotations

BRONZE_PREFIX = "bronze_"  # bronze_<file>: every readable raw line, typed, per input file
QUARANTINE = "quarantine"  # malformed lines: file, line number, raw text, bytes, length, reason
EVENTS = "events"  # sessionized behaviors
SESSIONS = "sessions"  # one row per session
IMPRESSIONS = "impressions"  # labelled impressions (click, conversion, n_future_views)
VOCAB = "vocab"  # vocabularies built on the train split
AD_TABLE = "ads"  # one row per ad as the samples join it (shipped with models for online features)
SAMPLES = "samples"  # encoded model inputs, one row per impression, partitioned by split/day

SCORES = "scores"  # jobs/score.py: per-impression scores of a split (default output)
RANKINGS = "rankings"  # jobs/score.py --policy: per-session rankings (default output)
LAKE_TABLES = (
    QUARANTINE,
    EVENTS,
    SESSIONS,
    IMPRESSIONS,
    VOCAB,
    AD_TABLE,
    SAMPLES,
    SCORES,
    RANKINGS,
)

DELTA_LOG_DIR = "_delta_log"
SPLITS = ("train", "valid", "test")


def is_lake_entry(name: str) -> bool:
    """Whether a lake's top folder may hold ``name``: a table of the lake, ``_feature_spec.json``
    and other ``_``/``.`` files of the tools that write it."""
    return name in LAKE_TABLES or name.startswith((BRONZE_PREFIX, "_", "."))
