"""Candidate x history cross features on the samples DataFrame, in Spark array functions.

The features (etl/features.py CROSS_FIELDS: per key item/cate/brand the bucketed count of the
candidate's id in the history, the gap bucket and deepest funnel step of its latest match, and
whether the last behavior matches) are defined once in numpy by ``features.cross_features``,
which online serving calls; this module writes the same rule with Spark's higher-order array
functions (no Python UDF, so no rows leave the JVM). Both read only the encoded history arrays
(behaviors strictly before the impression) and the candidate's ids, so the features are as
leak-free as the history. tests/test_cross_features.py checks the two against each other and
tests/test_online_features.py checks served rows against the lake's.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from etl.features import (
    COUNT_THRESHOLDS,
    CROSS_FIELDS,
    CROSS_KEYS,
    FIRST_ID,
    FIXED_VOCAB_SIZES,
    NO_MATCH,
    cross_names,
)
from etl.spec import FieldSpec

_KIND = {name: (key, kind) for name, key, kind in CROSS_FIELDS}
_FIELDS = {key: (cand, hist) for key, cand, hist in CROSS_KEYS}


def cross_fields(fields: list[FieldSpec]) -> list[FieldSpec]:
    """The spec's cross fields for samples holding ``fields`` (sparse, fixed vocabularies)."""
    names = cross_names({f.name for f in fields})
    return [FieldSpec(n, "sparse", n, FIXED_VOCAB_SIZES[n]) for n in names]


def with_cross_features(samples: DataFrame, length_field: str = "hist_len") -> DataFrame:
    """``samples`` plus one int column per cross field its columns define."""
    names = cross_names(set(samples.columns))
    return samples.select("*", *[cross_column(n, length_field).alias(n) for n in names])


def cross_column(name: str, length_field: str = "hist_len") -> Column:
    key, kind = _KIND[name]
    cand_name, hist_name = _FIELDS[key]
    cand, hist = F.col(cand_name), F.col(hist_name)
    if kind == "count":
        count = F.size(F.filter(hist, lambda x: x == cand))
        value = F.lit(FIRST_ID)
        for t in COUNT_THRESHOLDS:
            value = value + F.when(count >= t, 1).otherwise(0)
    elif kind == "gap":
        last = F.array_max(F.transform(hist, lambda x, i: F.when(x == cand, i).otherwise(-1)))
        value = F.when(last >= 0, F.get(F.col("hist_gap"), last)).otherwise(NO_MATCH["gap"])
    elif kind == "btag":
        btags = F.col("hist_btag")
        steps = F.transform(hist, lambda x, i: F.when(x == cand, F.get(btags, i)).otherwise(0))
        deepest = F.array_max(steps)
        value = F.when(deepest > 0, deepest).otherwise(NO_MATCH["btag"])
    else:  # last
        n = F.col(length_field)
        value = F.when((n > 0) & (F.get(hist, n - 1) == cand), FIRST_ID + 1).otherwise(FIRST_ID)
    return F.when(cand < FIRST_ID, cand).otherwise(value).cast("int")
