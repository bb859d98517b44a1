"""Vocabularies: raw categorical values -> contiguous ids, built on the train period only.

Id 0 is padding/missing (null raw value), 1 is unknown (unseen in train or below min_count);
known values get ids from 2 upward, ordered by count (desc) then raw value, so a rerun over the
same input gives the same ids. The ids and the encoding rule are defined in etl/features.py
(``vocab_ids``, what online serving applies); ``id_or_unknown`` is its Spark form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from etl.features import FIRST_ID, PAD_ID, UNKNOWN_ID, Vocabulary
from etl.schemas import VOCAB


def long_values(df: DataFrame, columns: list[tuple[str, str]]) -> DataFrame:
    """One DataFrame's values as (vocab, raw) rows: ``columns`` holds (vocabulary name, column
    whose values it counts) pairs; one scan for all of them, not one per vocabulary."""
    pairs = [
        F.struct(F.lit(name).alias("vocab"), F.col(column).cast("string").alias("raw"))
        for name, column in columns
    ]
    return df.select(F.explode(F.array(*pairs)).alias("_v")).select("_v.vocab", "_v.raw")


def build_vocab(values: DataFrame, min_count: int = 1) -> DataFrame:
    """``values``: (vocab, raw) rows, one per occurrence (see ``long_values``); every
    vocabulary is counted in one aggregation. Nulls are ignored (they encode to PAD_ID).
    Returns a DataFrame with the VOCAB schema."""
    counted = (
        values.where(F.col("raw").isNotNull())
        .groupBy("vocab", "raw")
        .agg(F.count(F.lit(1)).alias("count"))
        .where(F.col("count") >= max(min_count, 1))
    )
    order = Window.partitionBy("vocab").orderBy(F.col("count").desc(), F.col("raw"))
    ranked = counted.withColumn("id", (F.row_number().over(order) + FIRST_ID - 1).cast("int"))
    return ranked.select(*[f.name for f in VOCAB.fields])


def extend_vocab(old: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """Append-only update of a collected vocab table (incremental runs): ``added`` holds
    (vocab, raw, count) of the occurrences the train period gained. A (vocab, raw) already
    present keeps its id and adds the count; a new one gets the next ids after its
    vocabulary's current max, in the order of ``build_vocab`` (count desc, raw) among the new
    ones. Returns the VOCAB columns sorted by (vocab, id)."""
    columns = [f.name for f in VOCAB.fields]
    old = old[columns].astype({"id": "int64", "count": "int64"})
    added = added.groupby(["vocab", "raw"], as_index=False)["count"].sum()
    merged = old.merge(added, on=["vocab", "raw"], how="outer", suffixes=("", "_added"))
    merged["count"] = merged["count"].fillna(0) + merged["count_added"].fillna(0)
    new = merged[merged["id"].isna()].sort_values(
        ["vocab", "count", "raw"], ascending=[True, False, True], kind="stable"
    )
    top = old.groupby("vocab")["id"].max()
    start = new["vocab"].map(top).fillna(FIRST_ID - 1).astype("int64")
    merged.loc[new.index, "id"] = start + new.groupby("vocab").cumcount() + 1
    out = merged[columns].astype({"id": "int32", "count": "int64"})
    return out.sort_values(["vocab", "id"], kind="stable").reset_index(drop=True)


def vocab_sizes(vocab: DataFrame | pd.DataFrame) -> dict[str, int]:
    """Embedding table size per vocabulary: max id + 1 (at least 2 for pad and unknown)."""
    if isinstance(vocab, pd.DataFrame):
        return {str(k): int(v) + 1 for k, v in vocab.groupby("vocab")["id"].max().items()}
    rows = vocab.groupBy("vocab").agg(F.max("id").alias("max_id")).collect()
    return {r["vocab"]: int(r["max_id"]) + 1 for r in rows}


class Vocabularies(dict):
    """Vocabulary name -> features.Vocabulary; a vocabulary the train split never filled (e.g.
    brand for user_behavior) is empty: nulls -> PAD_ID, every value -> UNKNOWN_ID, as the join
    of ``encode_column`` gives."""

    def __missing__(self, name: str) -> Vocabulary:
        return Vocabulary(name, np.array([], dtype=object), np.array([], dtype=np.int64))


def vocabularies(vocab: pd.DataFrame) -> Vocabularies:
    """The collected vocab table as etl.features.Vocabulary lookups (what serving applies)."""
    return Vocabularies(
        {
            str(name): Vocabulary(str(name), part["raw"].to_numpy(object), part["id"].to_numpy())
            for name, part in vocab.groupby("vocab")
        }
    )


def encode_column(df: DataFrame, column: str, vocab: DataFrame, name: str, out: str) -> DataFrame:
    """Add ``out`` = id of ``column`` in vocabulary ``name`` (broadcast join; null -> 0)."""
    lookup = vocab.where(F.col("vocab") == name).select(
        F.col("raw").alias(f"__raw_{out}"), F.col("id").alias(f"__id_{out}")
    )
    joined = df.join(
        F.broadcast(lookup) if _small(name) else lookup,
        F.col(column).cast("string") == F.col(f"__raw_{out}"),
        "left",
    )
    return joined.withColumn(out, id_or_unknown(F.col(column), F.col(f"__id_{out}"))).drop(
        f"__raw_{out}", f"__id_{out}"
    )


def id_or_unknown(raw: Column, looked_up: Column) -> Column:
    """features.vocab_ids on Spark columns: null raw -> PAD_ID, no id -> UNKNOWN_ID."""
    return (
        F.when(raw.isNull(), F.lit(PAD_ID))
        .when(looked_up.isNull(), F.lit(UNKNOWN_ID))
        .otherwise(looked_up)
        .cast("int")
    )


def _small(name: str) -> bool:
    # Item/user vocabularies can hold millions of entries: let Spark pick the join strategy.
    return name not in {"user", "item", "ad"}
