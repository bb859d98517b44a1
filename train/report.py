"""Result tables: models side by side on the metric registry's table metrics, against an oracle.

Used by the quickstart and tests/benchmarks/bench_quality.py. A cell is a value or (mean,
half-width of the 95% Student-t interval over seeds, train.metrics.seed_intervals), printed as
"mean ±half"; with one seed the half-width is nan and only the mean is printed. Columns are
train.metrics.TABLE_METRICS; with an oracle (the generator's true probabilities), one gap column
per AUC_METRICS entry (of the mean), positive when the model is worse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from train.metrics import AUC_METRICS, TABLE_METRICS, evaluate, metric

NAN = float("nan")
LABELS = ("click", "conversion", "n_future_views")
PREDICTIONS = ("pctr", "pcvr", "pctcvr", "expected_views")
Cell = float | tuple[float, float]  # a value, or (mean, 95% half-width) over seeds


def evaluate_frame(frame: Any, prefix: str = "") -> dict[str, float]:
    """Every offline metric of a frame (pandas) holding the labels, ``user_key`` and the
    predictions in columns ``<prefix>pctr`` ... (``true_`` for an oracle's)."""
    labels = {c: frame[c].to_numpy() for c in LABELS}
    preds = {c: frame[prefix + c].to_numpy() for c in PREDICTIONS}
    return evaluate(labels, preds, frame["user_key"].to_numpy())


def gap(name: str, oracle: float, value: float) -> float:
    """How far ``value`` falls short of the oracle in the metric's direction."""
    return oracle - value if metric(name).mode == "max" else value - oracle


def mean_of(cell: Cell | None) -> float:
    if cell is None:
        return NAN
    return cell[0] if isinstance(cell, tuple) else cell


def format_cell(cell: Cell | None) -> str:
    """The mean and " ±half" over seeds; the mean alone (right-aligned) without an interval."""
    if isinstance(cell, tuple) and not math.isnan(cell[1]):
        mean, half = cell
        return f"{mean:>11.4f} ±{half:>6.4f}"
    return f"{mean_of(cell):>18.4f}"


def comparison_table(
    rows: Mapping[str, Mapping[str, Cell]],
    oracle: Mapping[str, float] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """One line per model (``rows``: model -> metric -> value or (mean, half-width)), then the
    oracle's; ``extra``: more columns, header -> model -> text (e.g. epochs run)."""
    gaps = AUC_METRICS if oracle else ()
    extra = extra or {}
    widths = {name: max(9, len(name) + 1) for name in extra}
    first = max([9, *(len(model) + 1 for model in rows)])  # ablation names are longer
    header = f"{'model':<{first}}" + "".join(f"{m:>18}" for m in TABLE_METRICS)
    header += "".join(f"{'gap ' + m:>16}" for m in gaps)
    header += "".join(f"{name:>{widths[name]}}" for name in extra)
    lines = [header, "-" * len(header)]
    for model, values in rows.items():
        line = f"{model:<{first}}" + "".join(format_cell(values.get(m)) for m in TABLE_METRICS)
        if oracle:
            line += "".join(f"{gap(m, oracle[m], mean_of(values.get(m))):>16.4f}" for m in gaps)
        line += "".join(f"{column.get(model, '-'):>{widths[n]}}" for n, column in extra.items())
        lines.append(line)
    if oracle:
        cells = "".join(format_cell(oracle.get(m)) for m in TABLE_METRICS)
        lines.append(f"{'oracle':<{first}}" + cells)
    return "\n".join(lines)
