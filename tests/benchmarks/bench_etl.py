"""Benchmark: the Spark ETL (local[2]) per stage, against a DuckDB single-node reference.

    python tests/benchmarks/bench_etl.py [--behaviors 10000000 | --users N] [--world DIR]

Not run by CI. Steps:

1. World: ``--world DIR`` is reused when it holds the taobao_ad CSVs, else generated there (and
   kept); without ``--world`` a world sized for ``--behaviors`` (~127 behaviors per user) or
   ``--users`` is generated in a temporary folder and removed at the end.
2. Spark: ``run_etl`` as the jobs run it, in a child process (a fresh JVM, its own peak RSS).
   Each stage is the wall time of the pipeline's own calls, timed by wrapping them in place:
   ``load_source`` (parse + reconciliation counts of the 4 files, cached), each ``write_table``
   (Spark is lazy: a write's time includes computing its input, e.g. the ``events`` write runs
   ``sessionize``; the ``label_and_history`` pass runs in the aggregation of its persisted
   output that gives the label stats and row count, timed with the ``impressions`` write) and
   ``write_samples`` (repartitioned write). ``other`` is the rest of
   ``run_etl`` (Delta log reads after each write, the split/known-column collects, label stats).
3. DuckDB (in a second child process, ``PRAGMA threads``): the same CSVs read with explicit
   column types (exact duplicate lines dropped, as the Spark parser quarantines them), the same
   30-minute sessionization (lag over the user's ordered behaviors, cumulative sum of new-session
   flags, session id from the start time, position in session) and the same histories (the last
   L behaviors strictly before each impression, right-padded to L: an ASOF join counts the
   behaviors before it, then a slice of the user's behavior lists), each written to Parquet as
   Spark writes Delta. It does not do session attachment, labels, vocabularies or encoding, so
   the Spark/DuckDB ratios compare more work with less; the JSON's ``checks_match`` says whether
   both found the same rows, sessions and total history length.

Memory is sampled every 0.5 s in a thread: RSS of the whole process tree per stage (Spark: Python
driver + JVM + Python workers; the "PSS wk" column counts the workers' pages shared with the
pyspark daemon once; JVM forks that have not exec'd a shell command yet are left out, their RSS
is the JVM's), the processes at the peak, and the Python process's own ``ru_maxrss``.
CPU seconds of the tree, Spark jobs per stage (job groups) and the 1-minute load average are
recorded alongside: the machine is shared, so wall times depend on its load (which includes
this benchmark's own 2 threads).

Prints a table (engine, stage, rows, seconds, rows/s per core, peak RSS ...) and the
Spark/DuckDB ratios, and writes the same as bench_etl.json next to this script.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_etl_engines import run_duckdb, run_spark  # noqa: E402 (sibling parts)
from bench_etl_sampling import LoadSampler  # noqa: E402

from etl.cli import parse, to_argv  # noqa: E402

OUT_JSON = Path(__file__).with_suffix(".json")
CSV_FILES = ("raw_sample.csv", "behavior_log.csv", "ad_feature.csv", "user_profile.csv")
BEHAVIORS_PER_USER = 126.6  # measured by bench_generate (10,061,070 behaviors / 79,496 users)
ENGINES = ("spark", "duckdb")
HIDDEN = {"help": None}  # set by the benchmark for its child processes
CHILD_OPTIONS = ("child", "world", "lake", "result", "cores", "max_len")
CHILD_OPTIONS += ("driver_memory", "duckdb_memory")

log = logging.getLogger("bench_etl")


@dataclass
class BenchEtlConfig:
    behaviors: int = field(default=10_000_000, metadata={"help": "target behavior rows"})
    users: int | None = field(
        default=None, metadata={"help": "world users (overrides --behaviors)"}
    )
    world: Path | None = field(default=None, metadata={"help": "world folder (reused if present)"})
    seed: int = 0
    cores: int = field(default=2, metadata={"help": "Spark local[N] and DuckDB threads"})
    max_len: int = field(default=50, metadata={"help": "history length L"})
    driver_memory: str = field(default="4g", metadata={"help": "Spark driver (= executor) heap"})
    duckdb_memory: str = field(
        default="4GB", metadata={"help": "DuckDB memory_limit (spills beyond)"}
    )
    engines: str = field(default="duckdb,spark", metadata={"help": "run in this order"})
    timeout: float | None = field(
        default=None, metadata={"help": "seconds per engine; keep completed stages"}
    )
    json: Path = OUT_JSON
    child: str | None = field(default=None, metadata={"help": None, "choices": ENGINES})
    lake: Path | None = field(default=None, metadata=HIDDEN)
    result: Path | None = field(default=None, metadata=HIDDEN)


# --- orchestration ------------------------------------------------------------------------------
def ensure_world(args: BenchEtlConfig, tmp: Path) -> tuple[Path, dict, float | None]:
    """The world folder, its world.json summary, and the seconds spent generating it (None when
    reused)."""
    world = args.world or tmp / "world"
    if all((world / f).is_file() for f in CSV_FILES):
        log.info("reusing world %s", world)
        meta = (
            json.loads((world / "world.json").read_text())
            if (world / "world.json").is_file()
            else {}
        )
        return world, meta, None
    from etl.world import WorldConfig, write_world

    users = args.users or max(100, round(args.behaviors / BEHAVIORS_PER_USER))
    log.info("generating a world of %d users in %s", users, world)
    t0 = time.perf_counter()
    meta = write_world(WorldConfig(users=users, seed=args.seed), world)
    return world, meta, time.perf_counter() - t0


def run_child(
    engine: str, args: BenchEtlConfig, world: Path, work: Path, timeout: float | None
) -> dict:
    """Run one engine in a fresh process (its own session, so a timeout can end its JVM and
    workers too); on failure or timeout return the stages it had completed."""
    result_file = work / f"{engine}.json"
    lake = work / f"{engine}_out"
    child = replace(args, child=engine, world=world, lake=lake, result=result_file)
    cmd = [sys.executable, str(Path(__file__).resolve()), *to_argv(child, CHILD_OPTIONS)]
    log.info("running %s", engine)
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    error = None
    try:
        if proc.wait(timeout=timeout) != 0:
            error = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
    finally:  # also on SIGTERM/Ctrl-C of this process
        if proc.poll() is None:
            _kill_session(proc)
        shutil.rmtree(lake, ignore_errors=True)
    result = json.loads(result_file.read_text()) if result_file.is_file() else {"stages": []}
    result.setdefault("engine", engine)
    result["complete"] = error is None
    if error:
        log.warning(
            "%s did not finish (%s): keeping the %d stages it completed",
            engine,
            error,
            len(result["stages"]),
        )
        result["error"] = error
    return result


def _kill_session(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def ratios(spark: dict, duck: dict) -> dict:
    def stage(res: dict, name: str) -> dict | None:
        return next((s for s in res["stages"] if s["stage"] == name), None)

    out = {}
    for what, s_name, d_name in (
        ("sessionization", "sessionize + write events", "sessionize + write"),
        ("history", "impressions pass + write", "history + write"),
    ):
        s, d = stage(spark, s_name), stage(duck, d_name)
        if s is None or d is None:
            continue
        out[what] = {
            "spark_stage": s_name,
            "duckdb_stage": d_name,
            "wall_ratio": round(s["seconds"] / max(d["seconds"], 1e-9), 2),
            "cpu_ratio": round(s["cpu_s"] / max(d["cpu_s"], 1e-9), 2),
        }
    return out


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict]) -> None:
    head = (
        f"{'engine':<7} {'stage':<36} {'rows':>11} {'seconds':>8} {'rows/s/core':>11} "
        f"{'peak RSS MiB':>12} {'(PSS wk)':>8} {'wk':>2} {'cpu s':>7} {'(py wk)':>7} "
        f"{'load1':>5} {'jobs':>4}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for s in res["stages"]:
            print(
                f"{res['engine']:<7} {s['stage']:<36} {fmt(s['rows'], ',d'):>11} "
                f"{s['seconds']:>8.1f} {fmt(s.get('rows_per_s_per_core'), ',.0f'):>11} "
                f"{fmt(s['peak_rss_mib'], ',.0f'):>12} "
                f"{fmt(s['peak_rss_pss_workers_mib'], ',.0f'):>8} "
                f"{fmt(s['max_python_workers'], 'd'):>2} {fmt(s['cpu_s'], '.1f'):>7} "
                f"{fmt(s.get('cpu_python_workers_s'), '.1f'):>7} "
                f"{fmt(s['load1_mean'], '.2f'):>5} {fmt(s.get('spark_jobs'), 'd'):>4}"
            )
        if not res["complete"]:
            print(f"{res['engine']:<7} ** incomplete: {res['error']} **")


def add_rates(result: dict, cores: int) -> None:
    for s in result["stages"]:
        ok = s["rows"] is not None and s["seconds"] > 0
        s["rows_per_s_per_core"] = round(s["rows"] / s["seconds"] / cores) if ok else None


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse(BenchEtlConfig, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    if args.child:
        result = run_spark(args) if args.child == "spark" else run_duckdb(args)
        args.result.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    signal.signal(signal.SIGTERM, _raise_exit)  # e.g. `timeout`: end the children, clean up
    started, load_start, loads = time.perf_counter(), os.getloadavg(), LoadSampler()
    tmp = Path(tempfile.mkdtemp(prefix="bench_etl_"))
    try:
        world, meta, gen_s = ensure_world(args, tmp)
        counts = meta.get("counts", {})
        loads.start()
        results = [
            run_child(e.strip(), args, world, tmp, args.timeout) for e in args.engines.split(",")
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()
    for res in results:
        add_rates(res, args.cores)
    by_engine = {r["engine"]: r for r in results}
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "cores_used": args.cores,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in load_end],
        "load1_during_runs": loads.summary(),
        "world": {
            "folder": str(args.world) if args.world else "(temporary)",
            "users": meta.get("config", {}).get("users", args.users),
            "behaviors": counts.get("behaviors"),
            "impressions": counts.get("impressions"),
            "generate_seconds": round(gen_s, 1) if gen_s is not None else None,
        },
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if {"spark", "duckdb"} <= by_engine.keys():
        summary["spark_over_duckdb"] = ratios(by_engine["spark"], by_engine["duckdb"])
        checks = {e: by_engine[e].get("check") for e in ("spark", "duckdb")}
        if all(checks.values()):
            summary["checks_match"] = checks["spark"] == checks["duckdb"]
    print_table(results)
    for what, r in summary.get("spark_over_duckdb", {}).items():
        print(
            f"Spark/DuckDB {what:<15} wall x{r['wall_ratio']:<7} cpu x{r['cpu_ratio']:<7} "
            f"({r['spark_stage']} vs {r['duckdb_stage']})"
        )
    for res in results:
        print(f"{res['engine']} memory: {res.get('memory')}  check: {res.get('check')}")
    if "checks_match" in summary:
        print(f"Spark and DuckDB agree on rows/sessions/sum(hist_len): {summary['checks_match']}")
    print(
        f"load average start {summary['loadavg_start']} end {summary['loadavg_end']}, "
        f"1-min during runs {summary['load1_during_runs']} ({os.cpu_count()} CPUs)"
    )
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
