"""The main job on the embedded default: world -> ETL (spark-submit) -> Ray Train -> MLflow.

    python jobs/quickstart.py                       # synthetic Taobao world of default size
    python jobs/quickstart.py --source user_behavior --input DIR   # your copy of public data

A second run reuses the world, the lake (same input and options) and the trained models (same
data version and training options), so it neither duplicates data nor registry versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.config import SOURCES  # noqa: E402

ROOT = _JOBS.parent
log = logging.getLogger("quickstart")
METRICS = ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctcvr_logloss")


def fingerprint(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def load_cached(path: Path, key: str) -> dict | None:
    """The stored result when ``path`` records the same fingerprint, else None."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return stored.get("value") if stored.get("key") == key else None


def save_cached(path: Path, key: str, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}))
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=SOURCES, default="taobao_ad")
    p.add_argument("--input", default=None, help="raw data folder (default: a generated world)")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="worlds, lakes, MLflow store")
    p.add_argument("--users", type=int, default=3000, help="generated world: users")
    p.add_argument("--days", type=int, default=8, help="generated world: impression days")
    p.add_argument("--seed", type=int, default=0, help="world and training seed")
    p.add_argument("--models", default="deepfm,xdeepfm,mmoe,esmm,rnn_mtl")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per model (mean, std)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512, help="rows per step and worker")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (all models)")
    p.add_argument("--max-len", type=int, default=20, help="history length L")
    p.add_argument("--tracking-uri", default=None, help="default: sqlite under --data-dir")
    p.add_argument("--experiment", default="isrec-quickstart")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = Path(args.data_dir).resolve()
    os.environ.setdefault("MLFLOW_TRACKING_URI", args.tracking_uri or _local_store(data))
    started = time.time()
    raw = _raw_input(args, data)
    lake = _etl(args, raw, data)
    rows = _train_all(args, lake)
    oracle = _oracle(raw, lake) if (raw / "truth.csv").is_file() else None
    print(comparison_table(rows, oracle))
    print(f"\nfinished in {time.time() - started:.0f}s; lake {lake}")
    print(
        "MLflow UI: .venv/bin/mlflow ui --backend-store-uri "
        f"{os.environ['MLFLOW_TRACKING_URI']} --host 127.0.0.1 --port 5000"
    )
    return 0


def _local_store(data: Path) -> str:
    (data / "mlflow").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"


def _raw_input(args: argparse.Namespace, data: Path) -> Path:
    if args.input:
        path = Path(args.input).resolve()
        if not path.exists():
            raise SystemExit(f"error: input not found: {path}")
        return path
    if args.source != "taobao_ad":
        raise SystemExit(f"error: --source {args.source} needs --input (worlds are taobao_ad)")
    from etl.world import WorldConfig, write_world

    out = data / "raw" / f"world-u{args.users}-d{args.days}-s{args.seed}"
    if (out / "world.json").is_file():
        log.info("reusing generated world %s", out)
        return out
    log.info("generating a synthetic Taobao world in %s", out)
    write_world(WorldConfig(users=args.users, days=args.days, seed=args.seed), out)
    return out


def _etl(args: argparse.Namespace, raw: Path, data: Path) -> Path:
    lake = data / "lake" / raw.name
    etl_args = [
        "--source",
        args.source,
        "--input",
        str(raw),
        "--output",
        str(lake),
        "--max-len",
        str(args.max_len),
    ]
    key = fingerprint({"etl": etl_args, "input": _input_stamp(raw)})
    if load_cached(lake / "_quickstart_etl.json", key) is not None:
        log.info("reusing lake %s (same input and options)", lake)
        return lake
    from etl.spark import DELTA_PACKAGE, delta_jar_paths, delta_jars_present

    jars = (
        ["--jars", ",".join(str(p) for p in delta_jar_paths())]
        if delta_jars_present()
        else ["--packages", DELTA_PACKAGE]
    )
    venv_bin = Path(sys.executable).parent
    cmd = [
        str(venv_bin / "spark-submit"),
        "--master",
        "local[2]",
        "--driver-memory",
        "4g",
        *jars,
        str(ROOT / "jobs" / "etl.py"),
        *etl_args,
    ]
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
    }
    log.info("ETL: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env)
    save_cached(lake / "_quickstart_etl.json", key, {"lake": str(lake)})
    return lake


def _input_stamp(raw: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in ([raw] if raw.is_file() else raw.iterdir()) if p.is_file())
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def _train_all(args: argparse.Namespace, lake: Path) -> dict[str, dict[str, tuple[float, float]]]:
    from etl.spec import FeatureSpec
    from train.registry import promote
    from train.runner import train_and_log
    from train.train_config import TrainConfig

    spec = FeatureSpec.load(lake)
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        cfg = TrainConfig(
            lake=str(lake),
            model=model,
            num_workers=args.num_workers,
            epochs=args.epochs,
            seed=args.seed,
            seeds=args.seeds,
            batch_size=args.batch_size,
            lr=args.lr,
        )
        key = fingerprint(
            {
                "train": cfg.to_dict(),
                "samples": spec.tables.get("samples"),
                "tracking": os.environ["MLFLOW_TRACKING_URI"],
            }
        )
        cache = lake / f"_quickstart_{model}.json"
        cached = load_cached(cache, key)
        if cached is not None:
            log.info("reusing trained %s (same data version and options)", model)
            rows[model] = {k: tuple(v) for k, v in cached["summary"].items()}
            continue
        log.info("training %s with %d Ray Train workers", model, args.num_workers)
        result = train_and_log(cfg)
        decision = promote(model)
        log.info("promotion of %s: %s", model, decision.reason)
        rows[model] = result.summary
        save_cached(cache, key, {"summary": {k: list(v) for k, v in result.summary.items()}})
    return rows


def _oracle(raw: Path, lake: Path) -> dict[str, float]:
    from etl.oracle import oracle_frame
    from etl.spark import get_spark
    from train.metrics import evaluate

    frame = oracle_frame(get_spark("isrec-oracle", master="local[2]"), raw, lake)
    labels = {c: frame[c].to_numpy() for c in ("click", "conversion", "n_future_views")}
    preds = {c: frame[c].to_numpy() for c in ("pctr", "pcvr", "pctcvr", "expected_views")}
    return evaluate(labels, preds, frame["user_key"].to_numpy())


def comparison_table(
    rows: dict[str, dict[str, tuple[float, float]]], oracle: dict[str, float] | None
) -> str:
    """Mean ± std per model and metric; with an oracle, its row and each model's gap to it."""
    gap_metrics = ("ctr_auc", "cvr_auc", "ctcvr_auc") if oracle else ()
    header = f"{'model':<9}" + "".join(f"{m:>18}" for m in METRICS)
    header += "".join(f"{'gap ' + m:>16}" for m in gap_metrics)
    lines = [header, "-" * len(header)]
    for model, summary in rows.items():
        line = f"{model:<9}"
        for m in METRICS:
            mean, std = summary.get(m, (float("nan"), 0.0))
            line += f"{mean:>11.4f} ±{std:>6.4f}"
        for m in gap_metrics:
            line += f"{oracle[m] - summary.get(m, (float('nan'), 0.0))[0]:>16.4f}"
        lines.append(line)
    if oracle:
        lines.append(
            f"{'oracle':<9}" + "".join(f"{oracle.get(m, float('nan')):>18.4f}" for m in METRICS)
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
