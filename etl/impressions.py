"""Time-ordered pass over each user's events and impressions: labels and histories.

Users are hashed into buckets (``pmod(xxhash64(user_id), n_buckets)``) and one
``cogroup(...).applyInPandas`` call per bucket gets the events and impressions of all its users
(never a join that multiplies rows). A call processes its users at once with numpy: events are
sorted by (user, ts, btag_rank, item, cate, brand), and ``searchsorted`` on composite
(user, time rank) keys finds, for every impression, the user's behaviors strictly before its
timestamp, so no feature can see anything at or after the impression time. Many users per call
because the fixed Python/Arrow cost of a call dominated when there was one per user.

Rules (README "Rules"):
- session: the session of the last behavior before the impression when it is at most ``gap``
  earlier, else the session of the next behavior when it starts at most ``gap`` later, else none.
- n_future_views: the user's pv behaviors in that session strictly after the impression time.
- conversion: a clicked impression whose user buys within ``attribution`` seconds after it
  (buy time in [ts, ts + attribution]) an item matching the ad: the same item
  (``conversion_match="item"``), or the ad's category and brand (``"cate_brand"``); when the ad's
  brand is null, a buy in the ad's category counts.
- history: the last ``max_len`` behaviors strictly before the impression, chronological,
  right-padded with 0; time gaps as log2 buckets of minutes.
- impression features: hour, weekday, price_log, session_events_log, session_minutes_log.

Every feature is computed by the functions of etl/features.py, which online serving
(etl/online.py) calls on a raw request: sessions by the gap rule of ``session_starts`` (the
same boundaries as etl/sessionize.py's Spark windows), behavior codes by ``btag_code``.

Histories leave the pandas function as ``max_len`` plain int columns per feature and become
arrays in Spark (``F.array``): PySpark converts array values from pandas element by element in
Python, plain columns go to Arrow as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, GroupedData
from pyspark.sql import functions as F
from pyspark.sql import types as T

from etl.features import (
    HISTORY_COLUMNS,
    attach_session,
    btag_code,
    btag_rank,
    history,
    impression_features,
    run_bounds,
    session_progress,
    session_starts,
)

EVENT_CODE_COLUMNS = ("e_item", "e_cate", "e_brand")  # vocabulary ids on events (hist_item..)
BUCKETS_PER_PARTITION = 4  # several buckets per shuffle partition even out the hash's skew
PAIRS_PER_CHUNK = 1 << 22  # (click, buy) pairs matched at once: memory of heavy buyers
HISTORY_ROWS_PER_CHUNK = 1 << 16  # impressions whose histories are gathered at once
EVENT_ORDER = ["user_id", "ts", "btag_rank", "item_id", "cate_id", "brand_id"]

SCALAR_OUTPUT = [
    T.StructField("impression_id", T.LongType(), False),
    T.StructField("session_id", T.LongType(), True),
    T.StructField("n_future_views", T.IntegerType(), False),
    T.StructField("conversion", T.IntegerType(), False),
    T.StructField("session_events", T.IntegerType(), False),
    T.StructField("session_seconds", T.LongType(), False),
    T.StructField("hist_len", T.IntegerType(), False),
    T.StructField("hour", T.IntegerType(), False),
    T.StructField("weekday", T.IntegerType(), False),
    T.StructField("price_log", T.FloatType(), False),
    T.StructField("session_events_log", T.FloatType(), False),
    T.StructField("session_minutes_log", T.FloatType(), False),
]
PASS_OUTPUT = T.StructType(
    SCALAR_OUTPUT
    + [T.StructField(c, T.ArrayType(T.IntegerType(), False), False) for c in HISTORY_COLUMNS]
)

EVENT_INPUT_COLUMNS = (
    "user_id",
    "ts",
    "item_id",
    "cate_id",
    "brand_id",
    "btag",
    "session_id",
    *EVENT_CODE_COLUMNS,
)
IMPRESSION_INPUT_COLUMNS = (
    "user_id",
    "impression_id",
    "ts",
    "ad_id",
    "cate_id",
    "brand_id",
    "price",
    "click",
)


@dataclass(frozen=True)
class PassConfig:
    gap_seconds: int
    attribution_seconds: int
    max_len: int
    conversion_match: str  # "item" or "cate_brand"
    n_buckets: int = 0  # user buckets (pandas calls); 0: BUCKETS_PER_PARTITION per partition
    tz_offset_hours: int = 8  # hour and weekday in UTC+offset


@dataclass(frozen=True)
class Encoding:
    """Vocabulary ids computed inside the pass with etl.features.Vocabulary (what serving
    applies), instead of one Spark join per field: the events' codes (``events``: column,
    EVENT_CODE_COLUMNS name, vocabulary) and the impressions' sparse fields (``fields``: output,
    column, vocabulary; written as ENCODED_PREFIX + output). ``carry``: impression columns
    passed through unchanged, so that the pass's output needs no join back."""

    vocabularies: Broadcast  # of {vocabulary name: features.Vocabulary}
    events: tuple[tuple[str, str, str], ...]
    fields: tuple[tuple[str, str, str], ...]
    carry: tuple[T.StructField, ...]

    def impression_columns(self) -> tuple[str, ...]:
        wanted = [*IMPRESSION_INPUT_COLUMNS, *(c for _, c, _ in self.fields)]
        return tuple(dict.fromkeys(wanted + [f.name for f in self.carry]))

    def extra_fields(self) -> list[T.StructField]:
        codes = [T.StructField(ENCODED_PREFIX + f, T.IntegerType(), False) for f, *_ in self.fields]
        return codes + list(self.carry)

    def encode_events(self, ev: pd.DataFrame) -> pd.DataFrame:
        vocab = self.vocabularies.value
        return ev.assign(**{out: _encode(vocab[name], ev[col]) for col, out, name in self.events})

    def add_columns(self, out: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
        """The pass's rows (in ``imp`` order) with the encoded fields and carried columns."""
        vocab = self.vocabularies.value
        extra = {ENCODED_PREFIX + f: _encode(vocab[name], imp[c]) for f, c, name in self.fields}
        extra |= {f.name: imp[f.name].to_numpy() for f in self.carry}
        return out.reset_index(drop=True).assign(**extra)


ENCODED_PREFIX = "enc_"


def _encode(vocab, values: pd.Series) -> np.ndarray:
    if vocab.strings or pd.api.types.is_integer_dtype(values.dtype):
        return vocab.encode(values)
    # Arrow hands nullable longs over as float64 with NaN: encode's vectorized float path.
    return vocab.encode(values.to_numpy(dtype="float64", na_value=np.nan))


def bucket_count(n_rows: int, rows_per_bucket: int, shuffle_partitions: int) -> int:
    """Buckets of at most ``rows_per_bucket`` rows on average (memory of one pandas call), and
    at least a few per shuffle partition (parallelism)."""
    return max(BUCKETS_PER_PARTITION * shuffle_partitions, math.ceil(n_rows / rows_per_bucket))


def label_and_history(
    events: DataFrame, impressions: DataFrame, cfg: PassConfig, encoding: Encoding | None = None
) -> DataFrame:
    """Run the pass per user bucket; returns one PASS_OUTPUT row per impression (plus
    ``encoding``'s columns when given; the events then need no EVENT_CODE_COLUMNS)."""
    n_buckets = cfg.n_buckets or BUCKETS_PER_PARTITION * int(
        events.sparkSession.conf.get("spark.sql.shuffle.partitions")
    )
    ev_columns, imp_columns, extra = EVENT_INPUT_COLUMNS, IMPRESSION_INPUT_COLUMNS, []
    if encoding is not None:
        ev_columns = tuple(c for c in EVENT_INPUT_COLUMNS if c not in EVENT_CODE_COLUMNS)
        imp_columns, extra = encoding.impression_columns(), encoding.extra_fields()

    def bucketed(df: DataFrame, columns: tuple[str, ...]) -> GroupedData:
        # The cast: both sides must hash the same value type to meet in one bucket.
        bucket = F.pmod(F.xxhash64(F.col("user_id").cast("long")), F.lit(n_buckets))
        return df.select(*columns).withColumn("_bucket", bucket).groupBy("_bucket")

    def per_bucket(ev: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
        if encoding is None:
            return bucket_pass(ev, imp, cfg)
        out = bucket_pass(encoding.encode_events(ev), imp, cfg)
        return encoding.add_columns(out, imp.reset_index(drop=True))

    schema = T.StructType(flat_schema(cfg.max_len).fields + extra)
    flat = (
        bucketed(events, ev_columns)
        .cogroup(bucketed(impressions, imp_columns))
        .applyInPandas(per_bucket, schema=schema)
    )
    scalars = [f.name for f in SCALAR_OUTPUT]
    return flat.select(*scalars, *_history_arrays(cfg.max_len), *[f.name for f in extra])


def flat_schema(max_len: int) -> T.StructType:
    """bucket_pass's output: the scalar columns, then history slot i of feature c as c_i."""
    slots = [T.StructField(name, T.IntegerType(), False) for name in _slot_names(max_len).values()]
    return T.StructType(SCALAR_OUTPUT + slots)


def _slot_names(max_len: int) -> dict[tuple[str, int], str]:
    """(column, slot) -> flat column name, in schema order."""
    return {(c, i): f"{c}_{i}" for c in HISTORY_COLUMNS for i in range(max_len)}


def _history_arrays(max_len: int) -> list[Column]:
    names = _slot_names(max_len)
    return [
        F.array(*[F.col(names[c, i]) for i in range(max_len)]).alias(c) for c in HISTORY_COLUMNS
    ]


def user_pass(ev: pd.DataFrame, imp: pd.DataFrame, cfg: PassConfig) -> pd.DataFrame:
    """The pass without Spark (pure pandas/numpy, any number of users): PASS_OUTPUT columns,
    one history array per row."""
    flat = bucket_pass(ev, imp, cfg)
    out = flat[[f.name for f in SCALAR_OUTPUT]].copy()
    names = _slot_names(cfg.max_len)
    for c in HISTORY_COLUMNS:
        slots = flat[[names[c, i] for i in range(cfg.max_len)]].to_numpy(np.int32)
        out[c] = list(slots)
    return out


def bucket_pass(ev: pd.DataFrame, imp: pd.DataFrame, cfg: PassConfig) -> pd.DataFrame:
    """The pass for the users of one bucket, all at once; flat_schema columns, rows in the
    order of ``imp``."""
    if imp.empty:  # a bucket with behaviors only
        return _empty_flat(cfg.max_len)
    ev = ev.assign(btag_rank=btag_rank(ev["btag"].to_numpy()))
    ev = ev.sort_values(EVENT_ORDER, na_position="first", kind="stable").reset_index(drop=True)
    imp = imp.reset_index(drop=True)
    keys = _Keys(ev, imp, cfg.attribution_seconds)
    before = np.searchsorted(keys.ev, keys.imp, side="left")  # behaviors strictly before
    upto = np.searchsorted(keys.ev, keys.imp, side="right")  # behaviors at or before
    first = np.searchsorted(keys.ev_user, keys.imp_user, side="left")  # the user's events:
    end = np.searchsorted(keys.ev_user, keys.imp_user, side="right")  # [first, end)
    session_idx = attach_session(keys.ev_ts, keys.imp_ts, before, first, end, cfg.gap_seconds)
    out: dict[str, object] = {"impression_id": imp["impression_id"].to_numpy(np.int64)}
    out.update(_session_features(ev, keys, before, upto, session_idx, cfg.gap_seconds))
    out["conversion"] = _conversions(ev, imp, keys, cfg)
    out.update(_histories(ev, keys, before, first, cfg.max_len))
    price = _floats(imp["price"])
    out.update(
        impression_features(
            keys.imp_ts, price, out["session_events"], out["session_seconds"], cfg.tz_offset_hours
        )
    )
    return pd.DataFrame(out)


def _empty_flat(max_len: int) -> pd.DataFrame:
    dtypes = {T.LongType(): "int64", T.IntegerType(): "int32", T.FloatType(): "float32"}
    columns = {f.name: pd.Series([], dtype=dtypes[f.dataType]) for f in flat_schema(max_len)}
    columns["session_id"] = pd.Series([], dtype="Int64")
    return pd.DataFrame(columns)


class _Keys:
    """Sort keys for events (sorted by user, then time) and impressions of a bucket.

    ``user code * n_times + time rank`` orders by (user, time) and, since time ranks are dense
    over the bucket's timestamps (and the attribution window ends), cannot overflow int64.
    """

    def __init__(self, ev: pd.DataFrame, imp: pd.DataFrame, attribution: int) -> None:
        ev_uid = ev["user_id"].to_numpy(np.int64)
        imp_uid = imp["user_id"].to_numpy(np.int64)
        users = np.unique(np.concatenate([ev_uid, imp_uid]))  # sorted: codes follow user_id
        self.ev_user = np.searchsorted(users, ev_uid)
        self.imp_user = np.searchsorted(users, imp_uid)
        self.ev_ts = ev["ts"].to_numpy(np.int64)
        self.imp_ts = imp["ts"].to_numpy(np.int64)
        self._times = np.unique(
            np.concatenate([self.ev_ts, self.imp_ts, self.imp_ts + attribution])
        )
        self.ev = self.key(self.ev_user, self.ev_ts)
        self.imp = self.key(self.imp_user, self.imp_ts)

    def key(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Key of (user code, ts); ts must be one of the times given to the constructor."""
        return user.astype(np.int64) * len(self._times) + np.searchsorted(self._times, ts)


def _session_features(
    ev: pd.DataFrame,
    keys: _Keys,
    before: np.ndarray,
    upto: np.ndarray,
    session_idx: np.ndarray,
    gap: int,
) -> dict[str, object]:
    n_imp = len(keys.imp_ts)
    if len(ev) == 0:
        zeros = np.zeros(n_imp, np.int32)
        return {
            "session_id": pd.array([None] * n_imp, dtype="Int64"),
            "n_future_views": zeros,
            "session_events": zeros,
            "session_seconds": np.zeros(n_imp, np.int64),
        }
    sessions = ev["session_id"].to_numpy(np.int64)
    # Session runs by the gap rule (the boundaries of the session ids; ids repeat across users).
    first_idx, last_idx = run_bounds(session_starts(keys.ev_user, keys.ev_ts, gap))
    cum_pv = np.concatenate([[0], np.cumsum(ev["btag"].to_numpy() == "pv")])  # pv in [0, i)
    has = session_idx >= 0
    s = np.where(has, session_idx, 0)
    future = cum_pv[last_idx[s] + 1] - cum_pv[np.maximum(upto, first_idx[s])]
    progress, elapsed = session_progress(keys.ev_ts, keys.imp_ts, before, session_idx, first_idx)
    return {
        "session_id": pd.Series(sessions[s], dtype="Int64").where(has),
        "n_future_views": np.where(has, np.maximum(future, 0), 0).astype(np.int32),
        "session_events": progress,
        "session_seconds": elapsed,
    }


def _conversions(ev: pd.DataFrame, imp: pd.DataFrame, keys: _Keys, cfg: PassConfig) -> np.ndarray:
    """Per clicked impression, the user's buys in [ts, ts + attribution] (a key range), expanded
    to (click, buy) pairs and matched: only the pairs in a window, a chunk of them at a time."""
    result = np.zeros(len(imp), np.int32)
    buys = np.flatnonzero(ev["btag"].to_numpy() == "buy")
    clicked = np.flatnonzero(imp["click"].to_numpy() == 1)
    if buys.size == 0 or clicked.size == 0:
        return result
    user, ts = keys.imp_user[clicked], keys.imp_ts[clicked]
    buy_keys = keys.ev[buys]  # sorted: a subsequence of the sorted events
    lo = np.searchsorted(buy_keys, keys.key(user, ts), side="left")
    hi = np.searchsorted(buy_keys, keys.key(user, ts + cfg.attribution_seconds), side="right")
    matches = _matcher(imp.iloc[clicked], ev.iloc[buys], cfg.conversion_match)
    for part in _chunks(hi - lo, PAIRS_PER_CHUNK):
        click_at, buy_at = _expand_ranges(lo[part], hi[part])
        hit = click_at[matches(part[click_at], buy_at)]
        result[clicked[part]] = np.bincount(hit, minlength=part.size) > 0
    return result


def _matcher(clicks: pd.DataFrame, buys: pd.DataFrame, mode: str) -> Callable[..., np.ndarray]:
    """(click rows, buy rows) -> whether the buy matches the ad; nulls never match, but a null
    ad brand accepts any brand."""
    if mode == "item":
        ad, item = _floats(clicks["ad_id"]), _floats(buys["item_id"])
        return lambda c, b: ad[c] == item[b]
    ad_cate, ad_brand = _floats(clicks["cate_id"]), _floats(clicks["brand_id"])
    cate, brand = _floats(buys["cate_id"]), _floats(buys["brand_id"])
    any_brand = np.isnan(ad_brand)
    return lambda c, b: (ad_cate[c] == cate[b]) & (any_brand[c] | (ad_brand[c] == brand[b]))


def _floats(values: pd.Series) -> np.ndarray:
    return values.to_numpy(dtype="float64", na_value=np.nan)  # NaN == anything is False


def _chunks(counts: np.ndarray, limit: int) -> list[np.ndarray]:
    """Consecutive runs of indices whose counts add up to about ``limit`` each."""
    chunk = np.cumsum(counts) // limit
    return np.split(np.arange(len(counts)), np.flatnonzero(np.diff(chunk)) + 1)


def _expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with lo[i] <= j < hi[i], as two flat arrays."""
    counts = np.maximum(hi - lo, 0)
    row = np.repeat(np.arange(len(lo)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return row, lo[row] + offset


def _histories(
    ev: pd.DataFrame, keys: _Keys, before: np.ndarray, first: np.ndarray, max_len: int
) -> dict[str, np.ndarray]:
    """Slot i of each history feature as column ``<feature>_i`` (see features.history), a
    chunk of impressions at a time (bounds the temporaries)."""
    n_imp = len(before)
    codes = {
        col: ev[code].to_numpy(np.int32)
        for col, code in zip(HISTORY_COLUMNS[:3], EVENT_CODE_COLUMNS, strict=True)
    }
    codes["hist_btag"] = btag_code(ev["btag"].to_numpy())
    matrices = {c: np.zeros((n_imp, max_len), np.int32) for c in HISTORY_COLUMNS}
    hist_len = np.zeros(n_imp, np.int32)
    for start in range(0, n_imp, HISTORY_ROWS_PER_CHUNK):
        rows = slice(start, start + HISTORY_ROWS_PER_CHUNK)
        part, hist_len[rows] = history(
            codes, keys.ev_ts, keys.imp_ts[rows], before[rows], first[rows], max_len
        )
        for col, matrix in part.items():
            matrices[col][rows] = matrix
    out: dict[str, np.ndarray] = {"hist_len": hist_len}
    for (col, i), name in _slot_names(max_len).items():
        out[name] = matrices[col][:, i]
    return out
