"""Part of bench_etl.py: the two engines, each run in a child process of the benchmark.

``run_spark`` runs ``run_etl`` as the jobs run it, timing the pipeline's own calls per stage;
``run_duckdb`` runs the single-node DuckDB reference. Both return the stages and checks that
bench_etl.py prints and compares (see its docstring).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench_etl_sampling import TreeSampler

if TYPE_CHECKING:
    from bench_etl import BenchEtlConfig


# --- Spark --------------------------------------------------------------------------------------
SPARK_STAGES = {  # table written -> stage it belongs to
    "events": "sessionize + write events",
    "sessions": "sessions",
    "vocab": "vocab",
    "impressions": "impressions pass + write",
}
PASS_STAGE = SPARK_STAGES["impressions"]
BRONZE_STAGE = "bronze + quarantine writes"
OTHER = "other (delta log, collects, stats)"


def spark_jobs(sc, group: str) -> tuple[int, int]:
    """(jobs, completed tasks) of a job group, from the status tracker (last 1000 jobs)."""
    tracker = sc.statusTracker()
    jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
    stage_infos = [tracker.getStageInfo(i) for job in jobs if job for i in job.stageIds]
    return len(jobs), sum(info.numCompletedTasks for info in stage_infos if info)


def run_spark(args: BenchEtlConfig) -> dict:
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
    # the pass runs when its persisted output is first aggregated (label stats + row count)
    pipeline._label_stats = timed(pipeline._label_stats, lambda *a, **kw: PASS_STAGE)
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


def run_duckdb(args: BenchEtlConfig) -> dict:
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
