"""Benchmark: generate a synthetic Taobao world of ~10M behavior rows (not run by CI).

    python tests/benchmarks/bench_generate.py [--behaviors 10000000] [--keep DIR]

A small pilot world measures behaviors per user; the main run is sized from it. Prints a table
(rows, seconds, rows/s, peak RSS) and writes bench_generate.json next to this script.
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

from etl.cli import parse  # noqa: E402
from etl.world import WorldConfig, write_world  # noqa: E402

OUT_JSON = Path(__file__).with_suffix(".json")


@dataclass
class BenchGenerateConfig:
    behaviors: int = field(default=10_000_000, metadata={"help": "target behavior rows"})
    seed: int = 0
    keep: Path | None = field(default=None, metadata={"help": "write the world here and keep it"})


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


def main() -> int:
    args = parse(BenchGenerateConfig, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.behaviors, args.seed, args.keep)
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    OUT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
