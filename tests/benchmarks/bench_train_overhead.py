"""The fixed cost of one Ray Train run: fit() wall seconds against the seconds inside the epochs.

The closed loop (jobs/simulate.py) trains ~40 small models, a few seconds of epochs each, so
whatever a run costs besides its epochs (the controller and worker processes, the placement
group, the controller's polls that pick up each report, teardown) decides its training stage.
For each value of ``--poll-intervals`` (Ray Train's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, the
controller's poll period; the project sets train.driver.POLL_INTERVAL_S unless the variable is
set) the same training runs ``--repeats`` times, variants interleaved so that load drifts hit
every one alike; the first, unmeasured run starts Ray and warms the caches. Prints a table
(mean fit seconds, epoch seconds and the difference, the overhead) and writes JSON. Not run
by CI.

    python tests/benchmarks/bench_train_overhead.py --lake LAKE --poll-intervals 2,0.25
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from dataclasses import replace as with_changes

from benchmark_report import Report

from etl.cli import parse
from train.driver import POLL_INTERVAL_ENV, connect_ray, run_training
from train.train_config import TrainConfig


@dataclass
class BenchTrainOverheadConfig:
    lake: str = field(default="", metadata={"help": "lake written by jobs/etl.py"})
    model: str = "rnn_mtl"
    epochs: int = 2
    num_workers: int = 1
    train_days: int = field(default=0, metadata={"help": "latest N train days (0: all)"})
    poll_intervals: str = field(
        default="2,0.25", metadata={"help": "controller poll periods (s), comma-separated"}
    )
    repeats: int = 3
    storage_path: str = field(default="", metadata={"help": "Ray runs (default: a temp dir)"})
    out: str = "data/bench/bench_train_overhead.json"


def one_fit(cfg: TrainConfig, interval: str) -> dict[str, float]:
    os.environ[POLL_INTERVAL_ENV] = interval  # read by each run's new controller
    started = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - started
    epochs = sum(row["epoch_seconds"] for row in result.history)
    return {"fit_s": wall, "epochs_s": epochs, "overhead_s": wall - epochs}


def table(runs: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| poll interval (s) | fit (s) | epochs (s) | overhead (s) |",
        "| --- | --- | --- | --- |",
    ]
    for interval, rows in runs.items():
        means = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        lines.append(
            f"| {interval} | {means['fit_s']:.1f} | {means['epochs_s']:.1f} "
            f"| {means['overhead_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = parse(BenchTrainOverheadConfig, argv, description=__doc__.split("\n")[0])
    intervals = [v.strip() for v in bench.poll_intervals.split(",") if v.strip()]
    if not bench.lake or not intervals or bench.repeats < 1:
        raise SystemExit("bench_train_overhead: --lake, --poll-intervals and --repeats >= 1")
    base = TrainConfig(
        lake=bench.lake,
        model=bench.model,
        epochs=bench.epochs,
        num_workers=bench.num_workers,
        train_days=bench.train_days,
        track=False,
        register=False,
        # a fresh folder: a run name found there would resume its finished run, not train
        storage_path=tempfile.mkdtemp(dir=bench.storage_path or None),
    )
    report = Report(bench)
    connect_ray(base)
    one_fit(with_changes(base, name="warm-up"), intervals[0])
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in intervals}
    for repeat in range(bench.repeats):
        for interval in intervals:
            row = one_fit(with_changes(base, name=f"poll{interval}-{repeat}"), interval)
            runs[interval].append(row)
            print(f"poll {interval} s, repeat {repeat}: {row}", flush=True)
    print(table(runs))
    report.write(bench.out, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
