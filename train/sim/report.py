"""The simulation's report: per arm and round, the mean and 95% interval over seeds of every
measure, cumulative purchases (the answer), regret against the oracle arm, the final-round
table, the plots and the JSON of jobs/simulate.py's last line."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from train.metrics import t_interval

CUMULATIVE = ("purchases", "impressions", "further_views", "clicks")
TABLE = (
    ("cum_purchases", "{:.1f}"),
    ("purchases_per_user_day", "{:.4f}"),
    ("purchases_per_impression", "{:.4f}"),
    ("impressions", "{:.0f}"),
    ("further_views", "{:.0f}"),
    ("ads_with_data", "{:.0f}"),
    ("ctr_auc", "{:.4f}"),
    ("ctcvr_auc", "{:.4f}"),
    ("ctcvr_oracle_gap", "{:.4f}"),
    ("regret", "{:.1f}"),
    ("ope_dr_error", "{:+.4f}"),  # DR estimate from the OPE arm's logs minus the arm's own day
)


class Rounds:
    """Measures by arm, seed and round; cumulative sums and the regret derived on output."""

    def __init__(self, arms: list[str]) -> None:
        self.arms = arms
        self.data: dict[str, dict[int, dict[int, dict[str, float]]]] = {
            a: defaultdict(dict) for a in arms
        }

    def add(self, arm: str, seed: int, round_: int, metrics: dict[str, float]) -> None:
        self.data[arm][seed][round_] = dict(metrics)

    def per_seed(self, arm: str) -> dict[int, list[dict[str, float]]]:
        """seed -> rounds in order, with cum_* sums (round 0 counts once, as the start)."""
        out = {}
        for seed, by_round in self.data[arm].items():
            rows, totals = [], dict.fromkeys(CUMULATIVE, 0.0)
            for r in sorted(by_round):
                row = dict(by_round[r])
                for k in CUMULATIVE:
                    totals[k] += row.get(k, 0.0) if r > 0 else 0.0
                    row[f"cum_{k}"] = totals[k]
                rows.append(row)
            out[seed] = rows
        oracle = next((a for a in self.arms if a.split(":")[0] == "oracle"), None)
        if oracle is not None and oracle != arm:
            best = self.per_seed(oracle)
            for seed, rows in out.items():
                for row, top in zip(rows, best.get(seed, []), strict=False):
                    row["regret"] = top["cum_purchases"] - row["cum_purchases"]
        return out

    def summary(self, arm: str) -> list[dict[str, Any]]:
        """One entry per round: {"round", metric: mean, metric + "_ci95": half-width}."""
        seeds = list(self.per_seed(arm).values())
        n_rounds = min((len(rows) for rows in seeds), default=0)
        out = []
        for r in range(n_rounds):
            rows = [rows[r] for rows in seeds]
            entry: dict[str, Any] = {"round": r}
            for key in dict.fromkeys(k for row in rows for k in row):
                mean, half = t_interval([row.get(key, math.nan) for row in rows])
                entry[key] = _num(mean)
                entry[f"{key}_ci95"] = _num(half)
            out.append(entry)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"arms": {a: {"rounds": self.summary(a)} for a in self.arms}}

    def log_plots(self, folder: Path) -> list[Path]:
        """Cumulative purchases, data gained and model AUC against rounds, 95% bands over
        seeds; logged to the active MLflow run under plots/."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow

        panels = (
            ("cum_purchases", "cumulative purchases"),
            ("cum_impressions", "cumulative impressions (data gained)"),
            ("ctr_auc", "CTR AUC (evaluation day)"),
            ("ctcvr_oracle_gap", "CTCVR AUC oracle gap"),
        )
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
        for ax, (key, title) in zip(axes, panels, strict=True):
            for arm in self.arms:
                rows = self.summary(arm)
                xs = [e["round"] for e in rows if e.get(key) is not None]
                mean = np.array([e[key] for e in rows if e.get(key) is not None])
                half = np.array(
                    [e.get(f"{key}_ci95") or 0.0 for e in rows if e.get(key) is not None]
                )
                ax.plot(xs, mean, marker="o", label=arm)
                ax.fill_between(xs, mean - half, mean + half, alpha=0.2)
            ax.set_title(title)
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].legend()
        fig.tight_layout()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "simulation.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(path), "plots")
        return [path]


def _num(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def final_table(report: dict[str, Any]) -> str:
    """The final round of every arm of a report: mean and (seeds > 1) the 95% interval."""
    head = f"{'arm':<16}" + "".join(f"{k:>26}" for k, _ in TABLE)
    lines = [head]
    for arm, entry in report["arms"].items():
        last = entry["rounds"][-1]
        cells = []
        for key, fmt in TABLE:
            mean, half = last.get(key), last.get(f"{key}_ci95")
            text = "-" if mean is None else fmt.format(mean)
            if mean is not None and half is not None:
                text += " ±" + fmt.format(half)
            cells.append(f"{text:>26}")
        lines.append(f"{arm:<16}" + "".join(cells))
    return "\n".join(lines)
