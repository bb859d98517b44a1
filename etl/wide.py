"""Samples for sources that arrive as one wide row per impression (Ali-CCP).

Ali-CCP has no timestamps or behavior sequences: categorical fields ``f_<field>`` are encoded
with vocabularies built on the train split, dense ``d_<field>`` columns pass through, and
n_future_views is 0 (unknown). Multi-valued fields (``*_14``, arrays) are not part of the spec
yet; they are left out of samples.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from etl.config import EtlConfig
from etl.lake import write_samples
from etl.spec import FeatureSpec, FieldSpec
from etl.vocab import FIRST_ID, build_vocab, encode_column, long_values, vocab_sizes
from etl.wide_sequences import (
    encode_sequences,
    sequence_columns,
    sequence_fields,
    sequence_vocab_values,
)

log = logging.getLogger(__name__)


def build_wide_samples(wide: DataFrame, cfg: EtlConfig, write) -> FeatureSpec:
    types = dict(wide.dtypes)
    scalar = [c for c in wide.columns if c.startswith("f_") and not types[c].startswith("array")]
    skipped = [c for c in wide.columns if c.startswith("f_") and types[c].startswith("array")]
    dense = [c for c in wide.columns if c.startswith("d_")]
    if skipped:
        log.warning("multi-valued fields left out of samples: %s", ", ".join(skipped))
    train = wide.where(F.col("split") == "train")
    values = long_values(train, [(c, c) for c in scalar])
    histories = sequence_columns(wide)
    if histories:
        values = values.unionByName(sequence_vocab_values(train, histories, cfg.max_len))
    vocab = write(build_vocab(values, cfg.min_count), "vocab", None)
    sizes = vocab_sizes(vocab)
    encoded = wide
    for c in scalar:
        encoded = (
            encode_column(encoded, c, vocab, c, f"__{c}").drop(c).withColumnRenamed(f"__{c}", c)
        )
    fields = [FieldSpec(c, "sparse", c, sizes[c]) for c in scalar if sizes.get(c, 0) > FIRST_ID]
    fields += [FieldSpec(c, "dense") for c in dense]
    if histories:
        encoded = encode_sequences(encoded, vocab, histories, cfg.max_len)
        fields += sequence_fields(histories, sizes)
    kinds = {"sparse": "int", "dense": "float", "sequence": "array<int>"}
    samples = encoded.select(
        F.col("impression_id").cast("long"),
        F.col("user_key").cast("long"),
        F.lit(None).cast(T.LongType()).alias("ts"),
        F.lit(None).cast(T.DateType()).alias("day"),
        F.col("split"),
        *[F.col(f.name).cast(kinds[f.kind]) for f in fields],
        (F.col("hist_len") if histories else F.lit(0)).cast("int").alias("hist_len"),
        F.col("click").cast("float"),
        F.col("conversion").cast("float"),
        F.lit(0.0).cast("float").alias("n_future_views"),
    )
    write_samples(samples, cfg, write)
    splits = sorted(r["split"] for r in wide.select("split").distinct().collect())
    return FeatureSpec(
        source=cfg.source,
        max_len=cfg.max_len,
        fields=fields,
        labels=["click", "conversion"],
        splits={s: [] for s in splits},
    )
