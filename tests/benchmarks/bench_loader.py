"""Loader throughput: samples/s delivered as torch batches (the train/data.py batch contract).

Compares the Petastorm backend, the pyarrow backend and in-memory tensors (the upper limit: a
shuffled index into tensors already in RAM) on a generated samples-like parquet table, one shard,
shuffling on, at batch sizes 512 and 4096. Prints a table and writes JSON. Targets (the training
throughput issue): at batch 4096 the pyarrow backend >= 0.8x and Petastorm >= 0.5x of in-memory.

    python tests/benchmarks/bench_loader.py --rows 500000 --out data/bench/bench_loader.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from etl.cli import parse
from etl.spec import FeatureSpec, FieldSpec
from train.data import batch_columns, make_loader, plan_shards

SPARSE = ["user", "ad", "cate", "brand", "campaign", "customer", "slot", "gender", "age", "hour"]
SEQUENCE = ["hist_item", "hist_cate", "hist_btag"]
# the training-throughput targets: share of the in-memory rate each backend must reach
TARGET_BATCH = 4096
TARGETS = {"pyarrow": 0.8, "petastorm": 0.5}


@dataclass
class BenchLoaderConfig:
    rows: int = 500_000
    files: int = 8
    row_group: int = field(default=65_536, metadata={"help": "rows per row group"})
    max_len: int = 50
    batch_sizes: str = field(default="512,4096", metadata={"help": "comma-separated"})
    out: str = "data/bench/bench_loader.json"


def make_spec(max_len: int) -> FeatureSpec:
    fields = [FieldSpec(name, "sparse", name, 10_000) for name in SPARSE]
    fields += [FieldSpec("price", "dense")]
    fields += [FieldSpec(name, "sequence", name.removeprefix("hist_"), 10_000) for name in SEQUENCE]
    return FeatureSpec(source="bench", max_len=max_len, fields=fields)


def write_table(
    folder: Path, spec: FeatureSpec, rows: int, files: int, row_group: int
) -> list[str]:
    """``files`` parquet files with the samples layout (int32 ids, list<int32> histories)."""
    rng = np.random.default_rng(0)
    uris = []
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        start = i * per_file
        cols = {
            "impression_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "user_key": pa.array(rng.integers(0, 100_000, n, dtype=np.int64)),
            "hist_len": pa.array(rng.integers(0, spec.max_len + 1, n, dtype=np.int32)),
        }
        for f in spec.sparse:
            cols[f.name] = pa.array(rng.integers(2, f.vocab_size, n, dtype=np.int32))
        for f in spec.dense:
            cols[f.name] = pa.array(rng.gamma(2.0, 50.0, n).astype(np.float32))
        for f in spec.sequence:
            flat = rng.integers(0, f.vocab_size, n * spec.max_len, dtype=np.int32)
            offsets = np.arange(0, n * spec.max_len + 1, spec.max_len, dtype=np.int32)
            cols[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        for name in spec.labels:
            cols[name] = pa.array((rng.random(n) < 0.1).astype(np.float32))
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(pa.table(cols), path, row_group_size=row_group)
        uris.append("file://" + str(path))
    return uris


def time_loader(spec: FeatureSpec, files: list[str], backend: str, batch_size: int) -> dict:
    plan = plan_shards(files, 1)
    loader = make_loader(spec, plan, backend, batch_size, seed=1, epoch=0, shuffle=True)
    started = time.perf_counter()
    rows = sum(len(batch["click"]) for batch in loader)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "samples_per_s": rows / seconds}


def load_in_memory(spec: FeatureSpec, files: list[str]) -> dict[str, torch.Tensor]:
    plan = plan_shards(files, 1)
    batches = list(make_loader(spec, plan, "pyarrow", 65_536, shuffle=False))
    return {k: torch.cat([b[k] for b in batches]) for k in batch_columns(spec)}


def time_in_memory(tensors: dict[str, torch.Tensor], batch_size: int) -> dict:
    rows = len(tensors["click"])
    started = time.perf_counter()
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    delivered = 0
    for i in range(0, rows, batch_size):
        index = order[i : i + batch_size]
        batch = {k: v[index] for k, v in tensors.items()}
        delivered += len(batch["click"])
    seconds = time.perf_counter() - started
    return {"rows": delivered, "seconds": seconds, "samples_per_s": delivered / seconds}


def main(argv: list[str] | None = None) -> int:
    args = parse(BenchLoaderConfig, argv, description=__doc__.split("\n")[0])
    torch.set_num_threads(1)
    spec = make_spec(args.max_len)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        files = write_table(Path(folder), spec, args.rows, args.files, args.row_group)
        tensors = load_in_memory(spec, files)
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            memory = time_in_memory(tensors, batch_size)
            results.append({"loader": "in-memory", "batch_size": batch_size, **memory})
            for backend in ("petastorm", "pyarrow"):
                timing = time_loader(spec, files, backend, batch_size)
                results.append({"loader": backend, "batch_size": batch_size, **timing})
    upper = {r["batch_size"]: r["samples_per_s"] for r in results if r["loader"] == "in-memory"}
    for r in results:
        r["ratio_to_in_memory"] = r["samples_per_s"] / upper[r["batch_size"]]
        if r["batch_size"] == TARGET_BATCH and r["loader"] in TARGETS:
            r["target_ratio"] = TARGETS[r["loader"]]
            r["meets_target"] = r["ratio_to_in_memory"] >= r["target_ratio"]
    head = f"{'loader':<10} {'batch':>6} {'rows':>9} {'seconds':>8} {'samples/s':>11} {'ratio':>6}"
    print(f"{head} {'target':>7}")
    for r in results:
        target = f">={r['target_ratio']:.1f} {'ok' if r['meets_target'] else 'NO'}"
        print(
            f"{r['loader']:<10} {r['batch_size']:>6} {r['rows']:>9} {r['seconds']:>8.2f} "
            f"{r['samples_per_s']:>11,.0f} {r['ratio_to_in_memory']:>6.3f} "
            f"{target if 'target_ratio' in r else '':>7}"
        )
    report = {
        "rows": args.rows,
        "files": args.files,
        "row_group": args.row_group,
        "max_len": args.max_len,
        "columns": len(batch_columns(spec)),
        "machine": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
