"""Samples: one integer-encoded row per impression, split by time, plus vocabularies and spec.

Vocabularies are built on the train period only: train impressions and the behaviors logged
before the first valid/test day. Events are encoded before the per-user pass, so histories are
built from ids directly. The fields and what defines each one live in etl/features.py; hour,
weekday and the dense features come out of the per-user pass (etl/impressions.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from etl.features import (
    DENSE_FIELDS,
    EVENT_FIELDS,
    FIRST_ID,
    FIXED_VOCAB_SIZES,
    SEQUENCE_SOURCE,
    SEQUENCE_VOCABS,
    SPARSE_FIELDS,
)
from etl.spec import FieldSpec
from etl.vocab import build_vocab, long_values


@dataclass(frozen=True)
class Splits:
    """Day -> split assignment; days are ISO strings in the source's local time (UTC+8)."""

    train: list[str]
    valid: list[str]
    test: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def column(self, day: Column) -> Column:
        day_str = F.date_format(day, "yyyy-MM-dd")
        return (
            F.when(day_str.isin(self.test), "test")
            .when(day_str.isin(self.valid), "valid")
            .otherwise("train")
        )

    def train_end_ts(self, tz_offset_hours: int) -> int:
        """Unix seconds where the first non-train day starts (behaviors before it build vocab)."""
        later = sorted(self.valid + self.test)
        if not later:
            return 2**62
        start = dt.datetime.fromisoformat(later[0]).replace(tzinfo=dt.UTC)
        return int(start.timestamp()) - tz_offset_hours * 3600


def assign_splits(
    days: list[str], test_days: int, valid_days: int, test_start: str | None
) -> Splits:
    """Last ``test_days`` days (or from ``test_start`` on) test; ``valid_days`` before valid."""
    days = sorted(days)
    if test_start:
        test = [d for d in days if d >= test_start]
        rest = [d for d in days if d < test_start]
    else:
        test, rest = days[len(days) - test_days :], days[: len(days) - test_days]
    valid = rest[len(rest) - valid_days :] if valid_days > 0 else []
    train = rest[: len(rest) - len(valid)]
    if not train:
        raise ValueError(
            f"no train days left: {len(days)} impression days, test {test}, valid {valid}"
        )
    return Splits(train=train, valid=valid, test=test)


def build_vocabularies(
    train_impressions: DataFrame, train_events: DataFrame, min_count: int
) -> DataFrame:
    """Every learned vocabulary in one aggregation over both inputs (one scan of each)."""
    values = long_values(
        train_impressions, [(vocab, column) for _, column, vocab in SPARSE_FIELDS]
    ).unionByName(long_values(train_events, [(vocab, column) for column, _, vocab in EVENT_FIELDS]))
    return build_vocab(values, min_count)


def feature_fields(vocab_sizes: dict[str, int], events_have: dict[str, bool]) -> list[FieldSpec]:
    """The spec's fields: a learned field is kept only when its vocabulary knows some value."""
    sizes = {**vocab_sizes, **FIXED_VOCAB_SIZES}
    fields: list[FieldSpec] = []
    for field, _, vocab in SPARSE_FIELDS:
        if sizes.get(vocab, 0) > FIRST_ID:
            fields.append(FieldSpec(field, "sparse", vocab, sizes[vocab]))
    fields += [
        FieldSpec(name, "sparse", name, FIXED_VOCAB_SIZES[name]) for name in ("hour", "weekday")
    ]
    fields += [FieldSpec(name, "dense") for name in DENSE_FIELDS]
    for field, vocab in SEQUENCE_VOCABS.items():
        source = SEQUENCE_SOURCE.get(field)
        if source is None or (events_have.get(source) and sizes.get(vocab, 0) > FIRST_ID):
            fields.append(FieldSpec(field, "sequence", vocab, sizes[vocab]))
    return fields


def sample_columns(fields: list[FieldSpec]) -> list[Column]:
    label_cols = [
        F.col(c).cast("float").alias(c) for c in ("click", "conversion", "n_future_views")
    ]
    keys = [
        F.col("impression_id"),
        F.col("user_id").alias("user_key"),
        F.col("ts"),
        F.col("day"),
        F.col("split"),
    ]
    feats = [
        F.col(f.name)
        .cast("float" if f.kind == "dense" else ("array<int>" if f.kind == "sequence" else "int"))
        .alias(f.name)
        for f in fields
    ]
    return keys + feats + [F.col("hist_len").cast("int")] + label_cols
