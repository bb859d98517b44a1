"""A small ``samples`` table with the layout the ETL writes (for data and loop tests).

``write_samples`` writes LAKE/samples (Delta, partitioned by split and day, >= ``files`` parquet
files per day) and saves LAKE/_feature_spec.json with the
Delta version written, exactly as jobs/etl.py does. Labels depend on the features, so a model
that learns anything scores AUC above 0.5.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from etl.lake import write_table
from etl.spec import FeatureSpec, FieldSpec

MAX_LEN = 5
FIELDS = [
    FieldSpec("user", "sparse", "user", 60),
    FieldSpec("ad", "sparse", "ad", 40),
    FieldSpec("cate", "sparse", "cate", 12),
    FieldSpec("slot", "sparse", "slot", 4),
    FieldSpec("price", "dense"),
    FieldSpec("hist_cate", "sequence", "cate", 12),
    FieldSpec("hist_btag", "sequence", "btag", 6),
]
SPLIT_DAYS = {
    "train": ["2017-05-06", "2017-05-07"],
    "valid": ["2017-05-08"],
    "test": ["2017-05-09"],
}


SAMPLES_ARROW = pa.schema(
    [("impression_id", pa.int64()), ("user_key", pa.int64()), ("ts", pa.int64())]
    + [
        (f.name, {"sparse": pa.int32(), "dense": pa.float32()}.get(f.kind, pa.list_(pa.int32())))
        for f in FIELDS
    ]
    + [("hist_len", pa.int32())]
    + [(name, pa.float32()) for name in ("click", "conversion", "n_future_views")]
)


def samples_schema() -> T.StructType:
    cols = [
        T.StructField("impression_id", T.LongType(), False),
        T.StructField("user_key", T.LongType(), False),
        T.StructField("ts", T.LongType(), False),
    ]
    for f in FIELDS:
        kind = {
            "sparse": T.IntegerType(),
            "dense": T.FloatType(),
            "sequence": T.ArrayType(T.IntegerType(), False),
        }[f.kind]
        cols.append(T.StructField(f.name, kind, False))
    cols += [
        T.StructField("hist_len", T.IntegerType(), False),
        T.StructField("click", T.FloatType(), False),
        T.StructField("conversion", T.FloatType(), False),
        T.StructField("n_future_views", T.FloatType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("day", T.DateType(), False),
    ]
    return T.StructType(cols)


def make_frame(rows_per_day: int, seed: int = 0, id_offset: int = 0) -> pd.DataFrame:
    """Rows for every day of SPLIT_DAYS; impression_id = id_offset + 0..n-1 (unique)."""
    rng = np.random.default_rng(seed)
    days = [(s, d) for s, ds in SPLIT_DAYS.items() for d in ds]
    n = rows_per_day * len(days)
    user = rng.integers(2, 60, n)
    cate = rng.integers(2, 12, n)
    hist_len = rng.integers(0, MAX_LEN + 1, n)
    hist_cate = rng.integers(2, 12, (n, MAX_LEN))
    hist_btag = rng.integers(2, 6, (n, MAX_LEN))
    pad = np.arange(MAX_LEN)[None, :] >= hist_len[:, None]
    hist_cate[pad] = 0
    hist_btag[pad] = 0
    # clicks favour candidates whose category appears in the history, conversions even cates
    seen = (hist_cate == cate[:, None]).any(axis=1)
    p_click = 1 / (1 + np.exp(-(-1.0 + 2.0 * seen + 0.05 * (user % 7))))
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < np.where(cate % 2 == 0, 0.6, 0.15))
    split_day = [days[i // rows_per_day] for i in range(n)]
    return pd.DataFrame(
        {
            "impression_id": np.arange(n, dtype=np.int64) + id_offset,
            "user_key": (1000 + user).astype(np.int64),
            "ts": np.arange(n, dtype=np.int64) + 1_494_000_000,
            "user": user.astype(np.int32),
            "ad": rng.integers(2, 40, n).astype(np.int32),
            "cate": cate.astype(np.int32),
            "slot": rng.integers(2, 4, n).astype(np.int32),
            "price": rng.gamma(2.0, 50.0, n).astype(np.float32),
            "hist_cate": [r.astype(np.int32).tolist() for r in hist_cate],
            "hist_btag": [r.astype(np.int32).tolist() for r in hist_btag],
            "hist_len": hist_len.astype(np.int32),
            "click": click.astype(np.float32),
            "conversion": conversion.astype(np.float32),
            "n_future_views": rng.poisson(1 + 2 * click).astype(np.float32),
            "split": [s for s, _ in split_day],
            "day": [dt.date.fromisoformat(d) for _, d in split_day],
        }
    )


def make_spec(version: int, splits: dict[str, list[str]] | None = None) -> FeatureSpec:
    return FeatureSpec(
        source="test",
        max_len=MAX_LEN,
        fields=list(FIELDS),
        splits=dict(SPLIT_DAYS if splits is None else splits),
        tables={"samples": version},
    )


def write_samples(
    spark: SparkSession,
    lake: str | Path,
    rows_per_day: int = 200,
    seed: int = 0,
    id_offset: int = 0,
    files: int = 4,
    save_spec: bool = True,
    frame: pd.DataFrame | None = None,
) -> FeatureSpec:
    """(Over)write LAKE/samples like the ETL: the Delta commit, then the spec."""
    pdf = make_frame(rows_per_day, seed, id_offset) if frame is None else frame
    df = spark.createDataFrame(pdf, schema=samples_schema()).repartition(files)
    version = write_table(df, lake, "samples", partition_by=["split", "day"])
    splits = {s: d for s, d in SPLIT_DAYS.items() if s in set(pdf["split"])}
    spec = make_spec(version, splits)
    if save_spec:
        spec.save(lake)
    return spec


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as the parquet files of samples hold it (int32 ids, list<int32> histories)."""
    return pa.Table.from_pandas(
        frame.drop(columns=["split", "day"]), schema=SAMPLES_ARROW, preserve_index=False
    )


def shared_lake(spark: SparkSession, base: Path) -> tuple[Path, FeatureSpec]:
    """One samples lake per test session (cached under pytest's base temp folder)."""
    lake = base / "shared_samples_lake"
    if not (lake / "_feature_spec.json").is_file():
        write_samples(spark, lake, rows_per_day=200, seed=0, files=4)
    return lake, FeatureSpec.load(lake)


def write_parquet_files(folder: Path, sizes: list[int], row_group_size: int) -> list[str]:
    """Plain parquet files (no Delta) with several row groups each; returns file URIs."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = make_frame(rows_per_day=sum(sizes), seed=3).iloc[: sum(sizes)]
    uris, start = [], 0
    for i, size in enumerate(sizes):
        path = folder / f"part-{i:05d}.parquet"
        part = arrow_table(frame.iloc[start : start + size])
        pq.write_table(part, path, row_group_size=row_group_size)
        uris.append("file://" + str(path))
        start += size
    return uris
