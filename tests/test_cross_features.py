"""Candidate x history cross features: the numpy definition (etl/features.py) on crafted cases,
the Spark expressions (etl/cross.py) equal to it on random histories, and the spec's fields.
Leakage: tests/test_impressions.py; online == lake: tests/test_online_features.py."""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl.cross import cross_fields, with_cross_features
from etl.features import (
    COUNT_THRESHOLDS,
    CROSS_FIELDS,
    FIRST_ID,
    FIXED_VOCAB_SIZES,
    NO_MATCH,
    PAD_ID,
    UNKNOWN_ID,
    cross_features,
    cross_names,
    gap_bucket,
)
from etl.spec import FieldSpec

L = 6
ALL = [name for name, *_ in CROSS_FIELDS]


def crafted() -> dict[str, np.ndarray]:
    """One history (cate 5 twice, brand 7 once, an unknown and a null), four candidates."""
    hist = {
        "hist_item": np.array([[0, 0, 0, 0, 0, 0]]),
        "hist_cate": np.array([[5, UNKNOWN_ID, 5, 6, PAD_ID, 0]]),
        "hist_brand": np.array([[7, UNKNOWN_ID, PAD_ID, 8, 0, 0]]),
        "hist_btag": np.array([[2, 2, 4, 3, 2, 0]]),
        "hist_gap": np.array([[9, 8, 6, 3, 2, 0]]),
    }
    candidates = {
        "ad": np.array([2, 2, 2, 2]),
        "cate": np.array([5, 6, UNKNOWN_ID, PAD_ID]),
        "brand": np.array([7, 9, UNKNOWN_ID, 8]),
    }
    return cross_features(candidates, hist, np.array([5]), ALL)


def test_counts_gaps_steps_and_last_match_on_a_crafted_history():
    out = crafted()
    assert out["x_cate_count"].tolist() == [FIRST_ID + 2, FIRST_ID + 1, UNKNOWN_ID, PAD_ID]
    assert out["x_cate_gap"].tolist() == [6, 3, UNKNOWN_ID, PAD_ID]  # the latest match's gap
    assert out["x_cate_btag"].tolist() == [4, 3, UNKNOWN_ID, PAD_ID]  # deepest step: fav
    # the last behavior (hist_len 5) is the null at position 4: nothing matches it
    assert out["x_cate_last"].tolist() == [FIRST_ID, FIRST_ID, UNKNOWN_ID, PAD_ID]
    assert out["x_brand_count"].tolist() == [FIRST_ID + 1, FIRST_ID, UNKNOWN_ID, FIRST_ID + 1]
    assert out["x_brand_gap"].tolist() == [9, NO_MATCH["gap"], UNKNOWN_ID, 3]
    assert out["x_brand_btag"].tolist() == [2, NO_MATCH["btag"], UNKNOWN_ID, 3]
    # PAD entries of hist_item never match, though the candidate ad is a known id
    assert out["x_item_count"].tolist() == [FIRST_ID] * 4
    assert all(v.dtype == np.int32 for v in out.values())


def test_last_match_uses_hist_len_and_counts_are_bucketed():
    hist = {"hist_cate": np.array([[3, 4, 4, 0], [4] * 4, [0] * 4])}
    cand = {"cate": np.array([4, 4, 4])}
    out = cross_features(cand, hist, np.array([3, 4, 0]), ["x_cate_last", "x_cate_count"])
    assert out["x_cate_last"].tolist() == [FIRST_ID + 1, FIRST_ID + 1, FIRST_ID]
    assert out["x_cate_count"].tolist() == [FIRST_ID + 2, FIRST_ID + 3, FIRST_ID]
    counts = np.arange(0, 70)
    seqs = {"hist_cate": (np.arange(70)[None, :] < counts[:, None]) * 9}
    got = cross_features({"cate": np.full(70, 9)}, seqs, counts, ["x_cate_count"])
    expected = [FIRST_ID + sum(c >= t for t in COUNT_THRESHOLDS) for c in counts]
    assert got["x_cate_count"].tolist() == expected
    assert max(expected) == FIXED_VOCAB_SIZES["x_cate_count"] - 1


def test_cross_names_follow_the_fields_a_lake_has():
    taobao = {"ad", "cate", "brand", "hist_cate", "hist_brand", "hist_btag", "hist_gap"}
    assert cross_names(taobao) == [n for n in ALL if not n.startswith("x_item")]
    behavior = {"ad", "cate", "hist_item", "hist_cate", "hist_btag", "hist_gap"}
    assert cross_names(behavior) == [n for n in ALL if not n.startswith("x_brand")]
    assert cross_names({"cate", "hist_cate"}) == ["x_cate_count", "x_cate_last"]
    assert cross_names({"f_206", "f_109_14"}) == []
    fields = [FieldSpec(n, "sparse", n, 5) for n in ("cate", "ad")]
    fields.append(FieldSpec("hist_cate", "sequence", "cate", 5))
    specs = cross_fields(fields)
    assert [f.name for f in specs] == ["x_cate_count", "x_cate_last"]
    assert all(f.kind == "sparse" and f.vocab == f.name for f in specs)
    assert [f.vocab_size for f in specs] == [len(COUNT_THRESHOLDS) + 1 + FIRST_ID, FIRST_ID + 2]


def random_samples(seed: int, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, L + 1, n)
    valid = np.arange(L)[None, :] < lengths[:, None]
    frame = {"hist_len": lengths.astype(np.int32)}
    for name, high in (("hist_item", 9), ("hist_cate", 6), ("hist_brand", 5)):
        frame[name] = list((rng.integers(0, high, (n, L)) * valid).astype(np.int32))
    frame["hist_btag"] = list((rng.integers(2, 6, (n, L)) * valid).astype(np.int32))
    seconds = rng.integers(0, 10**6, (n, L))
    frame["hist_gap"] = list((gap_bucket(seconds) * valid).astype(np.int32))
    for name, high in (("ad", 9), ("cate", 6), ("brand", 5)):
        frame[name] = rng.integers(0, high, n).astype(np.int32)
    return pd.DataFrame(frame)


def test_spark_expressions_equal_the_numpy_definition(spark):
    frame = random_samples(0)
    schema = ", ".join(
        f"{c} array<int>" if c.startswith("hist_") and c != "hist_len" else f"{c} int"
        for c in frame.columns
    )
    rows = [
        tuple(v.tolist() if isinstance(v, np.ndarray) else int(v) for v in r)
        for r in frame.itertuples(index=False)
    ]
    got = with_cross_features(spark.createDataFrame(rows, schema)).toPandas()
    assert list(got.columns) == [*frame.columns, *ALL]
    hist = {
        c: np.stack(frame[c]) for c in frame.columns if c.startswith("hist_") and c != "hist_len"
    }
    cands = {c: frame[c].to_numpy() for c in ("ad", "cate", "brand")}
    ours = cross_features(cands, hist, frame["hist_len"].to_numpy(), ALL)
    for name in ALL:
        assert np.array_equal(got[name].to_numpy(np.int32), ours[name]), name
        assert len(np.unique(ours[name])) > 2, name  # the random case exercises the feature
