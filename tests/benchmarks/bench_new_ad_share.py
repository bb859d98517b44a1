"""Does the long tail make exploration pay? The closed loop once per new-ad share, side by side.

    python tests/benchmarks/bench_new_ad_share.py --shares 0,0.05 --rounds 5 --seeds 3 \\
        --json tests/benchmarks/bench_new_ad_share.json [any other jobs/simulate.py option]

Runs ``jobs/simulate.py`` once per value of ``--shares`` (its ``--new-ad-share``: the share of
ads that enter the catalog each day with no history), each in its own data dir, one after the
other, every other option the same. Prints the final round per share and arm (cumulative
purchases, further views, ads with >= 5 impressions and CTR AUC: mean and 95% interval over
seeds; cumulative purchases minus the first arm's) and, with an off-policy arm (``softmax``),
the bias and RMSE of each estimator over rounds and seeds. ``--json`` writes it with the load
average before and after and every run's wall and stage seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_simulate import run_simulation  # sibling script (its folder is on sys.path)

from train.ope import ESTIMATORS

COLUMNS = ("cum_purchases", "cum_further_views", "ads_with_data", "ctr_auc")


def final_rows(report: dict) -> dict[str, dict]:
    """arm -> its last round (means over seeds, with ``<measure>_ci95``)."""
    return {arm: entry["rounds"][-1] for arm, entry in report["arms"].items()}


def cell(row: dict, key: str) -> str:
    value, ci = row.get(key), row.get(f"{key}_ci95")
    if value is None:
        return "-"
    digits = 4 if key.endswith("auc") else 1
    return f"{value:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def table(finals: dict[str, dict[str, dict]]) -> str:
    head = "| new-ad share | arm | " + " | ".join(COLUMNS) + " | purchases vs first arm |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for share, arms in finals.items():
        first = next(iter(arms.values()))["cum_purchases"]
        for arm, row in arms.items():
            cells = " | ".join(cell(row, k) for k in COLUMNS)
            lines.append(f"| {share} | {arm} | {cells} | {row['cum_purchases'] - first:+.1f} |")
    return "\n".join(lines)


def ope_accuracy(report: dict) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> estimator -> bias and RMSE of its off-policy estimates of the arm's purchases per
    impression against the arm's own day, over every round and seed (arms with estimates)."""
    out = {}
    for arm, entry in report["arms"].items():
        rounds = [r for r in entry["rounds"] if r.get("ope_dr_error") is not None]
        if rounds:
            out[arm] = {
                k: {
                    "bias": sum(r[f"ope_{k}_error"] for r in rounds) / len(rounds),
                    "rmse": (sum(r[f"ope_{k}_sq_error"] for r in rounds) / len(rounds)) ** 0.5,
                    "rounds": len(rounds),
                }
                for k in ESTIMATORS
            }
    return out


def ope_table(accuracy: dict[str, dict]) -> str:
    lines = ["| new-ad share | arm | " + " | ".join(f"{k} bias / RMSE" for k in ESTIMATORS) + " |"]
    lines.append("|" + " --- |" * (len(ESTIMATORS) + 2))
    for share, arms in accuracy.items():
        for arm, found in arms.items():
            cells = " | ".join(
                f"{found[k]['bias']:+.4f} / {found[k]['rmse']:.4f}" for k in ESTIMATORS
            )
            lines.append(f"| {share} | {arm} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shares", default="0,0.05", help="--new-ad-share values")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args, extra = parser.parse_known_args()
    try:
        shares = [float(v) for v in args.shares.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--shares: comma-separated numbers, got {args.shares!r}")
    if not shares or not all(0.0 <= s <= 1.0 for s in shares):
        parser.error(f"--shares: numbers in [0, 1], got {args.shares!r}")
    if "--new-ad-share" in extra:
        parser.error("--new-ad-share is what --shares varies; give the values there")
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-new-ad-share-") as tmp:
        for share in shares:
            run = run_simulation(
                Path(tmp) / f"share{share}", 1, [*extra, "--new-ad-share", str(share)]
            )
            runs[str(share)] = run
            print(f"new-ad share {share}: {run['wall_s']} s", flush=True)
    load = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    finals = {share: final_rows(run["report"]) for share, run in runs.items()}
    print(table(finals))
    accuracy = {share: ope_accuracy(run["report"]) for share, run in runs.items()}
    if any(accuracy.values()):
        print("off-policy estimates of purchases per impression, against each arm's own day")
        print(ope_table(accuracy))
    print(f"load average (1, 5, 15 min) before {load['before']} after {load['after']}")
    if args.json:
        result = {
            "command": " ".join(
                ["python", "tests/benchmarks/bench_new_ad_share.py", *sys.argv[1:]]
            ),
            "load_average": load,
            "runs": {
                share: {"wall_s": run["wall_s"], "stages": run["report"]["stages"]}
                for share, run in runs.items()
            },
            "final_round": finals,
            "ope_accuracy": accuracy,
            "arms": {share: run["report"]["arms"] for share, run in runs.items()},
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
