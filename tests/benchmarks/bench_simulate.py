"""The closed loop's time per stage, with the arms' trainings one after the other and overlapped.

    python tests/benchmarks/bench_simulate.py --rounds 3 --seeds 1 [--json out.json]

Runs ``jobs/simulate.py`` (default arms, users and epochs unless given) once per value of
``--concurrent`` (default ``1,2``: ``--concurrent-trainings``), each in its own data dir, one
after the other on this machine. Prints, per run, the wall seconds of the whole command
(Spark, Ray and MLflow start included) and the seconds of each stage the run reports (summed
over arms: stages that overlap each count, so with overlap their total exceeds the wall), the
load average before and after, and whether every arm's per-round numbers are the same in every
run (they must be: each training is seeded and its own Ray Train run). ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("world", "etl", "training", "evaluation", "policy", "registration")


def run_simulation(data_dir: Path, concurrent: int, extra: list[str]) -> dict:
    command = [
        sys.executable, str(ROOT / "jobs" / "simulate.py"), "--data-dir", str(data_dir),
        "--concurrent-trainings", str(concurrent), "--tracking-uri",
        f"sqlite:///{data_dir / 'mlflow.db'}", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"simulate.py failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"concurrent_trainings": concurrent, "wall_s": round(wall, 1), "report": report}


def arm_rounds(report: dict) -> dict:
    """Every arm's per-round numbers (what must not depend on the overlap)."""
    return {arm: entry["rounds"] for arm, entry in report["arms"].items()}


def print_table(runs: list[dict], same: bool, load: dict) -> None:
    print(f"{'concurrent':>10} {'wall s':>8} " + " ".join(f"{s:>11}" for s in STAGES))
    for run in runs:
        stages = run["report"]["stages"]
        cells = " ".join(f"{stages.get(s, 0.0):>11.1f}" for s in STAGES)
        print(f"{run['concurrent_trainings']:>10} {run['wall_s']:>8} {cells}")
    print(f"same per-round results in every run: {same}")
    print(f"load average (1, 5, 15 min) before {load['before']} after {load['after']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="jobs/simulate.py --rounds")
    parser.add_argument("--seeds", type=int, default=1, help="jobs/simulate.py --seeds")
    parser.add_argument("--concurrent", default="1,2", help="--concurrent-trainings values")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args, extra = parser.parse_known_args()
    try:
        values = [int(v) for v in args.concurrent.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--concurrent: comma-separated integers, got {args.concurrent!r}")
    extra = ["--rounds", str(args.rounds), "--seeds", str(args.seeds), *extra]
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        runs = [run_simulation(Path(tmp) / f"c{v}", v, extra) for v in values]
    load = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    same = all(arm_rounds(r["report"]) == arm_rounds(runs[0]["report"]) for r in runs)
    print_table(runs, same, load)
    if args.json:
        result = {
            "command": " ".join(["python", "tests/benchmarks/bench_simulate.py", *sys.argv[1:]]),
            "runs": [
                {k: v for k, v in r.items() if k != "report"} | {"stages": r["report"]["stages"]}
                for r in runs
            ],
            "same_results": same,
            "load_average": load,
            "arms": arm_rounds(runs[0]["report"]),
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
