"""Do the train job's defaults reach each model's plateau? Valid AUCs per epoch of long runs.

For each world size (``--users``, the generator's default Taobao-like catalog, as the
quickstart's world) the world is generated and run through the ETL once (reused when its
output exists), then every model trains once with the train job's defaults
(train/train_config.py: batch, lr, early-stopping metric) but for ``--epochs`` epochs with
early stopping off. From the per-epoch valid metrics it reports:

- plateau: the best valid CTR AUC of the long run, and its epoch;
- epoch 2: the valid CTR AUC after two epochs (the fast-convergence target: within 0.01 of
  the plateau on the quickstart world);
- defaults: the epoch the default run keeps (its epochs and patience applied to the same
  history with its early-stopping metric) and that epoch's valid CTR AUC, with its gap to the
  plateau.

Prints one table and writes JSON. Not run by CI.

    python tests/benchmarks/bench_convergence.py --users 3000 --models rnn_mtl   # quickstart
    python tests/benchmarks/bench_convergence.py --users 1000,3000,20000          # all models
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_quality import ensure_lake, ensure_world
from benchmark_report import Report

from etl.cli import parse
from etl.world import WorldConfig
from train.driver import connect_ray, run_training
from train.metrics import is_better
from train.models import MODEL_NAMES
from train.train_config import TrainConfig

_DEFAULTS = TrainConfig()
TOLERANCE = 0.01  # CTR AUC below the plateau that still counts as reaching it


@dataclass
class BenchConvergenceConfig:
    data_dir: str = "data/bench/convergence"
    users: str = field(default="3000", metadata={"help": "world sizes, comma-separated"})
    days: int = 8
    seed: int = field(default=0, metadata={"help": "world and training seed"})
    max_len: int = field(default=20, metadata={"help": "ETL history length (the quickstart's)"})
    models: str = ",".join(MODEL_NAMES)
    epochs: int = field(default=10, metadata={"help": "epochs of the long run"})
    num_workers: int = 2
    out: str = "data/bench/bench_convergence.json"


def default_stop(history: list[dict[str, float]], cfg: TrainConfig = _DEFAULTS) -> int:
    """The epoch (0-based) a run with ``cfg``'s epochs, patience and early-stopping metric
    keeps, given the per-epoch history of a longer run (train/worker.py's rule)."""
    key = f"valid_{cfg.early_stop_metric}"
    best, kept, bad = None, 0, 0
    for row in history[: cfg.epochs]:
        value = row[key]
        if is_better(cfg.early_stop_metric, value, best):
            best, kept, bad = value, int(row["epoch"]), 0
        else:
            bad += 1
        if 0 < cfg.patience <= bad:
            break
    return kept


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Plateau, epoch-2 and default-run figures of one long run's valid CTR AUCs."""
    auc = [row["valid_ctr_auc"] for row in history]
    peak = max(range(len(auc)), key=auc.__getitem__)
    kept, second = default_stop(history), auc[min(1, len(auc) - 1)]
    return {
        "plateau": auc[peak],
        "plateau_epoch": peak + 1,
        "epoch2": second,
        "default_epoch": kept + 1,
        "default_auc": auc[kept],
        "default_gap": auc[peak] - auc[kept],
        "epoch2_gap": auc[peak] - second,
    }


def train_long(bench: BenchConvergenceConfig, lake: Path, model: str) -> dict:
    cfg = TrainConfig(
        lake=str(lake),
        model=model,
        seed=bench.seed,
        num_workers=bench.num_workers,
        epochs=bench.epochs,
        patience=0,
        track=False,
        register=False,
        storage_path=str(Path(bench.data_dir).resolve() / "ray_results"),
        name=f"convergence-{model}-{int(time.time())}",
        log_every=0,
    )
    started = time.perf_counter()
    result = run_training(cfg)
    history = [
        {k: float(v) for k, v in row.items() if k == "epoch" or k.startswith("valid_")}
        for row in result.history
    ]
    return {"history": history, "train_seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict]) -> str:
    head = (
        "| users | model | epoch 1 | epoch 2 | plateau (epoch) | default keeps | default AUC "
        f"| gap default | gap epoch 2 | within {TOLERANCE} (default / epoch 2) |"
    )
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        s, first = r["summary"], r["history"][0]["valid_ctr_auc"]
        lines.append(
            f"| {r['users']} | {r['model']} | {first:.4f} | {s['epoch2']:.4f} "
            f"| {s['plateau']:.4f} ({s['plateau_epoch']}) | epoch {s['default_epoch']} "
            f"| {s['default_auc']:.4f} | {s['default_gap']:.4f} | {s['epoch2_gap']:.4f} "
            f"| {_yes(s['default_gap'])} / {_yes(s['epoch2_gap'])} |"
        )
    return "\n".join(lines)


def _yes(gap: float) -> str:
    return "yes" if gap <= TOLERANCE else "no"


def main(argv: list[str] | None = None) -> int:
    bench = parse(BenchConvergenceConfig, argv, description=__doc__.split("\n")[0])
    data = Path(bench.data_dir).resolve()
    report = Report(bench)
    connect_ray(TrainConfig(num_workers=bench.num_workers, ray_num_cpus=0))
    rows = []
    for users in [int(u) for u in bench.users.split(",") if u]:
        world = WorldConfig(users=users, days=bench.days, seed=bench.seed)
        raw, lake = data / f"u{users}" / "raw", data / f"u{users}" / "lake"
        ensure_world(world, raw)
        etl_seconds = ensure_lake(raw, lake, bench.max_len)
        print(f"world of {users} users ready (ETL {etl_seconds:.0f}s)", flush=True)
        for model in [m for m in bench.models.split(",") if m]:
            run = train_long(bench, lake, model)
            row = {"users": users, "model": model, **run, "summary": summarize(run["history"])}
            print(json.dumps({k: row[k] for k in ("users", "model", "summary")}), flush=True)
            rows.append(row)
    print()
    print(table(rows))
    report.write(
        bench.out,
        defaults={k: getattr(_DEFAULTS, k) for k in ("epochs", "patience", "batch_size", "lr")}
        | {"early_stop_metric": _DEFAULTS.early_stop_metric},
        tolerance=TOLERANCE,
        runs=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
