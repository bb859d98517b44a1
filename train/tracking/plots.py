"""Plots of a run, logged as ``plots/*.png``: loss and AUC per epoch, ROC and calibration on test.

``loss.png`` / ``auc.png`` draw every history key containing "loss" / every quality metric
containing "auc" (not the ``*_gauc_users`` counts) against the epoch, on whole-number epoch
ticks; the AUC axis spans 0.5-1 (wider when a value falls outside). The calibration plot's axes
end a little above its largest point.
``roc.png`` and ``calibration.png`` read the test predictions (parquet: click, conversion, pctr,
pcvr, pctcvr; sampled down to ``MAX_PLOT_ROWS``): CTR and CTCVR on all rows, CVR on clicked rows
only. A task whose rows hold a single class is left out of both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from train.metrics import is_quality

MAX_PLOT_ROWS = 500_000
AUC_AXIS = (0.5, 1.0)  # chance to perfect; widened when a value falls outside


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_keys(rows: list[dict[str, float]], match: str) -> list[str]:
    """History keys containing ``match``; for "auc" only quality metrics (train/metrics.py):
    ``*_gauc_users`` counts are not AUCs."""
    keys = {k for r in rows for k in r if k != "epoch" and match in k}
    return sorted(k for k in keys if match != "auc" or is_quality(k))


def plot_curves(
    rows: list[dict[str, float]], match: str, title: str, ylim: tuple[float, float] | None = None
) -> Any | None:
    """One line per metric against the epoch (whole-number ticks); ``ylim`` widens to the data."""
    keys = curve_keys(rows, match)
    if not keys:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    values = []
    for key in keys:
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        values += [v for _, v in pts]
        ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    if ylim is not None and values:
        pad = 0.02
        ax.set_ylim(min(ylim[0], min(values) - pad), max(ylim[1], max(values) + pad))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=match, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def task_frames(pred: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) per task: CTR on all rows, CVR on clicked rows only, CTCVR on all."""
    click = pred["click"].to_numpy() > 0
    conv = pred["conversion"].to_numpy() > 0
    return {
        "ctr": (click.astype(int), pred["pctr"].to_numpy()),
        "cvr": (conv[click].astype(int), pred["pcvr"].to_numpy()[click]),
        "ctcvr": ((click & conv).astype(int), pred["pctcvr"].to_numpy()),
    }


def plot_roc(tasks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for task, (y, p) in tasks.items():
        if len(np.unique(y)) < 2:
            continue  # AUC undefined with one class
        fpr, tpr, _ = roc_curve(y, p)
        rows = "clicked rows" if task == "cvr" else "all rows"
        label = f"{task} AUC={roc_auc_score(y, p):.4f} ({rows}, n={len(y)})"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_calibration(tasks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Any:
    from sklearn.calibration import calibration_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for task, (y, p) in tasks.items():
        if len(np.unique(y)) < 2:
            continue
        frac, mean = calibration_curve(y, np.clip(p, 0, 1), n_bins=10, strategy="quantile")
        ax.plot(
            mean, frac, marker="o", label=f"{task} (mean p={p.mean():.4f}, rate={y.mean():.4f})"
        )
    top = calibration_limit(tasks)
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def calibration_limit(tasks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Both axes' upper end: a little above the largest binned mean or rate (rates of a few
    percent would sit in a corner of a 0-1 square)."""
    from sklearn.calibration import calibration_curve

    top = 0.0
    for y, p in tasks.values():
        if len(np.unique(y)) < 2:
            continue
        frac, mean = calibration_curve(y, np.clip(p, 0, 1), n_bins=10, strategy="quantile")
        top = max(top, float(frac.max()), float(mean.max()))
    return min(1.0, top * 1.1) if top > 0 else 1.0


def log_plots(rows: list[dict[str, float]], predictions: Path | None) -> None:
    plt = _pyplot()
    figures = {
        "plots/loss.png": plot_curves(rows, "loss", "Loss per epoch"),
        "plots/auc.png": plot_curves(rows, "auc", "AUC per epoch", ylim=AUC_AXIS),
    }
    if predictions is not None and predictions.exists():
        pred = pd.read_parquet(predictions)
        if len(pred) > MAX_PLOT_ROWS:
            pred = pred.sample(MAX_PLOT_ROWS, random_state=0)
        tasks = task_frames(pred)
        figures |= {
            "plots/roc.png": plot_roc(tasks),
            "plots/calibration.png": plot_calibration(tasks),
        }
    for path, fig in figures.items():
        if fig is not None:
            mlflow.log_figure(fig, path)
            plt.close(fig)
