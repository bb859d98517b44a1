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
   ``sessionize`` and the ``impressions`` write runs the ``label_and_history`` pass) and
   ``write_samples`` (count, repartitioned write, manifest). ``other`` is the rest of
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

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OUT_JSON = Path(__file__).with_suffix(".json")
CSV_FILES = ("raw_sample.csv", "behavior_log.csv", "ad_feature.csv", "user_profile.csv")
BEHAVIORS_PER_USER = 126.6  # measured by bench_generate (10,061,070 behaviors / 79,496 users)
SAMPLE_S = 0.5
MIB = 2**20

log = logging.getLogger("bench_etl")


# --- sampling -----------------------------------------------------------------------------------
class TreeSampler:
    """Samples RSS and CPU of this process and all its descendants, attributed to stages."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.root = psutil.Process()
        self.interval = interval
        self.lock = threading.Lock()
        self.current: str | None = None
        self.cpu_seen: dict[tuple[int, float], tuple[str, float]] = {}  # -> (kind, cpu s)
        self.peak: dict[str, int] = {}
        self.peak_procs: dict[str, float] = {}  # RSS MiB of each process at the peak
        self.peak_stage: str | None = None
        self.stages: dict[str, dict] = {}
        self.on_enter = lambda name: None  # e.g. tag the Spark jobs of a stage
        self.on_exit = lambda name: None
        self.progress: Path | None = None  # completed stages are saved here as they end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = {"total": 0, "jvm": 0, "workers": 0, "driver": 0, "other": 0, "workers_pss": 0}
        n_workers = 0
        seen: list[tuple[str, int]] = []  # (process, rss) for the breakdown at the peak
        procs = [self.root]
        with contextlib.suppress(psutil.Error):
            procs += self.root.children(recursive=True)
        for proc in procs:
            try:
                with proc.oneshot():
                    mem = proc.memory_info().rss
                    cpu = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    name = proc.name()
                if proc.pid == self.root.pid:
                    kind = "driver"
                elif "java" in name:
                    kind = "jvm"
                elif "python" in name:  # workers forked from pyspark.daemon share pages: PSS
                    kind = "workers"
                    rss["workers_pss"] += proc.memory_full_info().pss
                    n_workers += 1
                else:  # the spark-submit shell wrapper, or a JVM fork (Hadoop shell commands)
                    kind = "other"  # that has not exec'd yet: its RSS is the JVM's, shared
            except psutil.Error:  # exited between listing and reading
                continue
            rss[kind] += mem
            if kind != "other":
                rss["total"] += mem
            seen.append((f"{kind} {proc.pid} {name}", mem))
            with self.lock:
                self.cpu_seen[key] = (kind, cpu.user + cpu.system)
        # the tree's memory with the workers' shared pages counted once
        rss["total_pss"] = rss["total"] - rss["workers"] + rss["workers_pss"]
        load1 = os.getloadavg()[0]
        with self.lock:
            if rss["total"] > self.peak.get("total", 0):
                self.peak_procs = {k: round(v / MIB, 1) for k, v in seen}
                self.peak_stage = self.current or "(between stages)"
            for k, v in rss.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.peak["n_workers"] = max(self.peak.get("n_workers", 0), n_workers)
            if self.current is not None:
                s = self.stages[self.current]
                s["peak_rss"] = max(s["peak_rss"], rss["total"])
                s["peak_pss"] = max(s["peak_pss"], rss["total_pss"])
                s["n_workers"] = max(s["n_workers"], n_workers)
                s["load1"].append(load1)

    def cpu_total(self, kind: str | None = None) -> float:
        """CPU seconds of every process (of ``kind``) of the tree seen so far (exited ones up to
        their last sample)."""
        self.sample()
        with self.lock:
            return sum(c for k, c in self.cpu_seen.values() if kind in (None, k))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; a stage opened inside another one is part of the outer one."""
        if self.current is not None:
            yield
            return
        with self.lock:
            s = self.stages.setdefault(
                name,
                {
                    "seconds": 0.0,
                    "cpu_s": 0.0,
                    "cpu_workers_s": 0.0,
                    "peak_rss": 0,
                    "peak_pss": 0,
                    "n_workers": 0,
                    "load1": [],
                    "calls": 0,
                },
            )
            self.current = name
        self.on_enter(name)
        cpu0, workers0, t0 = self.cpu_total(), self.cpu_total("workers"), time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            cpu, workers = self.cpu_total() - cpu0, self.cpu_total("workers") - workers0
            with self.lock:
                s["seconds"] += seconds
                s["cpu_s"] += cpu
                s["cpu_workers_s"] += workers
                s["calls"] += 1
                self.current = None
            self.on_exit(name)
            log.info(
                "stage %-28s %7.1f s  cpu %7.1f s (python workers %.1f s)",
                name,
                seconds,
                cpu,
                workers,
            )
            if self.progress is not None:
                partial = [self.result(n, None) for n in self.stages if n != self.current]
                self.progress.write_text(json.dumps({"stages": partial}, indent=2) + "\n")

    def result(self, name: str, rows: int | None) -> dict:
        s = self.stages[name]
        loads = s["load1"] or [os.getloadavg()[0]]
        return {
            "stage": name,
            "rows": rows,
            "seconds": round(s["seconds"], 2),
            "cpu_s": round(s["cpu_s"], 1),
            "cpu_python_workers_s": round(s["cpu_workers_s"], 1),
            "peak_rss_mib": round(s["peak_rss"] / MIB, 1),
            "peak_rss_pss_workers_mib": round(s["peak_pss"] / MIB, 1),
            "max_python_workers": s["n_workers"],
            "load1_mean": round(sum(loads) / len(loads), 2),
        }

    def overall(
        self, name: str, rows: int | None, seconds: float, cpu: float, cpu_workers: float
    ) -> dict:
        """A row for a span covering several stages (peaks over the whole run)."""
        loads = [x for s in self.stages.values() for x in s["load1"]]
        return {
            "stage": name,
            "rows": rows,
            "seconds": round(seconds, 2),
            "cpu_s": round(cpu, 1),
            "cpu_python_workers_s": round(cpu_workers, 1) or 0.0,  # no -0.0
            "peak_rss_mib": round(self.peak.get("total", 0) / MIB, 1),
            "peak_rss_pss_workers_mib": round(self.peak.get("total_pss", 0) / MIB, 1),
            "max_python_workers": self.peak.get("n_workers", 0),
            "load1_mean": round(sum(loads) / max(len(loads), 1), 2),
        }

    def peaks_mib(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out = {f"peak_{k}_mib": round(v / MIB, 1) for k, v in self.peak.items() if k != "n_workers"}
        out["max_python_workers"] = self.peak.get("n_workers", 0)
        out["at_peak"] = {"stage": self.peak_stage, "rss_mib": self.peak_procs}
        out["python_ru_maxrss_mib"] = round(own / MIB, 1)
        return out


# --- Spark --------------------------------------------------------------------------------------
SPARK_STAGES = {  # table written -> stage it belongs to
    "events": "sessionize + write events",
    "sessions": "sessions",
    "vocab": "vocab",
    "impressions": "impressions pass + write",
}
BRONZE_STAGE = "bronze + quarantine writes"
OTHER = "other (delta log, collects, stats)"


def spark_jobs(sc, group: str) -> tuple[int, int]:
    """(jobs, completed tasks) of a job group, from the status tracker (last 1000 jobs)."""
    tracker = sc.statusTracker()
    jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
    stage_infos = [tracker.getStageInfo(i) for job in jobs if job for i in job.stageIds]
    return len(jobs), sum(info.numCompletedTasks for info in stage_infos if info)


def run_spark(args: argparse.Namespace) -> dict:
    import etl.pipeline as pipeline
    from etl.config import EtlConfig
    from etl.spark import get_spark

    sampler = TreeSampler().start()
    sampler.progress = args.result
    with sampler.stage("spark startup"):
        spark = get_spark(
            "isrec-bench-etl",
            master=f"local[{args.cores}]",
            extra_conf={"spark.driver.memory": args.driver_memory},
        )
    sc = spark.sparkContext
    sampler.on_enter = lambda name: sc.setJobGroup(name, name)
    sampler.on_exit = lambda name: sc.setJobGroup(OTHER, OTHER)
    sc.setJobGroup(OTHER, OTHER)
    cfg = EtlConfig(
        source="taobao_ad", input=str(args.world), output=str(args.lake), max_len=args.max_len
    )

    def timed(fn, stage_of):
        def wrapper(*a, **kw):
            with sampler.stage(stage_of(*a, **kw)):
                return fn(*a, **kw)

        return wrapper

    pipeline.load_source = timed(pipeline.load_source, lambda *a, **kw: "parse + counts")
    pipeline.write_table = timed(
        pipeline.write_table, lambda df, lake, name, *a, **kw: SPARK_STAGES.get(name, BRONZE_STAGE)
    )
    pipeline.write_samples = timed(pipeline.write_samples, lambda *a, **kw: "samples write")
    cpu0, workers0, t0 = sampler.cpu_total(), sampler.cpu_total("workers"), time.perf_counter()
    summary = pipeline.run_etl(spark, cfg)
    etl_seconds = time.perf_counter() - t0
    etl_cpu, etl_workers = sampler.cpu_total() - cpu0, sampler.cpu_total("workers") - workers0
    sampler.stop()

    rows = summary.rows
    read = {Path(r.file).name: r.read for r in summary.reports}
    stage_rows = {
        "spark startup": None,
        "parse + counts": sum(read.values()),
        BRONZE_STAGE: sum(
            n for t, n in rows.items() if t.startswith("bronze_") or t == "quarantine"
        ),
        "sessionize + write events": rows.get("events"),
        "sessions": rows.get("sessions"),
        "vocab": rows.get("vocab"),
        "impressions pass + write": rows.get("impressions"),
        "samples write": rows.get("samples"),
    }
    stages = [sampler.result(name, stage_rows.get(name)) for name in sampler.stages]
    timed_s = sum(s["seconds"] for s in stages if s["stage"] != "spark startup")
    timed_cpu = sum(s["cpu_s"] for s in stages if s["stage"] != "spark startup")
    timed_workers = sum(s["cpu_python_workers_s"] for s in stages)
    other = sampler.overall(
        OTHER, None, etl_seconds - timed_s, etl_cpu - timed_cpu, etl_workers - timed_workers
    )
    other.update(
        peak_rss_mib=None,
        peak_rss_pss_workers_mib=None,
        max_python_workers=None,
        load1_mean=None,
    )
    stages.append(other)
    n_input = read.get("behavior_log.csv", 0) + read.get("raw_sample.csv", 0)
    stages.append(sampler.overall("run_etl total", n_input, etl_seconds, etl_cpu, etl_workers))
    for st in stages:
        st["spark_jobs"], st["spark_tasks"] = spark_jobs(sc, st["stage"])
    stages[-1]["spark_jobs"] = sum(st["spark_jobs"] for st in stages[1:-1])
    stages[-1]["spark_tasks"] = sum(st["spark_tasks"] for st in stages[1:-1])
    # not timed: numbers to cross-check the DuckDB reference against
    sc.setJobGroup("check", "check")
    check = pipeline.read_table(spark, cfg.output, "samples").agg({"hist_len": "sum"}).first()[0]
    conf = spark.sparkContext.getConf()
    result = {
        "engine": "spark",
        "stages": stages,
        "memory": sampler.peaks_mib(),
        "settings": {
            "master": conf.get("spark.master"),
            "driver_memory": conf.get("spark.driver.memory", "1g"),
            "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
            "max_len": cfg.max_len,
        },
        "check": {
            "behaviors_kept": next(
                (r.kept for r in summary.reports if r.file.endswith("behavior_log.csv")), None
            ),
            "impressions_kept": next(
                (r.kept for r in summary.reports if r.file.endswith("raw_sample.csv")), None
            ),
            "sessions": rows.get("sessions"),
            "sum_hist_len": int(check or 0),
        },
        "table_rows": dict(rows),
    }
    spark.stop()
    return result


# --- DuckDB -------------------------------------------------------------------------------------
BTAG_RANK = "CASE btag WHEN 'pv' THEN 0 WHEN 'cart' THEN 1 WHEN 'fav' THEN 2 WHEN 'buy' THEN 3 END"
EVENT_ORDER = "ts, btag_rank, cate_id NULLS FIRST, brand_id NULLS FIRST"


def duckdb_queries(world: Path, out: Path, gap_s: int, max_len: int, tz: int) -> dict[str, list]:
    behavior_csv, sample_csv = world / "behavior_log.csv", world / "raw_sample.csv"
    load = [
        f"""CREATE TABLE behaviors AS SELECT DISTINCT user_id, ts, btag, cate_id, brand_id
        FROM read_csv('{behavior_csv}', header = true, delim = ',', nullstr = ['', 'NULL'],
            columns = {{'user_id': 'BIGINT', 'ts': 'BIGINT', 'btag': 'VARCHAR',
                        'cate_id': 'BIGINT', 'brand_id': 'BIGINT'}})""",
        f"""CREATE TABLE impressions AS
        SELECT row_number() OVER () AS imp_id, * FROM (
            SELECT DISTINCT user_id, ts, ad_id, pid AS slot, clk AS click
            FROM read_csv('{sample_csv}', header = true, delim = ',',
                columns = {{'user_id': 'BIGINT', 'ts': 'BIGINT', 'ad_id': 'BIGINT',
                            'pid': 'VARCHAR', 'nonclk': 'INTEGER', 'clk': 'INTEGER'}}))""",
    ]
    sessionize = [
        f"""CREATE TABLE events AS
        WITH ranked AS (SELECT *, {BTAG_RANK} AS btag_rank FROM behaviors),
        flagged AS (
            SELECT *, CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w > {gap_s}
                      THEN 1 ELSE 0 END AS new_session
            FROM ranked WINDOW w AS (PARTITION BY user_id ORDER BY {EVENT_ORDER})),
        numbered AS (
            SELECT *, sum(new_session) OVER (PARTITION BY user_id ORDER BY {EVENT_ORDER}
                                             ROWS UNBOUNDED PRECEDING) AS seq
            FROM flagged),
        started AS (SELECT *, min(ts) OVER (PARTITION BY user_id, seq) AS start_ts FROM numbered)
        SELECT user_id, ts, btag, btag_rank, cate_id, brand_id,
            hash(user_id, start_ts) AS session_id,
            (row_number() OVER (PARTITION BY user_id, seq ORDER BY {EVENT_ORDER}) - 1)::INTEGER
                AS pos,
            epoch_ms((ts + {tz * 3600}) * 1000)::DATE AS day
        FROM started""",
        f"COPY events TO '{out / 'events.parquet'}' (FORMAT parquet)",
    ]
    gap = "2 + least(floor(log2(1 + greatest(ts - t, 0) / 60.0)), 15)::INTEGER"

    def pad(values: str) -> str:  # right-padded with 0 to max_len, as Spark's arrays
        return f"list_resize(coalesce({values}, []), {max_len}, 0)"

    history = [
        # each user's behaviors once, as lists in event order (an unordered list of structs led
        # by the rank, sorted afterwards: list(... ORDER BY) buffers per group, far slower)
        f"""CREATE TABLE user_events AS
        WITH ranked AS (
            SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY {EVENT_ORDER}) AS rn
            FROM events),
        lists AS (
            SELECT user_id,
                list_sort(list({{'rn': rn, 'ts': ts, 'cate': cate_id, 'brand': brand_id,
                                 'btag': btag_rank + 2}})) AS ev
            FROM ranked GROUP BY user_id)
        SELECT user_id, list_transform(ev, x -> x.ts) AS ts_l,
            list_transform(ev, x -> x.cate) AS cate_l,
            list_transform(ev, x -> x.brand) AS brand_l,
            list_transform(ev, x -> x.btag) AS btag_l
        FROM lists""",
        # k = behaviors strictly before the impression = rank of the last one before it (the
        # largest rank among a timestamp's behaviors)
        f"""CREATE TABLE imp_k AS
        SELECT i.imp_id, i.user_id, i.ts, coalesce(b.k, 0) AS k
        FROM impressions i ASOF LEFT JOIN (
            SELECT user_id, ts, max(rn) AS k FROM (
                SELECT user_id, ts,
                    row_number() OVER (PARTITION BY user_id ORDER BY {EVENT_ORDER}) AS rn
                FROM events)
            GROUP BY user_id, ts) b
        ON i.user_id = b.user_id AND i.ts > b.ts""",
        # the last max_len of them: slices of the user's lists, streamed impression by impression
        f"""COPY (
            WITH sliced AS (
                SELECT i.imp_id, i.user_id, i.ts, least(i.k, {max_len})::INTEGER AS hist_len,
                    greatest(i.k - {max_len}, 0) + 1 AS a, i.k AS b,
                    u.ts_l, u.cate_l, u.brand_l, u.btag_l
                FROM imp_k i LEFT JOIN user_events u USING (user_id))
            SELECT imp_id, user_id, ts, hist_len,
                {pad("list_slice(cate_l, a, b)")} AS hist_cate,
                {pad("list_slice(brand_l, a, b)")} AS hist_brand,
                {pad("list_slice(btag_l, a, b)")} AS hist_btag,
                {pad(f"list_transform(list_slice(ts_l, a, b), t -> {gap})")} AS hist_gap
            FROM sliced
        ) TO '{out / "history.parquet"}' (FORMAT parquet)""",
    ]
    return {"load CSV": load, "sessionize + write": sessionize, "history + write": history}


def run_duckdb(args: argparse.Namespace) -> dict:
    import duckdb

    from etl.config import EtlConfig

    cfg = EtlConfig()
    out = Path(args.lake)
    out.mkdir(parents=True, exist_ok=True)
    sampler = TreeSampler().start()
    sampler.progress = args.result
    con = duckdb.connect()  # in memory, spilling to temp_directory beyond memory_limit
    con.execute(f"PRAGMA threads={args.cores}")
    con.execute(f"SET memory_limit = '{args.duckdb_memory}'")
    con.execute(f"SET temp_directory = '{out / 'spill'}'")
    con.execute("SET enable_progress_bar = false")
    cpu0, t0 = sampler.cpu_total(), time.perf_counter()
    queries = duckdb_queries(
        Path(args.world), out, cfg.gap_seconds, args.max_len, cfg.tz_offset_hours
    )
    for name, statements in queries.items():
        with sampler.stage(name):
            for sql in statements:
                con.execute(sql)
    seconds, cpu = time.perf_counter() - t0, sampler.cpu_total() - cpu0
    sampler.stop()

    def one(sql: str) -> int:
        return int(con.execute(sql).fetchone()[0] or 0)

    n_beh, n_imp = one("SELECT count(*) FROM behaviors"), one("SELECT count(*) FROM impressions")
    stage_rows = {
        "load CSV": n_beh + n_imp,
        "sessionize + write": one("SELECT count(*) FROM events"),
        "history + write": n_imp,
    }
    stages = [sampler.result(name, stage_rows[name]) for name in queries]
    stages.append(sampler.overall("total", n_beh + n_imp, seconds, cpu, 0.0))
    result = {
        "engine": "duckdb",
        "version": duckdb.__version__,
        "stages": stages,
        "memory": sampler.peaks_mib(),
        "settings": {
            "threads": args.cores,
            "memory_limit": args.duckdb_memory,
            "database": "in memory (spills to a temp folder)",
            "max_len": args.max_len,
        },
        "check": {
            "behaviors_kept": n_beh,
            "impressions_kept": n_imp,
            "sessions": one("SELECT count(DISTINCT session_id) FROM events"),
            "sum_hist_len": one(f"SELECT sum(least(k, {args.max_len})) FROM imp_k"),
        },
    }
    con.close()
    return result


# --- orchestration ------------------------------------------------------------------------------
def ensure_world(args: argparse.Namespace, tmp: Path) -> tuple[Path, dict, float | None]:
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
    engine: str, args: argparse.Namespace, world: Path, work: Path, timeout: float | None
) -> dict:
    """Run one engine in a fresh process (its own session, so a timeout can end its JVM and
    workers too); on failure or timeout return the stages it had completed."""
    result_file = work / f"{engine}.json"
    lake = work / f"{engine}_out"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        engine,
        "--world",
        str(world),
        "--lake",
        str(lake),
        "--result",
        str(result_file),
        "--cores",
        str(args.cores),
        "--max-len",
        str(args.max_len),
        "--driver-memory",
        args.driver_memory,
        "--duckdb-memory",
        args.duckdb_memory,
    ]
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


class LoadSampler(threading.Thread):
    """1-minute load average every few seconds over the whole benchmark."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.values = interval, [os.getloadavg()[0]]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.values.append(os.getloadavg()[0])

    def summary(self) -> dict:
        self._stop_event.set()
        v = self.values
        return {"min": round(min(v), 2), "mean": round(sum(v) / len(v), 2), "max": round(max(v), 2)}


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--behaviors", type=int, default=10_000_000, help="target behavior rows")
    p.add_argument("--users", type=int, default=None, help="world users (overrides --behaviors)")
    p.add_argument("--world", type=Path, default=None, help="world folder (reused if present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=2, help="Spark local[N] and DuckDB threads")
    p.add_argument("--max-len", type=int, default=50, help="history length L")
    p.add_argument("--driver-memory", default="4g", help="Spark driver (= executor) heap")
    p.add_argument("--duckdb-memory", default="4GB", help="DuckDB memory_limit (spills beyond)")
    p.add_argument("--engines", default="duckdb,spark", help="run in this order")
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per engine; keep completed stages"
    )
    p.add_argument("--json", type=Path, default=OUT_JSON)
    p.add_argument("--child", choices=("spark", "duckdb"), help=argparse.SUPPRESS)
    p.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
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
