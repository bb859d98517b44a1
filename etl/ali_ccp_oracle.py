"""Oracle predictions for a world written in the raw Ali-CCP format (etl/world/ali_ccp_writer.py).

truth_ali_ccp.csv holds, per (skeleton file, sample_id), the true p_click, p_buy_given_click
and expected further views; the lake's samples key an Ali-CCP row by
``xxhash64(file name, sample_id)`` (etl/sources/ali_ccp.py), so the join needs no impressions
table. Returns the columns of etl/oracle.py's ``oracle_frame``; samples are read at the version
the lake's feature spec records.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from etl.lake import read_recorded
from etl.world.ali_ccp_writer import TRUTH_FILE


def ali_ccp_truth(spark: SparkSession, world_dir: str | Path) -> DataFrame:
    """(impression_id, pctr, pcvr, expected_views) of every sample the world wrote."""
    return (
        spark.read.option("header", True)
        .csv(str(Path(world_dir) / TRUTH_FILE))
        .select(
            F.xxhash64(F.col("file"), F.col("sample_id").cast("long")).alias("impression_id"),
            F.col("p_click").cast("double").alias("pctr"),
            F.col("p_buy_given_click").cast("double").alias("pcvr"),
            F.col("expected_further_views").cast("double").alias("expected_views"),
        )
    )


def with_truth(samples: DataFrame, truth: DataFrame) -> DataFrame:
    """Labels, user_key and the oracle's pctr/pcvr/pctcvr/expected_views of ``samples``."""
    labels = ["impression_id", "user_key", "click", "conversion"]
    if "n_future_views" in samples.columns:
        labels.append("n_future_views")
    joined = samples.select(*labels).join(truth, "impression_id")
    pctcvr = (F.col("pctr") * F.col("pcvr")).alias("pctcvr")
    return joined.select(*labels, "pctr", "pcvr", pctcvr, "expected_views")


def ali_ccp_oracle_frame(
    spark: SparkSession, world_dir: str | Path, lake: str | Path, split: str = "test"
) -> pd.DataFrame:
    """Rows of ``split`` with labels, user_key and the oracle's pctr/pcvr/pctcvr/expected_views."""
    samples = read_recorded(spark, lake, "samples").where(F.col("split") == split)
    return with_truth(samples, ali_ccp_truth(spark, world_dir)).toPandas()
