"""user_behavior: UserBehavior (Tianchi dataset 649), ``user,item,category,behavior,ts``.

The file has no header (a header line, if one was added, is recognised and skipped). The input
is a directory (every ``*.csv`` in it is read) or one csv file. Exact duplicate lines are
detected per file.

No impressions are logged in this dataset, so they are derived (see :func:`derive_impressions`).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from etl import quality
from etl.quality import Field, FileSpec
from etl.schemas import ADS, BEHAVIORS, RAW_IMPRESSIONS, USERS
from etl.sources.base import (
    InputError,
    SourceConfig,
    SourceData,
    conform,
    quarantine_of,
    report,
    require_path,
)
from etl.sources.layout import parse_files

log = logging.getLogger(__name__)

SOURCE = "user_behavior"
# Valid ts range (UTC+8 days). The official window is 2017-11-25..12-03; the real file holds a
# few rows just outside it (real noise, kept); far-off timestamps are quarantined.
DEFAULT_DAYS = ("2017-01-01", "2018-01-01")
USER_BEHAVIOR = FileSpec(
    SOURCE,
    fields=(
        Field("user"),
        Field("item"),
        Field("category"),
        Field("behavior", "btag"),
        Field("ts", "ts"),
    ),
    headers=(
        ("user", "item", "category", "behavior", "ts"),
        ("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
    ),
    layout="user_behavior UserBehavior.csv",
)
# Spare candidates drawn per (user, second) beyond the negatives wanted, to replace the ones that
# hit an item viewed in that second or repeat an earlier draw.
SPARE_DRAWS = 4


def load(spark: SparkSession, input_path: str, cfg: SourceConfig) -> SourceData:
    path = require_path(spark, SOURCE, input_path)
    files = quality.list_files(spark, path) if quality.is_dir(spark, path) else [path]
    if not files:
        raise InputError(f"{SOURCE}: no *.csv file in {path}")
    spec = USER_BEHAVIOR.with_ts_range(cfg.ts_range(*DEFAULT_DAYS))
    parsed = parse_files(spark, [(f, spec) for f in files], cfg.persist)
    rows = quality.union_all([p.rows() for p in parsed])
    behaviors = conform(
        rows,
        BEHAVIORS,
        {
            "user_id": F.col("user"),
            "ts": F.col("ts"),
            "item_id": F.col("item"),
            "cate_id": F.col("category"),
            "btag": F.col("behavior"),
        },
    )
    return SourceData(
        behaviors=behaviors,
        impressions=derive_impressions(behaviors, cfg.negatives_per_positive, cfg.seed),
        ads=item_ads(behaviors),
        users=conform(behaviors.select("user_id").distinct(), USERS, {"user_id": F.col("user_id")}),
        bronze={"bronze_user_behavior": quality.union_all([p.bronze() for p in parsed])},
        quarantine=quarantine_of(spark, parsed),
        reports=[report(p) for p in parsed],
        conversion_match="item",
        cached=[p.table for p in parsed],
    )


def derive_impressions(behaviors: DataFrame, negatives_per_positive: int, seed: int) -> DataFrame:
    """Impressions of a log without impressions: every pv + sampled non-viewed items.

    - Positive: every pv behavior is an impression of that item (click=1, ad_id=item, ts=pv ts,
      slot null).
    - Negatives: for each pv, ``negatives_per_positive`` items the user did not view in that same
      second, impressed at the same ts (click=0). They are drawn **uniformly** over the distinct
      items of the data (every item id seen in any behavior), not by popularity: uniform draws
      need only an equi-join on a dense item index and leave popularity as a signal the models
      must learn from the positives.
    - Deterministic: draw ``a`` of the group (user, ts) picks item index
      ``pmod(xxhash64(seed, user, ts, a), n_items)`` over the items sorted by id; draws are taken
      in order of ``a``, skipping items viewed in that second and repeats, until
      ``n_pv * negatives_per_positive`` distinct items are found (``SPARE_DRAWS`` extra draws
      per group; on a tiny catalogue a group can end up with fewer negatives).
    """
    pv = behaviors.where(F.col("btag") == "pv")
    positives = pv.select(
        "user_id",
        "ts",
        F.col("item_id").alias("ad_id"),
        F.lit(None).cast("string").alias("slot"),
        F.lit(1).alias("click"),
    )
    if negatives_per_positive <= 0:
        return conform(positives, RAW_IMPRESSIONS, {c: F.col(c) for c in positives.columns})
    negatives = _sample_negatives(behaviors, pv, negatives_per_positive, seed)
    both = positives.unionByName(negatives)
    return conform(both, RAW_IMPRESSIONS, {c: F.col(c) for c in both.columns})


def _item_index(behaviors: DataFrame) -> DataFrame:
    """Distinct items with a dense index 0..n-1 in item id order (deterministic)."""
    items = behaviors.where(F.col("item_id").isNotNull()).select("item_id").distinct()
    # A global row_number puts the distinct items in one partition: fine for millions of items
    # (4.2M in the full dataset), and it is what makes the index independent of partitioning.
    order = Window.orderBy("item_id")
    return items.select("item_id", (F.row_number().over(order) - 1).cast("long").alias("idx"))


def _sample_negatives(behaviors: DataFrame, pv: DataFrame, k: int, seed: int) -> DataFrame:
    index = _item_index(behaviors)
    n_items = index.agg(F.count(F.lit(1)).alias("n_items"))  # > 0 whenever there is a pv
    groups = pv.groupBy("user_id", "ts").agg(
        F.collect_set("item_id").alias("viewed"), F.count(F.lit(1)).alias("n")
    )
    draws = groups.select(
        "user_id",
        "ts",
        "viewed",
        "n",
        F.explode(F.sequence(F.lit(0), F.col("n") * k + SPARE_DRAWS - 1)).alias("draw"),
    )
    draws = draws.crossJoin(F.broadcast(n_items)).withColumn(
        "idx", F.pmod(F.xxhash64(F.lit(seed), "user_id", "ts", "draw"), F.col("n_items"))
    )
    hits = draws.join(index, "idx").where(~F.array_contains("viewed", F.col("item_id")))
    picked = hits.groupBy("user_id", "ts", "n").agg(
        F.array_sort(F.collect_list(F.struct("draw", "item_id"))).alias("cands")
    )
    items = F.array_distinct(F.transform("cands", lambda c: c["item_id"]))
    chosen = picked.select(
        "user_id", "ts", F.explode(F.slice(items, 1, F.col("n") * k)).alias("ad_id")
    )
    return chosen.select(
        "user_id", "ts", "ad_id", F.lit(None).cast("string").alias("slot"), F.lit(0).alias("click")
    )


def item_ads(behaviors: DataFrame) -> DataFrame:
    """One ad per item: its most frequent category (ties: the smallest id); other columns null."""
    counts = behaviors.groupBy("item_id", "cate_id").count()
    best = counts.groupBy("item_id").agg(
        F.max(F.struct(F.col("count"), (-F.col("cate_id")).alias("neg_cate"))).alias("b")
    )
    ads = best.select(F.col("item_id"), (-F.col("b.neg_cate")).alias("cate_id"))
    return conform(ads, ADS, {"ad_id": F.col("item_id"), "cate_id": F.col("cate_id")})
