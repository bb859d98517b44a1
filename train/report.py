"""Result tables: models side by side on the metric registry's table metrics, against an oracle.

Used by the quickstart (mean ± std over seeds) and tests/benchmarks/bench_quality.py (one run a
model). Columns are train.metrics.TABLE_METRICS; with an oracle (the generator's true
probabilities), one gap column per AUC_METRICS entry, positive when the model is worse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from train.metrics import AUC_METRICS, TABLE_METRICS, evaluate, metric

NAN = float("nan")
LABELS = ("click", "conversion", "n_future_views")
PREDICTIONS = ("pctr", "pcvr", "pctcvr", "expected_views")
Cell = float | tuple[float, float]  # a value, or (mean, std) over seeds


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
    if isinstance(cell, tuple):
        mean, std = cell
        return f"{mean:>11.4f} ±{std:>6.4f}"
    return f"{mean_of(cell):>18.4f}"


def comparison_table(
    rows: Mapping[str, Mapping[str, Cell]],
    oracle: Mapping[str, float] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """One line per model (``rows``: model -> metric -> value or (mean, std)), then the
    oracle's; ``extra``: more columns, header -> model -> text (e.g. epochs run)."""
    gaps = AUC_METRICS if oracle else ()
    extra = extra or {}
    widths = {name: max(9, len(name) + 1) for name in extra}
    header = f"{'model':<9}" + "".join(f"{m:>18}" for m in TABLE_METRICS)
    header += "".join(f"{'gap ' + m:>16}" for m in gaps)
    header += "".join(f"{name:>{widths[name]}}" for name in extra)
    lines = [header, "-" * len(header)]
    for model, values in rows.items():
        line = f"{model:<9}" + "".join(format_cell(values.get(m)) for m in TABLE_METRICS)
        if oracle:
            line += "".join(f"{gap(m, oracle[m], mean_of(values.get(m))):>16.4f}" for m in gaps)
        line += "".join(f"{column.get(model, '-'):>{widths[n]}}" for n, column in extra.items())
        lines.append(line)
    if oracle:
        lines.append(f"{'oracle':<9}" + "".join(format_cell(oracle.get(m)) for m in TABLE_METRICS))
    return "\n".join(lines)
