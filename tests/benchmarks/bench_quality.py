"""Oracle gap: every model's test AUCs against the generator's true probabilities.

On a synthetic world (DESIGN.md section 4) the truth table gives the best possible AUC on the
very test rows the models are scored on. Steps (each reused when its output exists):
generate the world, run the ETL (local Spark, in process), train every model with Ray Train
(``--num-workers`` CPU workers unless ``--use-gpu``), join the oracle. Prints one table
(train/report.py, as the quickstart's: the metric registry's table metrics, CVR on clicked
rows, the gap to the oracle per AUC; plus epochs run and training seconds) and writes JSON.
Not run by CI.

    python tests/benchmarks/bench_quality.py                      # the "learnable" world
    python tests/benchmarks/bench_quality.py --ads 0 --items 0 --cates 0 --brands 0  # default
        # catalog sizes (2.5 ads per user, Taobao-like long tail)
    python tests/benchmarks/bench_quality.py --ablation --seeds 3   # one table: rnn_mtl
        # variants (ABLATIONS), DIN and the baselines, mean and 95% interval over seeds

The default world has a small catalog (300 ads in 30 categories): each ad is shown ~600 times,
so ad and category effects can be learned from a few minutes of CPU training. The per-user
click bias of the world (std 0.4 on the logit) stays hard to learn at ~30 impressions a user.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from etl.cli import KeyValues, parse
from etl.world import WorldConfig, write_world
from train.driver import connect_ray, run_training
from train.metrics import AUC_METRICS, seed_intervals
from train.models import MODEL_NAMES
from train.report import PREDICTIONS, comparison_table, evaluate_frame
from train.train_config import LOADERS, TrainConfig

SIZE_HELP = {"help": "0: the generator's default"}
_DEFAULTS = TrainConfig()  # the train job's optimizer defaults (train/train_config.py)
# rnn_mtl ablations (train/config.py RNNMTLConfig switches): table name -> params
ABLATIONS = {
    "rnn_mtl": {},
    "rnn_mtl-attention_only": {"gru": "false"},
    "rnn_mtl-no_match_flags": {"match_flags": "false"},
    "rnn_mtl-flags_after_gru": {"match_position": "attention"},
    "rnn_mtl-no_exploration": {"explore_weight": "0"},
}


@dataclass
class BenchQualityConfig:
    data_dir: str = "data/bench/quality"
    users: int = 6000
    days: int = 8
    ads: int = field(default=300, metadata=SIZE_HELP)
    items: int = field(default=3000, metadata=SIZE_HELP)
    cates: int = field(default=30, metadata=SIZE_HELP)
    brands: int = field(default=120, metadata=SIZE_HELP)
    seed: int = field(default=0, metadata={"help": "world seed"})
    max_len: int = 20
    models: str = ",".join(MODEL_NAMES)
    epochs: int = 6
    patience: int = 2
    batch_size: int = _DEFAULTS.batch_size
    lr: float = _DEFAULTS.lr
    seeds: int = field(default=1, metadata={"help": "training seeds per model (mean, 95% CI)"})
    ablation: bool = field(
        default=False, metadata={"help": "rnn_mtl variants (ABLATIONS) beside --models"}
    )
    num_workers: int = 2
    use_gpu: bool = False
    loader: str = field(default="petastorm", metadata={"choices": LOADERS})
    param: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "one model's hyperparameter",
            "option": KeyValues("--param", "param", "MODEL:KEY=VALUE"),
        },
    )
    out: str = "data/bench/bench_quality.json"


def world_config(cfg: BenchQualityConfig) -> WorldConfig:
    sizes = {k: getattr(cfg, k) or None for k in ("ads", "items", "cates", "brands")}
    return WorldConfig(users=cfg.users, days=cfg.days, seed=cfg.seed, **sizes)


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

    return oracle_frame(raw, lake)


def model_params(params: dict[str, str], model: str) -> dict[str, str]:
    """The hyperparameters of ``model`` among ``--param MODEL:KEY=VALUE`` ones."""
    return {k.partition(":")[2]: v for k, v in params.items() if k.partition(":")[0] == model}


def runs(bench: BenchQualityConfig) -> dict[str, tuple[str, dict[str, str]]]:
    """Table name -> (model, params): --models, and with --ablation the rnn_mtl variants."""
    out = {m: (m, model_params(bench.param, m)) for m in bench.models.split(",") if m}
    if bench.ablation:
        out.pop("rnn_mtl", None)
        base = model_params(bench.param, "rnn_mtl")
        out |= {name: ("rnn_mtl", base | params) for name, params in ABLATIONS.items()}
    return out


def train_one(
    bench: BenchQualityConfig, lake: Path, model: str, params: dict[str, str], seed: int
) -> tuple[dict, pd.DataFrame]:
    cfg = TrainConfig(
        lake=str(lake),
        model=model,
        model_params=params,
        seed=seed,
        num_workers=bench.num_workers,
        use_gpu=bench.use_gpu,
        epochs=bench.epochs,
        patience=bench.patience,
        batch_size=bench.batch_size,
        lr=bench.lr,
        loader=bench.loader,
        storage_path=str(Path(bench.data_dir).resolve() / "ray_results"),
        name=f"quality-{model}-s{seed}-{int(time.time())}",
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


def main(argv: list[str] | None = None) -> int:
    bench = parse(BenchQualityConfig, argv, description=__doc__.split("\n")[0])
    data = Path(bench.data_dir).resolve()
    cfg = world_config(bench)
    raw, lake = data / "raw", data / "lake"
    t0 = time.perf_counter()
    ensure_world(cfg, raw)
    etl_seconds = ensure_lake(raw, lake, bench.max_len)
    oracle = oracle_rows(raw, lake)
    print(
        f"world {cfg.sizes()} users {cfg.users}; ETL {etl_seconds:.0f}s; "
        f"{len(oracle)} test rows, {int(oracle.click.sum())} clicks, "
        f"{int(oracle.conversion.sum())} conversions",
        flush=True,
    )
    truth = oracle.rename(columns={p: f"true_{p}" for p in PREDICTIONS})
    rows: dict[str, dict] = {"oracle": evaluate_frame(truth, prefix="true_")}
    info: dict[str, list[dict]] = {}
    per_seed: dict[str, list[dict[str, float]]] = {}
    connect_ray(TrainConfig(num_workers=bench.num_workers, ray_num_cpus=0))
    for name, (model, params) in runs(bench).items():
        seeds = []
        for seed in range(bench.seeds):
            run, preds = train_one(bench, lake, model, params, seed)
            joined = truth.merge(
                preds[["impression_id", *PREDICTIONS]],
                on="impression_id",
                how="inner",
                validate="1:1",
            )
            if len(joined) != len(truth):
                raise SystemExit(f"{name}: {len(joined)} of {len(truth)} oracle rows predicted")
            seeds.append(evaluate_frame(joined))
            info.setdefault(name, []).append(run)
            aucs = {k: round(seeds[-1][k], 4) for k in AUC_METRICS}
            print(f"{name} seed {seed}: {json.dumps(aucs)} {run}", flush=True)
        rows[name] = seed_intervals(seeds)
        per_seed[name] = seeds
    print()
    print(table(rows, info))
    report = {
        "args": asdict(bench),
        "world": cfg.to_dict(),
        "machine": platform.platform(),
        "etl_seconds": round(etl_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "metrics": {
            k: v if k == "oracle" else {m: list(c) for m, c in v.items()} for k, v in rows.items()
        },  # model: metric -> [mean, 95% half-width]
        "per_seed": per_seed,
        "runs": info,
    }
    Path(bench.out).parent.mkdir(parents=True, exist_ok=True)
    Path(bench.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {bench.out}")
    return 0


def table(rows: dict[str, dict], info: dict[str, list[dict]]) -> str:
    """The shared result table (train/report.py: mean ±95% half-width over seeds), with the
    epochs run (per seed) and the mean training seconds."""
    models = {name: m for name, m in rows.items() if name != "oracle"}
    extra = {
        "epochs": {n: "/".join(str(r["epochs_run"]) for r in runs) for n, runs in info.items()},
        "train s": {
            n: f"{sum(r['train_seconds'] for r in runs) / len(runs):.0f}"
            for n, runs in info.items()
        },
    }
    return comparison_table(models, rows["oracle"], extra)


if __name__ == "__main__":
    raise SystemExit(main())
