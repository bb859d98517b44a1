"""Oracle gap: every model's test AUCs against the generator's true probabilities.

On a synthetic world (DESIGN.md section 4) the truth table gives the best possible AUC on the
very test rows the models are scored on. Steps (each reused when its output exists):
generate the world, run the ETL (local Spark, in process), train every model with Ray Train
(``--num-workers`` CPU workers unless ``--use-gpu``), join the oracle. Prints one table (CTR,
CVR on clicked rows, CTCVR AUC, GAUC, the gap to the oracle per AUC, training seconds) and
writes JSON. Not run by CI.

    python tests/benchmarks/bench_quality.py                      # the "learnable" world
    python tests/benchmarks/bench_quality.py --ads 0 --items 0 --cates 0 --brands 0  # default
        # catalog sizes (2.5 ads per user, Taobao-like long tail)

The default world has a small catalog (300 ads in 30 categories): each ad is shown ~600 times,
so ad and category effects can be learned from a few minutes of CPU training. The per-user
click bias of the world (std 0.4 on the logit) stays hard to learn at ~30 impressions a user.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from etl.world import WorldConfig, write_world
from train.loop import connect_ray, run_training
from train.metrics import evaluate
from train.models import MODEL_NAMES
from train.train_config import TrainConfig

AUCS = ("ctr_auc", "cvr_auc", "ctcvr_auc")
KEYS = ("click", "conversion", "n_future_views")
PREDS = ("pctr", "pcvr", "pctcvr", "expected_views")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="data/bench/quality")
    p.add_argument("--users", type=int, default=6000)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--ads", type=int, default=300, help="0: the generator's default")
    p.add_argument("--items", type=int, default=3000, help="0: the generator's default")
    p.add_argument("--cates", type=int, default=30, help="0: the generator's default")
    p.add_argument("--brands", type=int, default=120, help="0: the generator's default")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--loader", default="petastorm")
    p.add_argument("--param", action="append", default=[], metavar="MODEL:KEY=VALUE")
    p.add_argument("--out", default="data/bench/bench_quality.json")
    return p.parse_args(argv)


def world_config(args: argparse.Namespace) -> WorldConfig:
    sizes = {k: getattr(args, k) or None for k in ("ads", "items", "cates", "brands")}
    return WorldConfig(users=args.users, days=args.days, seed=args.seed, **sizes)


def ensure_world(cfg: WorldConfig, raw: Path) -> None:
    stored = raw / "world.json"
    if stored.is_file() and json.loads(stored.read_text()).get("config") == cfg.to_dict():
        return
    write_world(cfg, raw)


def ensure_lake(raw: Path, lake: Path, max_len: int) -> float:
    """Run the ETL unless the lake holds a spec for this world; returns seconds spent."""
    from etl.config import EtlConfig
    from etl.pipeline import run_etl
    from etl.spark import get_spark

    stamp = lake / "_bench_world.json"
    world = (raw / "world.json").read_text()
    if stamp.is_file() and stamp.read_text() == world and (lake / "_feature_spec.json").is_file():
        return 0.0
    started = time.perf_counter()
    spark = get_spark("bench-quality-etl", master="local[2]")
    run_etl(spark, EtlConfig(source="taobao_ad", input=str(raw), output=str(lake), max_len=max_len))
    stamp.write_text(world)
    return time.perf_counter() - started


def oracle_rows(raw: Path, lake: Path) -> pd.DataFrame:
    from etl.oracle import oracle_frame
    from etl.spark import get_spark

    return oracle_frame(get_spark("bench-quality-oracle", master="local[2]"), raw, lake)


def model_params(items: list[str], model: str) -> dict[str, str]:
    params = {}
    for item in items:
        name, _, kv = item.partition(":")
        if name == model:
            key, _, value = kv.partition("=")
            params[key] = value
    return params


def train_one(args: argparse.Namespace, lake: Path, model: str) -> tuple[dict, pd.DataFrame]:
    cfg = TrainConfig(
        lake=str(lake),
        model=model,
        model_params=model_params(args.param, model),
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        loader=args.loader,
        storage_path=str(Path(args.data_dir).resolve() / "ray_results"),
        name=f"quality-{model}-{int(time.time())}",
        log_every=0,
    )
    started = time.perf_counter()
    result = run_training(cfg)
    seconds = time.perf_counter() - started
    preds = pd.read_parquet(result.predictions_path)
    info = {
        "train_seconds": round(seconds, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "samples_per_s": round(result.history[-1].get("train_samples_per_second", 0.0)),
    }
    return info, preds


def score(frame: pd.DataFrame, cols: dict[str, str]) -> dict[str, float]:
    labels = {k: frame[k].to_numpy() for k in KEYS}
    preds = {p: frame[cols[p]].to_numpy() for p in PREDS}
    return evaluate(labels, preds, frame["user_key"].to_numpy())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data_dir).resolve()
    cfg = world_config(args)
    raw, lake = data / "raw", data / "lake"
    t0 = time.perf_counter()
    ensure_world(cfg, raw)
    etl_seconds = ensure_lake(raw, lake, args.max_len)
    oracle = oracle_rows(raw, lake)
    print(
        f"world {cfg.sizes()} users {cfg.users}; ETL {etl_seconds:.0f}s; "
        f"{len(oracle)} test rows, {int(oracle.click.sum())} clicks, "
        f"{int(oracle.conversion.sum())} conversions",
        flush=True,
    )
    truth = oracle.rename(columns={p: f"true_{p}" for p in PREDS})
    rows = {"oracle": score(truth, {p: f"true_{p}" for p in PREDS})}
    info: dict[str, dict] = {}
    connect_ray(TrainConfig(num_workers=args.num_workers, ray_num_cpus=0))
    for model in [m for m in args.models.split(",") if m]:
        info[model], preds = train_one(args, lake, model)
        joined = truth.merge(
            preds[["impression_id", *PREDS]], on="impression_id", how="inner", validate="1:1"
        )
        if len(joined) != len(truth):
            raise SystemExit(f"{model}: {len(joined)} of {len(truth)} oracle rows predicted")
        rows[model] = score(joined, {p: p for p in PREDS})
        print(
            f"{model}: {json.dumps({k: round(rows[model][k], 4) for k in AUCS})} {info[model]}",
            flush=True,
        )
    print()
    print(table(rows, info))
    report = {
        "args": vars(args),
        "world": cfg.to_dict(),
        "machine": platform.platform(),
        "etl_seconds": round(etl_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metrics": rows,
        "runs": info,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")
    return 0


def table(rows: dict[str, dict[str, float]], info: dict[str, dict]) -> str:
    oracle = rows["oracle"]
    head = f"{'model':<9}" + "".join(f"{m:>11}" for m in (*AUCS, "ctr_gauc"))
    head += "".join(f"{'gap ' + m.removesuffix('_auc'):>10}" for m in AUCS)
    head += f"{'epochs':>8}{'train s':>9}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        line = f"{name:<9}" + "".join(f"{m.get(k, np.nan):>11.4f}" for k in (*AUCS, "ctr_gauc"))
        if name == "oracle":
            lines.append(line)
            continue
        line += "".join(f"{oracle[k] - m[k]:>10.4f}" for k in AUCS)
        line += f"{info[name]['epochs_run']:>8}{info[name]['train_seconds']:>9.0f}"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
