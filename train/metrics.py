"""Offline metrics (numpy in, python floats out) and the registry that knows each one.

The registry (``METRICS``) names every metric ``evaluate`` returns, its direction (``mode``:
"max" or "min", FuxiCTR's ``monitor_mode``), the rows it is computed on and whether it is a
quality metric or a count. Early stopping, promotion and result tables ask it, never the name.

- ctr_auc, ctr_logloss: label click, score pctr, ALL rows.
- cvr_auc, cvr_logloss: label conversion, score pcvr, CLICKED rows only (never all rows).
- ctcvr_auc, ctcvr_logloss: label conversion (= click AND purchase), score pctcvr, ALL rows.
- ctr_gauc, ctcvr_gauc: per-user AUC weighted by the user's impressions; users whose rows hold
  a single class are skipped; nan when no user has both classes.
- logloss: ctr_logloss + ctcvr_logloss, the entire-space objective on ALL rows. Early stopping
  watches it (``EARLY_STOP_METRIC``): it rests on every impression, where valid CTCVR AUC rests
  on the 50-140 conversions of a small world's valid day and jumps by +-0.03 between epochs.
An AUC over a single class is nan, never an exception. ``seed_intervals`` gives the mean and the
95% Student-t interval over seeds that the result tables print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# scikit-learn and scipy are imported where used: the config dataclasses import this module
# (EARLY_STOP_METRIC), and Ray Train's controller process unpickles a TrainConfig, ~1.4 s of
# imports it never needs (tests/benchmarks/bench_train_overhead.py).

PROB_EPS = 1e-7  # clip probabilities before log loss
SPLIT_PREFIXES = ("train_", "valid_", "test_")


@dataclass(frozen=True)
class Metric:
    """What one metric is: its direction, its rows and whether it measures quality."""

    name: str
    mode: Literal["max", "min"]  # "max": higher is better
    rows: Literal["all", "clicked", "users"]
    kind: Literal["quality", "count"] = "quality"
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ctr_auc", "max", "all", description="click AUC over all impressions"),
        Metric("cvr_auc", "max", "clicked", description="conversion AUC over clicked rows"),
        Metric("ctcvr_auc", "max", "all", description="click-and-buy AUC over all rows"),
        Metric("ctr_gauc", "max", "users", description="per-user click AUC, weighted"),
        Metric("ctcvr_gauc", "max", "users", description="per-user click-and-buy AUC"),
        Metric("ctr_logloss", "min", "all", description="click log loss"),
        Metric("cvr_logloss", "min", "clicked", description="conversion log loss, clicked rows"),
        Metric("ctcvr_logloss", "min", "all", description="click-and-buy log loss"),
        Metric("logloss", "min", "all", description="ctr_logloss + ctcvr_logloss"),
        Metric("n_rows", "max", "all", "count"),
        Metric("n_clicks", "max", "all", "count"),
        Metric("n_conversions", "max", "all", "count"),
        Metric("n_users", "max", "users", "count"),
        Metric("ctr_gauc_users", "max", "users", "count"),
        Metric("ctcvr_gauc_users", "max", "users", "count"),
    )
}
DEFAULT_METRIC = "ctcvr_auc"  # promotion (test_) and table order
EARLY_STOP_METRIC = "logloss"  # early stopping and the best epoch (valid_): low variance
CONFIDENCE = 0.95  # the result tables' interval over seeds
AUC_METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc")  # the result tables' oracle-gap columns
TABLE_METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctcvr_logloss")


def metric(name: str) -> Metric:
    """The registry entry of ``name``, with or without a split prefix (``valid_ctr_auc``)."""
    base = name
    for prefix in SPLIT_PREFIXES:
        base = base.removeprefix(prefix)
    for suffix in ("_mean", "_std"):
        base = base.removesuffix(suffix)
    if base not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[base]


def is_quality(name: str) -> bool:
    """A known quality metric (an AUC or a loss), not a count or another history column."""
    try:
        return metric(name).kind == "quality"
    except ValueError:
        return False


def is_better(name: str, value: float, than: float | None) -> bool:
    """``value`` improves on ``than`` (None: nothing yet) in the metric's direction (nan: no)."""
    if math.isnan(value):
        return False
    if than is None or math.isnan(than):
        return True
    return value > than if metric(name).mode == "max" else value < than


def sign(name: str) -> float:
    """+1 for metrics to maximize, -1 for metrics to minimize (for max()/sorting)."""
    return 1.0 if metric(name).mode == "max" else -1.0


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; nan when the rows hold fewer than two classes."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0 or np.unique(labels).size < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary log loss (probabilities clipped to [eps, 1 - eps]); nan on no rows."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        return float("nan")
    from sklearn.metrics import log_loss

    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), PROB_EPS, 1.0 - PROB_EPS)
    return float(log_loss(labels, p, labels=[0, 1]))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUC over groups with both classes.

    Returns (gauc, number of groups counted); gauc is nan when no group counts."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if not labels.size == scores.size == groups.size:
        raise ValueError(
            f"length mismatch: {labels.size} labels, {scores.size} scores, {groups.size} groups"
        )
    if groups.size == 0:
        return float("nan"), 0
    from sklearn.metrics import roc_auc_score

    order = np.argsort(groups, kind="stable")
    labels, scores, groups = labels[order], scores[order], groups[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], groups.size]
    # positives per group decide cheaply which groups hold both classes
    positives = np.add.reduceat((labels > 0.5).astype(np.int64), starts)
    total, weight, counted = 0.0, 0, 0
    for start, end, pos in zip(starts, ends, positives, strict=True):
        n = end - start
        if pos == 0 or pos == n:
            continue
        total += n * roc_auc_score(labels[start:end], scores[start:end])
        weight += n
        counted += 1
    return (total / weight if weight else float("nan")), counted


def evaluate(
    labels: Mapping[str, np.ndarray],
    preds: Mapping[str, np.ndarray],
    user_keys: np.ndarray,
) -> dict[str, float]:
    """All offline metrics. ``labels``: click, conversion; ``preds``: pctr, pcvr, pctcvr."""
    click = np.asarray(labels["click"], dtype=np.float64).ravel()
    conv = np.asarray(labels["conversion"], dtype=np.float64).ravel()
    pctr, pcvr, pctcvr = (np.asarray(preds[k]).ravel() for k in ("pctr", "pcvr", "pctcvr"))
    clicked = click > 0.5
    ctr_gauc, ctr_users = gauc(click, pctr, user_keys)
    ctcvr_gauc, ctcvr_users = gauc(conv, pctcvr, user_keys)
    ctr_loss, ctcvr_loss = logloss(click, pctr), logloss(conv, pctcvr)
    return {
        "ctr_auc": auc(click, pctr),
        "cvr_auc": auc(conv[clicked], pcvr[clicked]),
        "ctcvr_auc": auc(conv, pctcvr),
        "ctr_gauc": ctr_gauc,
        "ctcvr_gauc": ctcvr_gauc,
        "ctr_logloss": ctr_loss,
        "cvr_logloss": logloss(conv[clicked], pcvr[clicked]),
        "ctcvr_logloss": ctcvr_loss,
        "logloss": ctr_loss + ctcvr_loss,
        "n_rows": float(click.size),
        "n_clicks": float(clicked.sum()),
        "n_conversions": float((conv > 0.5).sum()),
        "n_users": float(np.unique(np.asarray(user_keys)).size),
        "ctr_gauc_users": float(ctr_users),
        "ctcvr_gauc_users": float(ctcvr_users),
    }


def summarize_seeds(results: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per metric (mean, sample std with ddof=1; std 0.0 for one seed) over the runs; nan
    values are left out, a metric that is nan in every run gives (nan, nan)."""
    names = list(dict.fromkeys(k for r in results for k in r))
    summary: dict[str, tuple[float, float]] = {}
    for name in names:
        vals = np.array([float(r[name]) for r in results if name in r], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        if vals.size == 0:
            summary[name] = (math.nan, math.nan)
        else:
            std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            summary[name] = (float(vals.mean()), std)
    return summary


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the two-sided Student-t interval) of the finite ``values``; the
    half-width is nan for fewer than two values (no interval), the mean nan for none."""
    vals = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if vals.size == 0:
        return math.nan, math.nan
    if vals.size < 2:
        return float(vals[0]), math.nan
    from scipy import stats

    scale = vals.std(ddof=1) / math.sqrt(vals.size)
    return float(vals.mean()), float(stats.t.ppf(0.5 + confidence / 2, vals.size - 1) * scale)


def seed_intervals(results: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per metric (mean, 95% half-width; nan with one seed) over the runs (``t_interval``)."""
    names = list(dict.fromkeys(k for r in results for k in r))
    return {n: t_interval([float(r[n]) for r in results if n in r]) for n in names}
