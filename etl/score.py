"""Batch scoring: samples of one split -> registered pyfunc model (spark_udf) -> Delta scores.

The model runs inside Spark through ``mlflow.pyfunc.spark_udf`` (``env_manager="local"``: the
executors use this environment, where torch and the project are installed; the model's own code
travels in its artifacts). An alias URI (``models:/isrec-rnn_mtl@champion``) is resolved to its
version first, so a promotion during the job cannot mix two models in one table, and the version
is recorded in every row.

Output (Delta, partitioned by split): impression_id (one row per impression), user_key, split,
pctr, pcvr, pctcvr, expected_views, score, model_uri, model_version, samples_version, scored_at.
The samples read are the version the lake's feature spec records unless one is asked for, so a
later unfinished ETL run is never scored (etl/delta_log.py, "Atomic runs").
The split's partition is overwritten in one commit, so a rerun replaces rather than duplicates.
No torch import here (etl/ stays torch-free); mlflow loads the model in the Python workers.

Session rankings (``rank_sessions``, jobs/score.py ``--policy``): the scored impressions of each
session (``impressions.session_id``; an impression outside any session is a slate of its own)
form one slate, which a ranking function (train/policy.py ``rank_slates``, passed in so etl/
never imports train/) orders. Output (Delta, partitioned by split): user_key, session_id,
impression_id, rank (1 = first), probability (of being the policy's choice), chosen,
policy_score, policy, model_version; the split's partition is overwritten in one commit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from etl import storage
from etl.delta_log import recorded_version
from etl.lake import read_recorded, read_table
from etl.spec import FeatureSpec
from etl.tables import IMPRESSIONS, RANKINGS, SAMPLES, SCORES

log = logging.getLogger(__name__)

OUTPUTS = ("pctr", "pcvr", "pctcvr", "expected_views", "score")
RESULT_TYPE = T.StructType([T.StructField(c, T.DoubleType()) for c in OUTPUTS])
KEYS = ("impression_id", "user_key")
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ScoreResult:
    output: str
    split: str
    rows: int
    delta_version: int
    model_uri: str
    model_version: str | None
    samples_version: int


@dataclass(frozen=True)
class RankResult:
    output: str
    split: str
    rows: int
    delta_version: int
    policy: str


def resolve_model_uri(model_uri: str) -> tuple[str, str | None]:
    """``models:/NAME@alias`` -> (``models:/NAME/<version>``, version); a versioned URI keeps
    its version; other URIs (runs:/, models:/m-<id>, paths) have no registry version."""
    if numbered := VERSION_URI.match(model_uri):
        return model_uri, numbered["version"]
    match = ALIAS_URI.match(model_uri)
    if not match:
        return model_uri, None
    from mlflow.tracking import MlflowClient

    mv = MlflowClient().get_model_version_by_alias(match["name"], match["alias"])
    return f"models:/{match['name']}/{mv.version}", str(mv.version)


def model_inputs(model_uri: str) -> list[str]:
    """Input column names from the model's signature."""
    from mlflow.models import get_model_info

    signature = get_model_info(model_uri).signature
    if signature is None or signature.inputs is None:
        raise ValueError(f"model {model_uri} has no input signature: cannot pick columns")
    return list(signature.inputs.input_names())


def score_frame(
    spark: SparkSession, samples: DataFrame, model_uri: str, params: dict | None = None
) -> DataFrame:
    """Append the model's outputs to ``samples`` (must hold the signature's columns)."""
    import mlflow.pyfunc

    cols = [c for c in model_inputs(model_uri) if c in samples.columns]
    udf = mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=RESULT_TYPE, env_manager="local", params=params
    )
    pred = udf(F.struct(*[F.col(c) for c in cols]))
    keys = [c for c in (*KEYS, "split") if c in samples.columns]
    scored = samples.select(*keys, pred.alias("_pred"))
    return scored.select(*keys, *[F.col(f"_pred.{c}").alias(c) for c in OUTPUTS])


def score_samples(
    spark: SparkSession,
    model_uri: str,
    lake: str | Path,
    split: str = "test",
    output: str | Path | None = None,
    samples_version: int | None = None,
    beta: float | None = None,
) -> ScoreResult:
    """Score LAKE/samples (split ``split``) and overwrite that split of the Delta ``output``
    (default LAKE/scores). ``samples_version`` None: the version the lake's spec records."""
    resolved, model_version = resolve_model_uri(model_uri)
    version = (
        recorded_version(FeatureSpec.load(lake), SAMPLES)
        if samples_version is None
        else samples_version
    )
    samples = read_table(spark, lake, SAMPLES, version).where(F.col("split") == split)
    params = None if beta is None else {"beta": float(beta)}
    scored = score_frame(spark, samples, resolved, params).withColumns(
        {
            "model_uri": F.lit(resolved),
            "model_version": F.lit(model_version).cast("string"),
            "samples_version": F.lit(version).cast("long"),
            "scored_at": F.current_timestamp(),
        }
    )
    out = storage.spark_uri(output if output is not None else storage.join(lake, SCORES))
    delta_version = write_split(spark, scored, out, split)
    rows = spark.read.format("delta").load(out).where(F.col("split") == split).count()
    log.info("scored %d rows of split %s with %s into %s", rows, split, resolved, out)
    return ScoreResult(str(out), split, rows, delta_version, resolved, model_version, version)


def write_split(spark: SparkSession, df: DataFrame, output: str, split: str) -> int:
    """Overwrite the ``split`` partition of the Delta table at ``output`` in one commit."""
    from delta.tables import DeltaTable

    from etl.lake import write_table

    exists = DeltaTable.isDeltaTable(spark, output)
    where = f"split = '{split}'" if exists else None
    parent, name = storage.parent_and_name(output)
    return write_table(df, parent, name, ["split"], replace_where=where)


RANKING_TYPE = T.StructType(
    [
        T.StructField("impression_id", T.LongType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("probability", T.DoubleType(), False),
        T.StructField("chosen", T.BooleanType(), False),
        T.StructField("policy_score", T.DoubleType(), False),
    ]
)
SlateRanker = Callable[[pd.DataFrame], pd.DataFrame]


def rank_sessions(
    spark: SparkSession,
    scores: str | Path,
    lake: str | Path,
    split: str,
    ranker: SlateRanker,
    policy: str,
    output: str | Path | None = None,
) -> RankResult:
    """Rank the ``split`` rows of the Delta ``scores`` per session with ``ranker`` (one slate
    in, its ranking out) and overwrite that split of ``output`` (default LAKE/rankings)."""
    scored = spark.read.format("delta").load(storage.spark_uri(scores))
    scored = scored.where(F.col("split") == split)
    sessions = read_recorded(spark, lake, IMPRESSIONS).select("impression_id", "session_id")
    slates = scored.join(sessions, "impression_id", "left").withColumn(
        "slate_key", F.coalesce(F.col("session_id"), -F.col("impression_id"))
    )
    inputs = slates.select("impression_id", "user_key", "slate_key", "pctcvr", "expected_views")
    ranked = inputs.groupBy("user_key", "slate_key").applyInPandas(ranker, RANKING_TYPE)
    meta = slates.select("impression_id", "user_key", "session_id", "split", "model_version")
    rankings = meta.join(ranked, "impression_id").withColumn("policy", F.lit(policy))
    out = storage.spark_uri(output if output is not None else storage.join(lake, RANKINGS))
    delta_version = write_split(spark, rankings, out, split)
    rows = spark.read.format("delta").load(out).where(F.col("split") == split).count()
    log.info("ranked %d rows of split %s with policy %s into %s", rows, split, policy, out)
    return RankResult(str(out), split, rows, delta_version, policy)
