"""Oracle predictions for a generated world: the true probabilities of the test impressions.

The generator's truth.csv holds, per raw_sample row, p_click, p_buy_given_click and the expected
further views; joined to the lake's impressions on (user, time, ad, slot) they give the best
possible AUC on exactly the rows the models are scored on. The lake's tables are read at the
versions its feature spec records (the last complete ETL run).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from etl.lake import read_recorded
from etl.spec import FeatureSpec

TRUTH = T.StructType(
    [
        T.StructField("user", T.LongType()),
        T.StructField("time_stamp", T.LongType()),
        T.StructField("adgroup_id", T.LongType()),
        T.StructField("pid", T.StringType()),
        T.StructField("p_click", T.DoubleType()),
        T.StructField("p_buy_given_click", T.DoubleType()),
        T.StructField("expected_further_views", T.DoubleType()),
    ]
)


def oracle_frame(
    spark: SparkSession, world_dir: str | Path, lake: str | Path, split: str = "test"
) -> pd.DataFrame:
    """Rows of ``split`` with labels, user_key and the oracle's pctr/pcvr/pctcvr/expected_views."""
    truth = (
        spark.read.option("header", True)
        .csv(str(Path(world_dir) / "truth.csv"))
        .select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in TRUTH.fields])
    )
    spec = FeatureSpec.load(lake)
    impressions = read_recorded(spark, lake, "impressions", spec).select(
        "impression_id", "user_id", "ts", "ad_id", "slot"
    )
    samples = read_recorded(spark, lake, "samples", spec).where(F.col("split") == split)
    joined = (
        samples.select("impression_id", "user_key", "click", "conversion", "n_future_views")
        .join(impressions, "impression_id")
        .join(
            truth,
            (F.col("user_id") == F.col("user"))
            & (F.col("ts") == F.col("time_stamp"))
            & (F.col("ad_id") == F.col("adgroup_id"))
            & (F.col("slot") == F.col("pid")),
        )
        .select(
            "impression_id",
            "user_key",
            "click",
            "conversion",
            "n_future_views",
            F.col("p_click").alias("pctr"),
            F.col("p_buy_given_click").alias("pcvr"),
            (F.col("p_click") * F.col("p_buy_given_click")).alias("pctcvr"),
            F.col("expected_further_views").alias("expected_views"),
        )
    )
    return joined.toPandas()
