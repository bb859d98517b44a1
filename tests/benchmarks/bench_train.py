"""Training throughput per model: samples/s of Ray Train (DDP: gloo on CPU, NCCL on GPU).

Writes a samples-like Delta lake once (local Spark; or pass --lake for an ETL lake), then for
each model runs train.driver.run_training for a few epochs of at most --steps steps per worker and
reports the last epoch's training samples/s (all workers together; the first epoch includes
worker start-up and is left out). Prints a table and writes JSON.

    python tests/benchmarks/bench_train.py --rows 200000 --out data/bench/bench_train.json
    python tests/benchmarks/bench_train.py --lake LAKE --num-workers 1 --use-gpu --loader pyarrow
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from etl.cli import parse
from etl.spec import FeatureSpec
from train.driver import connect_ray, run_training
from train.models import MODEL_NAMES
from train.train_config import LOADERS, TrainConfig

SPLIT_DAYS = {"train": "2017-05-06", "valid": "2017-05-07", "test": "2017-05-08"}


@dataclass
class BenchTrainConfig:
    lake: str = field(default="", metadata={"help": "existing lake (default: generate one)"})
    rows: int = 200_000
    max_len: int = 50
    models: str = ",".join(MODEL_NAMES)
    epochs: int = 2
    steps: int = field(default=30, metadata={"help": "max steps per epoch and worker"})
    batch_size: int = 1024
    num_workers: int = 2
    loader: str = field(default="petastorm", metadata={"choices": LOADERS})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, bf16"})
    out: str = "data/bench/bench_train.json"


def write_lake(lake: Path, rows: int, max_len: int, files: int) -> FeatureSpec:
    """A Delta samples table (split by row share 80/10/10) with the bench_loader columns."""
    from bench_loader import make_spec  # sibling script (its folder is on sys.path)
    from bench_loader import write_table as write_parquet
    from pyspark.sql import functions as F

    from etl.lake import write_table
    from etl.spark import get_spark

    spec = make_spec(max_len)
    spark = get_spark("bench-train", master="local[2]")
    with tempfile.TemporaryDirectory() as folder:
        write_parquet(Path(folder), spec, rows, files, 65_536)
        frac = F.col("impression_id") / F.lit(rows)
        split = F.when(frac < 0.8, "train").when(frac < 0.9, "valid").otherwise("test")
        df = spark.read.parquet(folder).withColumn("split", split)
        day = F.create_map(*[F.lit(x) for kv in SPLIT_DAYS.items() for x in kv])[F.col("split")]
        df = df.withColumn("day", day.cast("date")).repartition(files)
        version = write_table(df, lake, "samples", partition_by=["split", "day"])
    spark.stop()
    spec.splits = {s: [d] for s, d in SPLIT_DAYS.items()}
    spec.tables = {"samples": version}
    spec.save(lake)
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parse(BenchTrainConfig, argv, description=__doc__.split("\n")[0])

    with tempfile.TemporaryDirectory() as folder:
        lake = Path(args.lake) if args.lake else Path(folder) / "lake"
        if not args.lake:
            write_lake(lake, args.rows, args.max_len, files=8)
        base = TrainConfig(
            lake=str(lake),
            num_workers=args.num_workers,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_steps_per_epoch=args.steps,
            patience=0,
            loader=args.loader,
            storage_path=str(Path(folder) / "ray_results"),
            ray_num_cpus=args.num_workers,
            use_gpu=args.use_gpu,
            log_every=0,
        )
        connect_ray(base)
        results = [bench_model(base, name) for name in args.models.split(",")]

    for r in results:  # one CPU (or GPU) per Ray Train worker: the per-core figure peers.py uses
        r["samples_per_s_per_worker"] = r["samples_per_s"] / args.num_workers
    print(
        f"{'model':<9} {'samples/s':>10} {'per worker':>11} {'first epoch':>12} {'run s':>7} "
        f"{'test ctcvr_auc':>15}"
    )
    for r in results:
        print(
            f"{r['model']:<9} {r['samples_per_s']:>10,.0f} {r['samples_per_s_per_worker']:>11,.0f}"
            f" {r['first_epoch_samples_per_s']:>12,.0f} {r['run_seconds']:>7.1f}"
            f" {r['test_ctcvr_auc']:>15.4f}"
        )
    report = {
        "args": asdict(args),
        "machine": _machine(args.use_gpu),
        "load_average": os.getloadavg(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def _machine(use_gpu: bool) -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if use_gpu and torch.cuda.is_available() else ""
    return f"{platform.platform()}, {platform.processor() or platform.machine()}{gpu}"


def bench_model(base: TrainConfig, name: str) -> dict:
    started = time.perf_counter()
    result = run_training(TrainConfig(**{**base.to_dict(), "model": name, "name": f"bench-{name}"}))
    seconds = time.perf_counter() - started
    history = result.history
    return {
        "model": name,
        "samples_per_s": history[-1]["train_samples_per_second"],
        "first_epoch_samples_per_s": history[0]["train_samples_per_second"],
        "rows_per_epoch": history[-1]["train_rows"],
        "run_seconds": seconds,
        "test_ctcvr_auc": result.test_metrics.get("ctcvr_auc", float("nan")),
    }


if __name__ == "__main__":
    raise SystemExit(main())
