"""The main job on the embedded default: world -> ETL (spark-submit) -> Ray Train -> MLflow.

``run_quickstart(cfg)`` generates a synthetic Taobao world (or takes ``cfg.input``), runs
jobs/etl.py through spark-submit, trains and promotes every model of ``cfg.models`` and returns
the comparison table (train/report.py) with the generator's oracle. Each step is reused on a
second run when its inputs are the same (a fingerprint stored next to its output), so a second
run neither duplicates data nor registry versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from etl.cli import carry_over, to_argv
from etl.config import SOURCES, EtlConfig
from etl.project import DATA_DIR, PROJECT_ROOT
from train.report import comparison_table, evaluate_frame
from train.train_config import TrainConfig

log = logging.getLogger("quickstart")
Summary = dict[str, tuple[float, float]]  # metric -> (mean, 95% half-width) over seeds


@dataclass
class QuickstartConfig:
    """Options of jobs/quickstart.py; those named as TrainConfig fields go to every training.

    The training options default to the train job's (train/train_config.py: batch 256 a
    worker, lr 3e-3, early stopping on valid log loss) but for two, and this is the one place
    that says why: the quickstart is a demo that must run the whole chain for all six models in
    minutes on 2 CPU workers, on a small synthetic world (3000 users; a generated world
    defaults to 5000):
    - epochs 3 (job: 5): six models x seeds train one after another; the small world's models
      reach their best valid log loss after 1-3 epochs (README, "Training defaults").
    - max_len 20 (ETL: 50): shorter histories make the ETL and the sequence models faster; the
      small world's users have few behaviors before each impression.
    - experiment isrec-quickstart: demo runs apart from the train job's experiment (isrec).
    """

    source: str = field(default="taobao_ad", metadata={"help": "raw format", "choices": SOURCES})
    input: str | None = field(
        default=None, metadata={"help": "raw data folder (default: a generated world)"}
    )
    data_dir: str = field(
        default=str(DATA_DIR), metadata={"help": "worlds, lakes and the MLflow store"}
    )
    users: int = field(default=3000, metadata={"help": "generated world: users"})
    days: int = field(default=8, metadata={"help": "generated world: impression days"})
    seed: int = field(default=0, metadata={"help": "world and training seed"})
    models: str = field(
        default="deepfm,xdeepfm,mmoe,esmm,din,rnn_mtl", metadata={"help": "comma-separated models"}
    )
    epochs: int = field(default=3, metadata={"help": "maximum epochs per model"})
    seeds: int = field(
        default=1, metadata={"help": "training seeds per model (mean, 95% interval)"}
    )
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers"})
    batch_size: int = field(
        default=TrainConfig.batch_size, metadata={"help": "rows per step and worker"}
    )
    lr: float = field(default=TrainConfig.lr, metadata={"help": "Adam learning rate (all models)"})
    max_len: int = field(default=20, metadata={"help": "history length L (ETL)"})
    tracking_uri: str | None = field(
        default=None,
        metadata={
            "help": "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite under --data-dir)"
        },
    )
    experiment: str = field(default="isrec-quickstart", metadata={"help": "MLflow experiment"})

    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]


# --- reuse --------------------------------------------------------------------------------------
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


def input_stamp(raw: Path) -> list[tuple[str, int, int]]:
    """Name, size and mtime of each raw file: what decides whether a lake is still current."""
    files = sorted(p for p in ([raw] if raw.is_file() else raw.iterdir()) if p.is_file())
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


# --- the chain ----------------------------------------------------------------------------------
def run_quickstart(cfg: QuickstartConfig) -> str:
    """Run (or reuse) every step; returns the report: table, timing, the MLflow UI command."""
    data = Path(cfg.data_dir).resolve()
    store = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store(data)
    os.environ["MLFLOW_TRACKING_URI"] = store  # the trainings and promotions log there
    started = time.time()
    raw = raw_input(cfg, data)
    lake = etl_lake(cfg, raw, data)
    rows = train_all(cfg, lake)
    oracle = oracle_metrics(raw, lake) if (raw / "truth.csv").is_file() else None
    return "\n".join(
        [
            comparison_table(rows, oracle),
            f"\nfinished in {time.time() - started:.0f}s; lake {lake}",
            f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {store} --host 127.0.0.1 "
            "--port 5000",
        ]
    )


def local_store(data: Path) -> str:
    (data / "mlflow").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"


def raw_input(cfg: QuickstartConfig, data: Path) -> Path:
    """``cfg.input``, else a generated world under ``data/raw`` (reused when present)."""
    if cfg.input:
        path = Path(cfg.input).resolve()
        if not path.exists():
            raise SystemExit(f"error: input not found: {path}")
        return path
    if cfg.source != "taobao_ad":
        raise SystemExit(f"error: --source {cfg.source} needs --input (worlds are taobao_ad)")
    from etl.world import WorldConfig, write_world

    out = data / "raw" / f"world-u{cfg.users}-d{cfg.days}-s{cfg.seed}"
    if (out / "world.json").is_file():
        log.info("reusing generated world %s", out)
        return out
    log.info("generating a synthetic Taobao world in %s", out)
    write_world(carry_over(cfg, WorldConfig), out)  # users, days, seed
    return out


def etl_lake(cfg: QuickstartConfig, raw: Path, data: Path) -> Path:
    """The lake of ``raw``: spark-submit jobs/etl.py unless the same input and options made it."""
    lake = data / "lake" / raw.name
    etl = EtlConfig(source=cfg.source, input=str(raw), output=str(lake), max_len=cfg.max_len)
    etl_args = to_argv(etl, ["source", "input", "output", "max_len"])
    key = fingerprint({"etl": etl_args, "input": input_stamp(raw)})
    if load_cached(lake / "_quickstart_etl.json", key) is not None:
        log.info("reusing lake %s (same input and options)", lake)
        return lake
    from etl.submit import spark_submit, submit_command

    command = submit_command(PROJECT_ROOT / "jobs" / "etl.py", etl_args)
    log.info("ETL: %s", " ".join(command))
    spark_submit(command)
    save_cached(lake / "_quickstart_etl.json", key, {"lake": str(lake)})
    return lake


def train_config(cfg: QuickstartConfig, lake: Path, model: str) -> TrainConfig:
    """The TrainConfig of one model: the train job's defaults but for the quickstart's options
    named as TrainConfig fields (seed, epochs, batch_size, lr, ...); it logs to the store the
    quickstart uses."""
    store = os.environ["MLFLOW_TRACKING_URI"]
    return carry_over(cfg, TrainConfig, lake=str(lake), model=model, tracking_uri=store)


def train_all(cfg: QuickstartConfig, lake: Path) -> dict[str, Summary]:
    """Train, register and promote each model, unless the same data and options trained it."""
    from etl.spec import FeatureSpec
    from train.driver import train_and_log
    from train.registry import promote

    spec = FeatureSpec.load(lake)
    rows: dict[str, Summary] = {}
    for model in cfg.model_names():
        train = train_config(cfg, lake, model)
        key = fingerprint(
            {
                "train": train.to_dict(),
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
        log.info("training %s with %d Ray Train workers", model, cfg.num_workers)
        result = train_and_log(train)
        decision = promote(model)
        log.info("promotion of %s: %s", model, decision.reason)
        rows[model] = result.intervals
        save_cached(cache, key, {"summary": {k: list(v) for k, v in rows[model].items()}})
    return rows


def oracle_metrics(raw: Path, lake: Path) -> dict[str, float]:
    """The metrics of the generator's true probabilities on the lake's test rows."""
    from etl.oracle import oracle_frame
    from etl.spark import get_spark

    return evaluate_frame(oracle_frame(get_spark("isrec-oracle", master="local[2]"), raw, lake))
