"""The definition of every encoded feature, in numpy/pandas: one definition, two callers.

The Spark ETL calls these functions inside its per-user pandas pass (etl/impressions.py, one
``applyInPandas`` call per user bucket) and online serving calls them on one request
(etl/online.py), so a served row is the row the ETL writes to ``samples``, bit for bit. No
pyspark, torch or Ray import here or in what this module imports.

- vocabularies: raw value -> id; null -> PAD_ID (0), a value the vocabulary lacks -> UNKNOWN_ID
  (1), known values from FIRST_ID (2) on (``vocab_ids``; the Spark joins of etl/vocab.py follow
  the same rule, checked by tests/test_online_features.py);
- behaviors: ``btag_rank`` (the funnel order pv, cart, fav, buy of same-second behaviors) and
  ``btag_code`` (its id in the ``btag`` vocabulary);
- sessions: ``session_starts`` (a new session when two consecutive behaviors of a user are more
  than ``gap`` seconds apart; exactly ``gap`` stays), ``attach_session`` and
  ``session_progress`` (behaviors and seconds of the impression's session before it);
- history: ``history`` (the last ``max_len`` behaviors strictly before the impression,
  chronological, right-padded with 0) and ``gap_bucket`` (2 + floor(log2(1 + minutes)), capped);
- per impression: ``impression_features`` (hour and weekday in the lake's time zone, price_log,
  session_events_log, session_minutes_log as float32 of numpy's log1p in float64);
- candidate x history: ``cross_features`` (CROSS_FIELDS, computed from the encoded history and
  the candidate's ids; the Spark side is etl/cross.py, the same rule in array functions).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from etl.formats import TAOBAO_PROFILE_COLUMNS

PAD_ID = 0  # padding and null raw values
UNKNOWN_ID = 1  # a raw value the vocabulary does not hold (unseen in train or below min_count)
FIRST_ID = 2  # the first id of a known value

# Behavior types in funnel order; the profile fields are user_profile.csv's columns, the gender
# renamed. etl/schemas.py and etl/quality.py (Spark) take them from here.
BTAGS = ("pv", "cart", "fav", "buy")
PROFILE_RENAMES = {"final_gender_code": "gender"}
USER_PROFILE_FIELDS = tuple(PROFILE_RENAMES.get(c, c) for c in TAOBAO_PROFILE_COLUMNS)

NULL_TOKENS = ("", "NULL", "null")  # raw texts read as null in nullable columns
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")  # a raw id as the CSV parser accepts it ("long")

GAP_BUCKETS = 16  # gap ids 2..17: 2 + floor(log2(1 + minutes)), capped
GAP_VOCAB_SIZE = GAP_BUCKETS + 2
HISTORY_COLUMNS = ("hist_item", "hist_cate", "hist_brand", "hist_btag", "hist_gap")

# (samples field, column of the enriched impressions, vocabulary) for learned vocabularies.
SPARSE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("user", "user_id", "user"),
    ("ad", "ad_id", "item"),
    ("cate", "cate_id", "cate"),
    ("brand", "brand_id", "brand"),
    ("campaign", "campaign_id", "campaign"),
    ("customer", "customer_id", "customer"),
    ("slot", "slot", "slot"),
    *((name, name, name) for name in USER_PROFILE_FIELDS),
)
STRING_VOCABS = frozenset({"slot"})  # raw strings; every other vocabulary holds integer ids
# (events column, encoded column, vocabulary) shared with the ad-side fields above.
EVENT_FIELDS = (
    ("item_id", "e_item", "item"),
    ("cate_id", "e_cate", "cate"),
    ("brand_id", "e_brand", "brand"),
)
SEQUENCE_VOCABS = dict(zip(HISTORY_COLUMNS, ("item", "cate", "brand", "btag", "gap"), strict=True))
SEQUENCE_SOURCE = {"hist_item": "item_id", "hist_cate": "cate_id", "hist_brand": "brand_id"}
# Candidate x history cross features, per key (candidate field, history field) whose ids share a
# vocabulary: x_<key>_count (matches in the history, bucketed), x_<key>_gap (hist_gap bucket of
# the latest match), x_<key>_btag (deepest funnel step among the matches), x_<key>_last (does
# the last behavior match). A candidate id below FIRST_ID (null or unknown) never matches: the
# four features are then that id itself; PAD/UNKNOWN history entries never match either.
CROSS_KEYS = (  # (key, candidate field, history field)
    ("item", "ad", "hist_item"),
    ("cate", "cate", "hist_cate"),
    ("brand", "brand", "hist_brand"),
)
COUNT_THRESHOLDS = (1, 2, 4, 8, 16, 32)  # count bucket = thresholds reached: 0..6
NO_MATCH = {"gap": GAP_VOCAB_SIZE, "btag": len(BTAGS) + FIRST_ID}  # "never in the history" ids
CROSS_VOCAB_SIZES = {
    "count": len(COUNT_THRESHOLDS) + 1 + FIRST_ID,
    "gap": NO_MATCH["gap"] + 1,
    "btag": NO_MATCH["btag"] + 1,
    "last": FIRST_ID + 2,  # 2: the last behavior does not match, 3: it does
}
# (samples field, key, kind): x_cate_count, x_cate_gap, ...
CROSS_FIELDS = tuple(
    (f"x_{key}_{kind}", key, kind) for key, *_ in CROSS_KEYS for kind in CROSS_VOCAB_SIZES
)
FIXED_VOCAB_SIZES = {
    "hour": 24 + FIRST_ID,
    "weekday": 7 + FIRST_ID,
    "btag": len(BTAGS) + FIRST_ID,
    "gap": GAP_VOCAB_SIZE,
    **{name: CROSS_VOCAB_SIZES[kind] for name, _, kind in CROSS_FIELDS},
}
DENSE_FIELDS = ("price_log", "session_events_log", "session_minutes_log")
IMPRESSION_FEATURES = ("hour", "weekday", *DENSE_FIELDS)  # what impression_features returns


def vocab_ids(found: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The encoding rule: ``found`` = the vocabulary's id of each value or -1 where it has
    none; null values -> PAD_ID, values without an id -> UNKNOWN_ID."""
    return np.where(null, PAD_ID, np.where(found < 0, UNKNOWN_ID, found)).astype(np.int32)


def int_ids(values, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids -> (int64 ids, null mask). None, NaN, NA and the NULL_TOKENS texts are null;
    ints, integral floats and decimal texts are ids; anything else is a ValueError naming
    ``what``. Integer arrays take a vectorized path, other inputs one step per value."""
    if isinstance(values, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        if pd.api.types.is_integer_dtype(values.dtype):
            null = np.asarray(pd.isna(values), bool)
            return np.asarray(pd.Series(values).fillna(0), np.int64), null
        values = np.asarray(values, dtype=object)
    arr = np.atleast_1d(np.asarray(values))
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64), np.zeros(arr.shape, bool)
    if arr.dtype.kind == "f":
        null = np.isnan(arr)
        if not np.all(null | (np.isfinite(arr) & (arr == np.floor(arr)))):
            raise ValueError(f"{what}: {arr[~null][0]!r}... is not an integer id")
        return np.where(null, 0, arr).astype(np.int64), null
    ids, null = np.zeros(arr.shape, np.int64), np.zeros(arr.shape, bool)
    for i, v in enumerate(arr.tolist()):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            null[i] = True
        elif isinstance(v, bool):
            raise ValueError(f"{what}: {v!r} is not an integer id")
        elif isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
            ids[i] = int(v)
        elif isinstance(v, str) and v.strip() in NULL_TOKENS:
            null[i] = True
        elif isinstance(v, str) and _INT_TEXT.fullmatch(v.strip()):
            ids[i] = int(v.strip())
        else:
            raise ValueError(f"{what}: {v!r} is not an integer id")
    return ids, null


def string_keys(values) -> tuple[np.ndarray, np.ndarray]:
    """Raw strings (e.g. a pid) -> (stripped texts, null mask); None/NaN are null."""
    arr = np.atleast_1d(np.asarray(values, dtype=object))
    null = np.asarray(pd.isna(arr), bool)
    keys = np.array(["" if n else str(v).strip() for v, n in zip(arr, null, strict=True)], object)
    return keys, null


class Vocabulary:
    """One vocabulary as the lake's ``vocab`` table holds it (raw value as text -> id), with
    ``encode`` applying ``vocab_ids``. Id vocabularies (all but STRING_VOCABS) hold Spark's
    decimal texts of long ids and are looked up as int64 (sorted keys, ``searchsorted``)."""

    def __init__(self, name: str, raw: np.ndarray, ids: np.ndarray) -> None:
        self.name = name
        raw = np.asarray(raw, dtype=object)
        ids = np.asarray(ids, dtype=np.int64)
        self.size = int(max(ids.max(initial=FIRST_ID - 1) + 1, FIRST_ID))
        self.strings = name in STRING_VOCABS
        if self.strings:
            self._index = pd.Index(raw)
            self._ids = ids
            return
        keys, null = int_ids(raw, f"vocabulary {name}")
        if null.any() or not np.array_equal(keys.astype(str).astype(object), raw):
            raise ValueError(f"vocabulary {name} holds a raw value that is not a decimal id")
        order = np.argsort(keys, kind="stable")
        self._keys, self._ids = keys[order], ids[order]

    def encode(self, values) -> np.ndarray:
        """int32 ids of raw values (null -> PAD_ID, not in the vocabulary -> UNKNOWN_ID)."""
        if self.strings:
            keys, null = string_keys(values)
            pos = self._index.get_indexer(keys)
            if len(self._ids) == 0:
                return vocab_ids(np.full(len(keys), -1, np.int64), null)
            found = np.where(pos >= 0, self._ids[np.maximum(pos, 0)], -1)
            return vocab_ids(found, null)
        ids, null = int_ids(values, self.name)
        return vocab_ids(self.lookup(ids), null)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The id of each int64 raw id, -1 where the vocabulary has none."""
        if len(self._keys) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
        return np.where(self._keys[pos] == ids, self._ids[pos], -1)


def btag_rank(btags: np.ndarray) -> np.ndarray:
    """Position of each behavior type in BTAGS (the order of same-second behaviors); anything
    else ranks after them."""
    btags = np.asarray(btags, dtype=object)
    rank = np.full(btags.shape, len(BTAGS), np.int64)
    for i, tag in enumerate(BTAGS):
        rank[btags == tag] = i
    return rank


def btag_code(btags: np.ndarray) -> np.ndarray:
    """Id of each behavior type in the fixed ``btag`` vocabulary."""
    return (btag_rank(btags) + FIRST_ID).astype(np.int32)


def gap_bucket(seconds: np.ndarray) -> np.ndarray:
    """Time-gap id of a behavior ``seconds`` before the impression (negative counts as 0)."""
    minutes = np.maximum(seconds, 0) / 60.0
    return (2 + np.minimum(np.floor(np.log2(1.0 + minutes)), GAP_BUCKETS - 1)).astype(np.int32)


def log1p_f32(values: np.ndarray) -> np.ndarray:
    """float32 of log(1 + x) computed in float64 (the dense features' one computation)."""
    return np.log1p(np.asarray(values, dtype=np.float64)).astype(np.float32)


def hour_weekday(ts: np.ndarray, tz_offset_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the local hour (0..23 -> 2..25) and weekday (Sunday..Saturday -> 2..8) of Unix
    seconds ``ts`` in UTC+``tz_offset_hours`` (1970-01-01 was a Thursday)."""
    local = np.asarray(ts, dtype=np.int64) + tz_offset_hours * 3600
    hour = (local // 3600) % 24 + FIRST_ID
    weekday = (local // 86400 + 4) % 7 + FIRST_ID
    return hour.astype(np.int32), weekday.astype(np.int32)


def impression_features(
    ts: np.ndarray,
    price: np.ndarray,
    session_events: np.ndarray,
    session_seconds: np.ndarray,
    tz_offset_hours: int,
) -> dict[str, np.ndarray]:
    """IMPRESSION_FEATURES of impressions at ``ts`` of ads at ``price`` (NaN = null -> 0)."""
    hour, weekday = hour_weekday(ts, tz_offset_hours)
    price = np.asarray(price, dtype=np.float64)
    return {
        "hour": hour,
        "weekday": weekday,
        "price_log": log1p_f32(np.where(np.isnan(price), 0.0, price)),
        "session_events_log": log1p_f32(session_events),
        "session_minutes_log": log1p_f32(np.asarray(session_seconds, np.int64) / 60.0),
    }


def session_starts(user: np.ndarray, ts: np.ndarray, gap: int) -> np.ndarray:
    """Where a session starts in behaviors sorted by (user, ts): a user's first behavior, and a
    behavior more than ``gap`` seconds after the previous one (exactly ``gap`` stays)."""
    ts = np.asarray(ts, dtype=np.int64)
    if ts.size == 0:
        return np.zeros(0, bool)
    return np.r_[True, (np.diff(user) != 0) | (np.diff(ts) > gap)]


def run_bounds(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position, the first and last index of its run (runs begin where starts)."""
    n = len(starts)
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    ends = np.r_[starts[1:], True]
    last = np.minimum.accumulate(np.where(ends, idx, n)[::-1])[::-1]
    return first, last


def attach_session(
    ev_ts: np.ndarray,
    imp_ts: np.ndarray,
    before: np.ndarray,
    first: np.ndarray,
    end: np.ndarray,
    gap: int,
) -> np.ndarray:
    """Index of a behavior of the impression's session, or -1 when it belongs to none: the last
    behavior before it when that is at most ``gap`` earlier, else the next one when that is at
    most ``gap`` later. ``before``: index of the first behavior at or after the impression;
    ``[first, end)``: the user's behaviors."""
    n = len(ev_ts)
    if n == 0:
        return np.full(len(imp_ts), -1)
    prev = before - 1
    prev_ok = (prev >= first) & (imp_ts - ev_ts[np.clip(prev, 0, n - 1)] <= gap)
    next_ok = (before < end) & (ev_ts[np.clip(before, 0, n - 1)] - imp_ts <= gap)
    return np.where(prev_ok, prev, np.where(next_ok, before, -1))


def session_progress(
    ev_ts: np.ndarray,
    imp_ts: np.ndarray,
    before: np.ndarray,
    session_idx: np.ndarray,
    session_first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(behaviors, seconds) of the impression's session before the impression; 0 without one.
    ``session_first``: per behavior, the index where its session starts."""
    if len(ev_ts) == 0:
        return np.zeros(len(imp_ts), np.int32), np.zeros(len(imp_ts), np.int64)
    has = session_idx >= 0
    start = session_first[np.where(has, session_idx, 0)]
    progress = np.where(has, np.maximum(before - start, 0), 0)
    elapsed = np.where(has, np.maximum(imp_ts - ev_ts[start], 0), 0)
    return progress.astype(np.int32), elapsed.astype(np.int64)


def history(
    codes: dict[str, np.ndarray],
    ev_ts: np.ndarray,
    imp_ts: np.ndarray,
    before: np.ndarray,
    first: np.ndarray,
    max_len: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """History matrices (impressions x max_len, int32) and lengths: behaviors [start, before)
    with start = max(before - max_len, first), then zeros. ``codes``: history column -> id of
    each behavior; ``hist_gap`` is added (time-gap buckets)."""
    hist_len = np.minimum(before - first, max_len).astype(np.int32)
    shape = (len(before), max_len)
    if len(ev_ts) == 0:
        zeros = {c: np.zeros(shape, np.int32) for c in [*codes, "hist_gap"]}
        return zeros, hist_len
    slots = np.arange(max_len)[None, :]
    valid = slots < hist_len[:, None]
    pos = np.where(valid, (before - hist_len)[:, None] + slots, 0)
    out = {col: np.where(valid, ids[pos], 0).astype(np.int32) for col, ids in codes.items()}
    gaps = gap_bucket(np.asarray(imp_ts)[:, None] - ev_ts[pos])
    out["hist_gap"] = np.where(valid, gaps, 0).astype(np.int32)
    return out, hist_len


def cross_names(available: set[str] | frozenset[str]) -> list[str]:
    """CROSS_FIELDS that ``available`` fields define: a key needs its candidate and history
    fields; the ``gap`` and ``btag`` kinds also need hist_gap and hist_btag."""
    keys = {key for key, cand, hist in CROSS_KEYS if {cand, hist} <= available}
    needs = {"count": set(), "last": set(), "gap": {"hist_gap"}, "btag": {"hist_btag"}}
    return [n for n, key, kind in CROSS_FIELDS if key in keys and needs[kind] <= available]


def cross_features(
    candidates: dict[str, np.ndarray],
    hist: dict[str, np.ndarray],
    hist_len: np.ndarray,
    names: list[str],
) -> dict[str, np.ndarray]:
    """The cross features ``names`` (of ``cross_names``), int32 (n,) each. ``candidates``:
    candidate field -> (n,) ids; ``hist``: history field -> (n, L) or (1, L) ids, right-padded
    with PAD_ID; ``hist_len``: (n,) or (1,)."""
    spec = {name: (key, kind) for name, key, kind in CROSS_FIELDS}
    fields = {key: (cand, h) for key, cand, h in CROSS_KEYS}
    out = {}
    for name in names:
        key, kind = spec[name]
        cand = np.asarray(candidates[fields[key][0]], np.int64)
        seq = np.broadcast_to(hist[fields[key][1]], (len(cand), hist[fields[key][1]].shape[1]))
        match = (seq == cand[:, None]) & (cand[:, None] >= FIRST_ID)
        if kind == "count":
            count = match.sum(axis=1)
            value = FIRST_ID + sum((count >= t).astype(np.int64) for t in COUNT_THRESHOLDS)
        elif kind == "gap":
            last = seq.shape[1] - 1 - np.argmax(match[:, ::-1], axis=1)
            gaps = np.broadcast_to(hist["hist_gap"], seq.shape)
            value = np.where(match.any(axis=1), gaps[np.arange(len(cand)), last], NO_MATCH[kind])
        elif kind == "btag":
            deepest = np.where(match, np.broadcast_to(hist["hist_btag"], seq.shape), 0).max(axis=1)
            value = np.where(deepest > 0, deepest, NO_MATCH[kind])
        else:  # last: the last behavior (hist_len - 1) matches
            lengths = np.broadcast_to(np.asarray(hist_len, np.int64), cand.shape)
            at = match[np.arange(len(cand)), np.maximum(lengths - 1, 0)] & (lengths > 0)
            value = FIRST_ID + at.astype(np.int64)
        out[name] = np.where(cand < FIRST_ID, cand, value).astype(np.int32)
    return out
