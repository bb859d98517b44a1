"""Sequence fields of wide sources: Ali-CCP's multi-valued user-history fields (``*_14``).

A wide source marks a history column with the ``s_`` prefix (array<string> of raw ids, in the
order the raw line lists them; etl/sources/ali_ccp.py). Each becomes one sequence field
``hist_<field>`` of the spec with a vocabulary of its own (``hist_109_14``: ids are per field
in Ali-CCP), holding the first ``max_len`` values, encoded by the usual rule (features.vocab_ids:
unseen in train -> UNKNOWN_ID) and right-padded with PAD_ID. Vocabularies count only values
within the first ``max_len`` of a train row (the values samples can hold). ``hist_len`` is the
longest of a row's truncated histories: the fields are separate lists, not aligned steps, so a
shorter one pads with PAD_ID (whose embedding is zero) up to it.

Encoding is a map lookup inside ``transform`` (the vocabulary collected into one broadcast
map), so no row is exploded, shuffled or regrouped.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from etl.features import FIRST_ID, PAD_ID, UNKNOWN_ID
from etl.spec import FieldSpec

PREFIX = "s_"  # wide column of raw history ids
FIELD_PREFIX = "hist_"  # its samples field and vocabulary


def sequence_columns(wide: DataFrame) -> list[str]:
    """The wide source's history columns (``s_<field>``), in column order."""
    return [c for c in wide.columns if c.startswith(PREFIX)]


def field_name(column: str) -> str:
    return FIELD_PREFIX + column[len(PREFIX) :]


def truncated(column: str, max_len: int) -> Column:
    """The first ``max_len`` raw ids (an empty array for a null)."""
    return F.slice(F.coalesce(F.col(column), F.array().cast("array<string>")), 1, max_len)


def sequence_vocab_values(train: DataFrame, columns: list[str], max_len: int) -> DataFrame:
    """(vocab, raw) rows, one per occurrence within the first ``max_len`` values of a train
    row, for etl.vocab.build_vocab (union them with etl.vocab.long_values); one scan."""
    if not columns:
        raise ValueError("sequence_vocab_values: no history columns")
    per_column = [F.transform(truncated(c, max_len), _tagged(field_name(c))) for c in columns]
    exploded = train.select(F.explode(F.flatten(F.array(*per_column))).alias("_v"))
    return exploded.select("_v.vocab", "_v.raw")


def encode_sequences(
    df: DataFrame, vocab: DataFrame, columns: list[str], max_len: int
) -> DataFrame:
    """``df`` with one int array ``hist_<field>`` per history column (``max_len`` long) and
    ``hist_len``; the ``s_`` columns dropped."""
    out = df
    for c in columns:
        name = field_name(c)
        lookup = vocab.where(F.col("vocab") == name).agg(
            F.map_from_entries(F.collect_list(F.struct("raw", "id"))).alias(f"__map_{name}")
        )
        out = out.crossJoin(F.broadcast(lookup))
        ids = F.transform(truncated(c, max_len), _looked_up(F.col(f"__map_{name}")))
        out = out.withColumn(f"__ids_{name}", ids).drop(f"__map_{name}")
    lengths = [F.size(F.col(f"__ids_{field_name(c)}")) for c in columns]
    hist_len = F.greatest(*lengths, F.lit(0)) if lengths else F.lit(0)
    out = out.withColumn("hist_len", hist_len.cast("int"))
    for c in columns:
        name = field_name(c)
        ids = F.col(f"__ids_{name}")
        padding = F.array_repeat(F.lit(PAD_ID), F.lit(max_len) - F.size(ids))
        out = out.withColumn(name, F.concat(ids, padding).cast("array<int>")).drop(
            f"__ids_{name}", c
        )
    return out


# PySpark passes a lambda's second parameter the element index: one-argument closures instead.
def _tagged(name: str):
    return lambda x: F.struct(F.lit(name).alias("vocab"), x.alias("raw"))


def _looked_up(lookup: Column):
    """features.vocab_ids in a map: null -> PAD_ID, no id -> UNKNOWN_ID."""
    return lambda x: F.when(x.isNull(), PAD_ID).otherwise(
        F.coalesce(F.try_element_at(lookup, x), F.lit(UNKNOWN_ID))
    )


def sequence_fields(columns: list[str], sizes: dict[str, int]) -> list[FieldSpec]:
    """The spec's sequence fields: those whose vocabulary knows some value."""
    names = [field_name(c) for c in columns]
    return [FieldSpec(n, "sequence", n, sizes[n]) for n in names if sizes.get(n, 0) > FIRST_ID]
