"""The one place that defines each canonical table's schema (table names: etl/tables.py).

Source adapters (etl/sources/) map raw files onto the *input* schemas below; the transforms
(sessionize, impressions, samples) produce the *lake* tables. Raw ids stay ``long``; encoded ids
in ``samples`` are ``int`` (0 = padding/missing, 1 = unknown).
"""

from __future__ import annotations

from pyspark.sql import types as T

from etl.features import USER_PROFILE_FIELDS

# --- adapter outputs (canonical inputs of the transforms) -------------------------------------
BEHAVIORS = T.StructType(
    [
        T.StructField("user_id", T.LongType(), False),
        T.StructField("ts", T.LongType(), False),  # unix seconds
        T.StructField("item_id", T.LongType(), True),  # taobao_ad behavior_log has no item
        T.StructField("cate_id", T.LongType(), True),
        T.StructField("brand_id", T.LongType(), True),
        T.StructField("btag", T.StringType(), False),  # one of BTAGS
    ]
)

RAW_IMPRESSIONS = T.StructType(
    [
        T.StructField("user_id", T.LongType(), False),
        T.StructField("ts", T.LongType(), False),
        T.StructField("ad_id", T.LongType(), False),
        T.StructField("slot", T.StringType(), True),  # taobao pid, e.g. 430548_1007
        T.StructField("click", T.IntegerType(), False),
    ]
)

ADS = T.StructType(
    [
        T.StructField("ad_id", T.LongType(), False),
        T.StructField("cate_id", T.LongType(), True),
        T.StructField("campaign_id", T.LongType(), True),
        T.StructField("customer_id", T.LongType(), True),
        T.StructField("brand_id", T.LongType(), True),
        T.StructField("price", T.DoubleType(), True),
    ]
)

USERS = T.StructType(
    [T.StructField("user_id", T.LongType(), False)]
    + [T.StructField(name, T.IntegerType(), True) for name in USER_PROFILE_FIELDS]
)

# --- lake tables ------------------------------------------------------------------------------
EVENTS = T.StructType(
    BEHAVIORS.fields
    + [
        T.StructField("session_id", T.LongType(), False),
        T.StructField("pos", T.IntegerType(), False),  # 0-based position inside the session
        T.StructField("day", T.DateType(), False),  # UTC+8 calendar day
    ]
)

SESSIONS = T.StructType(
    [
        T.StructField("user_id", T.LongType(), False),
        T.StructField("session_id", T.LongType(), False),
        T.StructField("start_ts", T.LongType(), False),
        T.StructField("end_ts", T.LongType(), False),
        T.StructField("n_events", T.LongType(), False),
        T.StructField("n_pv", T.LongType(), False),
        T.StructField("n_cart", T.LongType(), False),
        T.StructField("n_fav", T.LongType(), False),
        T.StructField("n_buy", T.LongType(), False),
        T.StructField("day", T.DateType(), False),
    ]
)

IMPRESSIONS = T.StructType(
    [
        T.StructField("impression_id", T.LongType(), False),
        T.StructField("user_id", T.LongType(), False),
        T.StructField("ts", T.LongType(), False),
        T.StructField("ad_id", T.LongType(), False),
        T.StructField("slot", T.StringType(), True),
        T.StructField("click", T.IntegerType(), False),
        T.StructField("conversion", T.IntegerType(), False),
        T.StructField("n_future_views", T.IntegerType(), False),
        T.StructField("session_id", T.LongType(), True),
        T.StructField("day", T.DateType(), False),
    ]
)

QUARANTINE = T.StructType(
    [
        T.StructField("source", T.StringType(), False),  # adapter name, e.g. taobao_ad
        T.StructField("file", T.StringType(), False),  # input file path
        T.StructField("line_no", T.LongType(), True),  # 1-based line number when known
        # the line as text: verbatim when it is UTF-8, else each byte that is not part of a
        # UTF-8 character as \xNN (Python's bytes.decode("utf-8", "backslashreplace"))
        T.StructField("raw", T.StringType(), True),
        T.StructField("raw_bytes", T.BinaryType(), True),  # the line's bytes, exactly as read
        T.StructField("raw_length", T.IntegerType(), True),  # its length in bytes
        T.StructField("reason", T.StringType(), False),  # short machine-readable reason
    ]
)

VOCAB = T.StructType(
    [
        T.StructField("vocab", T.StringType(), False),  # vocabulary name (shared by fields)
        T.StructField("raw", T.StringType(), False),  # raw value as string
        T.StructField("id", T.IntegerType(), False),  # >= 2; 0 = padding, 1 = unknown
        T.StructField("count", T.LongType(), False),  # occurrences in the train period
    ]
)

# Columns every samples table carries besides its feature columns (see etl/spec.py).
SAMPLE_KEYS = T.StructType(
    [
        T.StructField("impression_id", T.LongType(), False),
        T.StructField("user_key", T.LongType(), False),  # raw user id, for GAUC
        T.StructField("ts", T.LongType(), True),
        T.StructField("day", T.DateType(), True),
        T.StructField("split", T.StringType(), False),  # train / valid / test
    ]
)
LABELS = ("click", "conversion", "n_future_views")
LABEL_TYPES = {"click": T.FloatType(), "conversion": T.FloatType(), "n_future_views": T.FloatType()}
