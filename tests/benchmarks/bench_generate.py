"""Benchmark: generate a synthetic Taobao world of ~10M behavior rows (not run by CI).

    python tests/benchmarks/bench_generate.py [--behaviors 10000000] [--keep DIR] [--loop-users N]

A small pilot world measures behaviors per user; the main run is sized from it. Then one day of
the world in the loop (``simulate_day`` for ``--loop-users`` users, 0 = skip) under the logging
policy and under a uniform slate policy that reads every candidate's truth and records slates.
Prints a table (rows, seconds, rows/s, peak RSS) and writes bench_generate.json next to this
script.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from etl.cli import parse  # noqa: E402
from etl.world import (  # noqa: E402
    Decision,
    LoopConfig,
    SlateRequest,
    TaobaoWorld,
    WorldConfig,
    write_world,
)

OUT_JSON = Path(__file__).with_suffix(".json")


@dataclass
class BenchGenerateConfig:
    behaviors: int = field(default=10_000_000, metadata={"help": "target behavior rows"})
    seed: int = 0
    keep: Path | None = field(default=None, metadata={"help": "write the world here and keep it"})
    loop_users: int = field(default=20_000, metadata={"help": "users of the one-day loop run"})


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 2**20


def run(behaviors: int, seed: int, keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        pilot = write_world(WorldConfig(users=1000, seed=seed), tmp / "pilot")
        per_user = pilot["counts"]["behaviors"] / 1000
        users = max(1000, round(1.01 * behaviors / per_user))
        out = keep or tmp / "world"
        cpu0, start = _cpu_seconds(), time.perf_counter()
        summary = write_world(WorldConfig(users=users, seed=seed), out)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu0
        c = summary["counts"]
        rows = c["behaviors"] + c["impressions"]
        return {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "users": users,
            "behavior_rows": c["behaviors"],
            "impression_rows": c["impressions"],
            "total_rows": rows,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),  # wall time depends on the load of a shared machine
            "rows_per_s": round(rows / seconds),
            "behaviors_per_s": round(c["behaviors"] / seconds),
            "peak_rss_mib": round(_peak_rss_mib(), 1),
            "output_mib": round(_dir_mib(out), 1),
            "ctr": round(summary["rates"]["ctr"], 4),
            "conversions": c["conversions"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _uniform_with_truth(request: SlateRequest) -> Decision:
    k, truth = request.k, request.truth
    assert truth.p_click.shape == (request.size, k)
    probs = np.full((request.size, k), 1.0 / k)
    return Decision(request.rng.integers(0, k, request.size), probs[:, 0], probs)


def run_day(users: int, seed: int) -> dict:
    """Seconds of one simulated day (day 1: new ads have entered) per policy."""
    out: dict = {"loop_users": users}
    for name, policy, record in (
        ("logging", None, False),
        ("uniform_truth_slates", _uniform_with_truth, True),
    ):
        world = TaobaoWorld(WorldConfig(users=users, seed=seed), LoopConfig(record_slates=record))
        world.advance_to(1)
        cpu0, start = _cpu_seconds(), time.perf_counter()
        day = world.simulate_day(1, policy)
        seconds = time.perf_counter() - start
        n_imp = int(day.logs.impressions["user"].size)
        out[f"day_{name}_seconds"] = round(seconds, 2)
        out[f"day_{name}_cpu_seconds"] = round(_cpu_seconds() - cpu0, 2)
        out[f"day_{name}_impressions"] = n_imp
        out[f"day_{name}_impressions_per_s"] = round(n_imp / seconds)
    return out


def main() -> int:
    args = parse(BenchGenerateConfig, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.behaviors, args.seed, args.keep)
    if args.loop_users > 0:
        result |= run_day(args.loop_users, args.seed)
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    OUT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
