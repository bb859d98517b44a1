"""The impressions pass as it ran before bucketing: one user per call, kept as a test oracle.

A verbatim copy of the per-user ``user_pass`` (and helpers) of etl/impressions.py before the
pass processed many users per pandas call; tests/test_impressions.py checks that the bucketed
pass gives the same rows (ORACLE_COLUMNS; the pass computes hour, weekday and the dense features
besides). Its events carry ``btag_rank`` and ``e_btag`` columns, which the pass derives itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl.features import GAP_BUCKETS, HISTORY_COLUMNS
from etl.impressions import PassConfig

EVENT_CODE_COLUMNS = ("e_item", "e_cate", "e_brand", "e_btag")  # encoded ids on events
ORACLE_EVENT_COLUMNS = ("btag_rank", "e_btag")  # what the oracle reads beyond the pass's input
ORACLE_COLUMNS = [
    "impression_id",
    "session_id",
    "n_future_views",
    "conversion",
    "session_events",
    "session_seconds",
    "hist_len",
    *HISTORY_COLUMNS,
]


def reference_user_pass(ev: pd.DataFrame, imp: pd.DataFrame, cfg: PassConfig) -> pd.DataFrame:
    """The pass for one user (pure pandas/numpy; unit-testable without Spark)."""
    if imp.empty:  # a user with behaviors only; typed empty columns keep Arrow happy
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in ORACLE_COLUMNS})
    ev = ev.sort_values(
        ["ts", "btag_rank", "item_id", "cate_id", "brand_id"], na_position="first", kind="stable"
    ).reset_index(drop=True)
    imp = imp.reset_index(drop=True)
    ev_ts = ev["ts"].to_numpy(np.int64)
    imp_ts = imp["ts"].to_numpy(np.int64)
    before = np.searchsorted(ev_ts, imp_ts, side="left")  # behaviors strictly before
    upto = np.searchsorted(ev_ts, imp_ts, side="right")  # behaviors at or before
    session_idx = _attach_session(ev_ts, imp_ts, before, cfg.gap_seconds)
    out = {"impression_id": imp["impression_id"].to_numpy(np.int64)}
    out.update(_session_features(ev, ev_ts, imp_ts, before, upto, session_idx))
    out["conversion"] = _conversions(ev, imp, cfg)
    out.update(_histories(ev, ev_ts, imp_ts, before, cfg.max_len))
    return pd.DataFrame(out)


def _attach_session(ev_ts: np.ndarray, imp_ts: np.ndarray, before: np.ndarray, gap: int):
    """Index of an event of the impression's session, or -1 when it belongs to none."""
    n = len(ev_ts)
    if n == 0:
        return np.full(len(imp_ts), -1)
    prev = before - 1
    prev_ok = (prev >= 0) & (imp_ts - ev_ts[np.clip(prev, 0, n - 1)] <= gap)
    next_ok = (before < n) & (ev_ts[np.clip(before, 0, n - 1)] - imp_ts <= gap)
    return np.where(prev_ok, prev, np.where(next_ok, before, -1))


def _session_features(ev, ev_ts, imp_ts, before, upto, session_idx) -> dict[str, np.ndarray]:
    n_imp = len(imp_ts)
    if len(ev) == 0:
        zeros = np.zeros(n_imp, np.int32)
        return {
            "session_id": pd.array([None] * n_imp, dtype="Int64"),
            "n_future_views": zeros,
            "session_events": zeros,
            "session_seconds": np.zeros(n_imp, np.int64),
        }
    sessions = ev["session_id"].to_numpy(np.int64)
    first_idx = _first_index_of_run(sessions)
    last_idx = _last_index_of_run(sessions)
    cum_pv = np.concatenate([[0], np.cumsum(ev["btag"].to_numpy() == "pv")])  # pv in [0, i)
    has = session_idx >= 0
    s = np.where(has, session_idx, 0)
    future = cum_pv[last_idx[s] + 1] - cum_pv[np.maximum(upto, first_idx[s])]
    progress = before - first_idx[s]
    elapsed = imp_ts - ev_ts[first_idx[s]]
    return {
        "session_id": pd.Series(sessions[s], dtype="Int64").where(has),
        "n_future_views": np.where(has, np.maximum(future, 0), 0).astype(np.int32),
        "session_events": np.where(has, np.maximum(progress, 0), 0).astype(np.int32),
        "session_seconds": np.where(has, np.maximum(elapsed, 0), 0).astype(np.int64),
    }


def _first_index_of_run(values: np.ndarray) -> np.ndarray:
    """For each position, the index where its run of equal consecutive values starts."""
    starts = np.r_[True, values[1:] != values[:-1]]
    return np.maximum.accumulate(np.where(starts, np.arange(len(values)), 0))


def _last_index_of_run(values: np.ndarray) -> np.ndarray:
    return (len(values) - 1 - _first_index_of_run(values[::-1]))[::-1]


def _conversions(ev: pd.DataFrame, imp: pd.DataFrame, cfg: PassConfig) -> np.ndarray:
    result = np.zeros(len(imp), np.int32)
    buys = ev[ev["btag"] == "buy"]
    clicked = np.flatnonzero(imp["click"].to_numpy() == 1)
    if buys.empty or clicked.size == 0:
        return result
    c = imp.iloc[clicked]
    dt = buys["ts"].to_numpy(np.int64)[None, :] - c["ts"].to_numpy(np.int64)[:, None]
    in_window = (dt >= 0) & (dt <= cfg.attribution_seconds)
    if cfg.conversion_match == "item":
        match = _eq(c["ad_id"], buys["item_id"])
    else:
        brand_null = c["brand_id"].isna().to_numpy()[:, None]
        match = _eq(c["cate_id"], buys["cate_id"]) & (
            brand_null | _eq(c["brand_id"], buys["brand_id"])
        )
    result[clicked] = (in_window & match).any(axis=1)
    return result


def _eq(left: pd.Series, right: pd.Series) -> np.ndarray:
    """Pairwise equality (len(left), len(right)); nulls never match."""
    a = left.to_numpy(dtype="float64", na_value=np.nan)[:, None]
    b = right.to_numpy(dtype="float64", na_value=np.nan)[None, :]
    return a == b


def _histories(ev, ev_ts, imp_ts, before, max_len: int) -> dict[str, np.ndarray]:
    n_imp = len(imp_ts)
    hist_len = np.minimum(before, max_len).astype(np.int32)
    slots = np.arange(max_len)[None, :]
    pos = (before - hist_len)[:, None] + slots
    valid = slots < hist_len[:, None]
    pos = np.where(valid, pos, 0)
    out: dict[str, np.ndarray] = {"hist_len": hist_len}
    if len(ev) == 0:
        empty = np.zeros((n_imp, max_len), np.int32)
        for col in HISTORY_COLUMNS:
            out[col] = list(empty)
        return out
    for col, code in zip(HISTORY_COLUMNS[:-1], EVENT_CODE_COLUMNS, strict=True):
        ids = ev[code].to_numpy(np.int32)
        out[col] = list(np.where(valid, ids[pos], 0).astype(np.int32))
    minutes = np.maximum(imp_ts[:, None] - ev_ts[pos], 0) / 60.0
    buckets = 2 + np.minimum(np.floor(np.log2(1.0 + minutes)), GAP_BUCKETS - 1)
    out["hist_gap"] = list(np.where(valid, buckets, 0).astype(np.int32))
    return out
