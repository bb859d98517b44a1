"""Offline metrics: which rows each metric scores, GAUC by hand, single-class -> nan; the
registry of names and directions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.metrics import (
    DEFAULT_METRIC,
    EARLY_STOP_METRIC,
    METRICS,
    auc,
    evaluate,
    gauc,
    is_better,
    is_quality,
    logloss,
    metric,
    seed_intervals,
    sign,
    summarize_seeds,
    t_interval,
)


def _case() -> tuple[dict, dict, np.ndarray]:
    """Clicked rows: pcvr ranks conversions perfectly. Unclicked rows (conversion 0 by
    definition) get the HIGHEST pcvr, so scoring CVR on all rows would look terrible."""
    click = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    conv = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
    pcvr = np.array([0.6, 0.2, 0.7, 0.3, 0.9, 0.95, 0.8, 0.85, 0.99, 0.9])
    pctr = np.array([0.9, 0.6, 0.8, 0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55])
    users = np.array([1, 1, 2, 2, 1, 1, 2, 2, 3, 3])
    labels = {"click": click, "conversion": conv}
    preds = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}
    return labels, preds, users


def test_cvr_auc_uses_clicked_rows_only() -> None:
    labels, preds, users = _case()
    m = evaluate(labels, preds, users)
    assert m["cvr_auc"] == 1.0
    assert auc(labels["conversion"], preds["pcvr"]) < 0.3  # what all rows would have said
    clicked = labels["click"] == 1
    assert m["cvr_logloss"] == pytest.approx(
        logloss(labels["conversion"][clicked], preds["pcvr"][clicked])
    )
    assert (m["n_rows"], m["n_clicks"], m["n_conversions"], m["n_users"]) == (10, 4, 2, 3)
    assert m["ctr_auc"] == 1.0  # every clicked pctr above every unclicked one


def test_ctcvr_metrics_use_all_rows_and_conversion_label() -> None:
    labels, preds, users = _case()
    m = evaluate(labels, preds, users)
    assert m["ctcvr_auc"] == pytest.approx(auc(labels["conversion"], preds["pctcvr"]))
    assert m["ctcvr_logloss"] == pytest.approx(logloss(labels["conversion"], preds["pctcvr"]))


def test_gauc_by_hand() -> None:
    # user 7: perfect (AUC 1), 3 rows; user 8: AUC 1/4, 4 rows; user 9: one class, skipped
    labels = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7])
    users = np.array([7, 7, 7, 8, 8, 8, 8, 9, 9])
    order = np.random.default_rng(0).permutation(labels.size)  # grouping must not need sorting
    value, counted = gauc(labels[order], scores[order], users[order])
    assert value == pytest.approx((3 * 1.0 + 4 * 0.25) / 7)
    assert counted == 2


def test_single_class_gives_nan_not_crash() -> None:
    n = 6
    labels = {"click": np.zeros(n), "conversion": np.zeros(n)}
    preds = {k: np.full(n, 0.3) for k in ("pctr", "pcvr", "pctcvr")}
    m = evaluate(labels, preds, np.arange(n) % 2)
    for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctcvr_gauc", "cvr_logloss"):
        assert math.isnan(m[key]), key
    assert m["ctr_logloss"] == pytest.approx(-math.log(0.7))
    assert all(isinstance(v, float) for v in m.values())


def test_summarize_seeds() -> None:
    runs = [{"auc": 0.7, "gauc": float("nan")}, {"auc": 0.9, "gauc": float("nan")}, {"auc": 0.8}]
    s = summarize_seeds(runs)
    assert s["auc"][0] == pytest.approx(0.8) and s["auc"][1] == pytest.approx(0.1)
    assert all(math.isnan(v) for v in s["gauc"])
    assert summarize_seeds([{"auc": 0.5}]) == {"auc": (0.5, 0.0)}


def test_t_interval_known_case() -> None:
    """[1, 2, 3]: mean 2, s = 1, t(0.975, df 2) = 4.302653 (tables), half-width 4.302653/sqrt(3);
    [10, 12]: mean 11, s = sqrt(2), t(0.975, df 1) = 12.706205, half-width 12.706205."""
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert t_interval([10.0, 12.0]) == (11.0, pytest.approx(12.706205, rel=1e-6))
    assert t_interval([3.0, float("nan"), 3.0]) == (3.0, 0.0)  # nan left out, no spread
    one = t_interval([0.7])
    assert one[0] == 0.7 and math.isnan(one[1])  # one seed: no interval
    assert all(math.isnan(v) for v in t_interval([]))
    by_metric = seed_intervals([{"auc": 1.0}, {"auc": 2.0}, {"auc": 3.0, "loss": 0.5}])
    assert by_metric["auc"] == (2.0, half) and by_metric["loss"][0] == 0.5


def test_one_seed_prints_no_interval() -> None:
    from train.report import format_cell

    assert format_cell((0.61234, float("nan"))) == format_cell(0.61234) == f"{0.6123:>18.4f}"
    assert "±" not in format_cell((0.61234, float("nan")))
    assert format_cell((0.61234, 0.0123)) == "     0.6123 ±0.0123"


def test_early_stopping_watches_the_summed_log_loss() -> None:
    labels = {"click": np.array([0, 1, 1, 0]), "conversion": np.array([0, 1, 0, 0])}
    preds = {k: np.array([0.1, 0.8, 0.6, 0.3]) for k in ("pctr", "pcvr", "pctcvr")}
    m = evaluate(labels, preds, np.array([1, 1, 2, 2]))
    assert m["logloss"] == pytest.approx(m["ctr_logloss"] + m["ctcvr_logloss"])
    assert EARLY_STOP_METRIC == "logloss" and metric(EARLY_STOP_METRIC).mode == "min"


# --- the metric registry ------------------------------------------------------------------------
def test_registry_knows_every_metric_evaluate_returns() -> None:
    labels = {"click": np.array([0, 1, 1, 0]), "conversion": np.array([0, 1, 0, 0])}
    preds = {k: np.array([0.1, 0.8, 0.6, 0.3]) for k in ("pctr", "pcvr", "pctcvr")}
    names = set(evaluate(labels, preds, np.array([1, 1, 2, 2])))
    assert names == set(METRICS)
    counts = {n for n in names if n.startswith("n_") or n.endswith("_users")}
    assert {n for n in names if is_quality(n)} == names - counts
    assert not is_quality("ctr_gauc_users") and not is_quality("train_loss")


def test_registry_directions_and_prefixes() -> None:
    assert metric("valid_ctcvr_auc").mode == "max" and metric("test_ctr_gauc_mean").mode == "max"
    assert metric("ctcvr_logloss").mode == "min" and metric("valid_cvr_logloss").mode == "min"
    assert metric("cvr_auc").rows == "clicked"
    assert is_better("ctr_auc", 0.7, 0.6) and not is_better("ctr_auc", 0.6, 0.7)
    assert is_better("ctcvr_logloss", 0.1, 0.2) and not is_better("ctcvr_logloss", 0.3, 0.2)
    assert is_better("ctr_auc", 0.5, None) and not is_better("ctr_auc", float("nan"), None)
    assert sign("ctr_logloss") == -1.0 and sign(DEFAULT_METRIC) == 1.0
    with pytest.raises(ValueError, match="unknown metric 'ctr_acu'"):
        metric("ctr_acu")
