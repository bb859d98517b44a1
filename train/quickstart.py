"""The main job on the embedded default: world -> ETL (spark-submit) -> Ray Train -> MLflow.

``run_quickstart(cfg)`` generates a synthetic Taobao world (or takes ``cfg.input``), runs
jobs/etl.py through spark-submit, trains and promotes every model of ``cfg.models``, scores the
generator's oracle and returns a ``QuickstartResult``: the comparison table's rows
(train/report.py) and each step's seconds. Each step is reused on a second run when its inputs
are the same (a fingerprint stored next to its output), so a second run neither duplicates data
nor registry versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from etl.cli import carry_over, to_argv
from etl.config import SOURCES, EtlConfig
from etl.project import DATA_DIR, PROJECT_ROOT
from train.report import comparison_table, evaluate_frame
from train.train_config import TrainConfig

log = logging.getLogger("quickstart")  # its INFO records are the terminal's stage lines
detail = logging.getLogger("quickstart.detail")  # the log file's only
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
    result_json: str | None = field(
        default=None,
        metadata={"help": "also write the table, stage times, load and options as JSON here"},
    )

    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    def validate(self) -> None:
        """Checked before anything runs: a --result-json that cannot be written fails now, not
        after the whole chain."""
        if self.result_json and not Path(self.result_json).resolve().parent.is_dir():
            raise ValueError(f"--result-json: no such folder: {Path(self.result_json).parent}")


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
@dataclass
class QuickstartResult:
    """What a run made: the table's rows and oracle, where, and how long each step took."""

    rows: dict[str, Summary]
    oracle: dict[str, float] | None
    lake: Path
    store: str
    seconds: dict[str, float]  # step -> wall seconds: world, etl, train|promote <model>, oracle
    load: tuple[float, float]  # 1-minute load average at the start and at the end

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def report(self) -> str:
        """The table, the timing and the MLflow UI command (what the job prints)."""
        return "\n".join(
            [
                comparison_table(self.rows, self.oracle),
                f"\nfinished in {self.total_seconds:.0f}s; lake {self.lake}",
                f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {self.store} "
                "--host 127.0.0.1 --port 5000",
            ]
        )

    def to_json(self, cfg: QuickstartConfig) -> dict:
        return {
            "command": " ".join(["python jobs/quickstart.py", *to_argv(cfg)]),
            "config": asdict(cfg),
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "total_seconds": round(self.total_seconds, 1),
            "load_1min": {"start": self.load[0], "end": self.load[1]},
            "cpus": os.cpu_count(),
            "rows": {m: {k: list(v) for k, v in r.items()} for m, r in self.rows.items()},
            "oracle": self.oracle,
        }


def run_quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    """Run (or reuse) every step; returns the rows of the table and the time of each step."""
    data = Path(cfg.data_dir).resolve()
    store = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store(data)
    os.environ["MLFLOW_TRACKING_URI"] = store  # the trainings and promotions log there
    seconds: dict[str, float] = {}
    load = os.getloadavg()[0]
    with timed(seconds, "world"):
        raw = raw_input(cfg, data)
    with timed(seconds, "etl"):
        lake = etl_lake(cfg, raw, data)
    rows = train_all(cfg, lake, seconds)
    from train.driver import disconnect_ray

    disconnect_ray()  # done with Ray (an idle driver's Ray once died of a Ray CHECK failure)
    oracle = None
    if (raw / "truth.csv").is_file():
        with timed(seconds, "oracle"):
            oracle = oracle_metrics(raw, lake)
    return QuickstartResult(rows, oracle, lake, store, seconds, (load, os.getloadavg()[0]))


@contextlib.contextmanager
def timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[step] = time.monotonic() - started


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
    log.info("ETL: spark-submit jobs/etl.py into %s", lake)
    detail.info("ETL command: %s", " ".join(command))
    spark_submit(command)
    save_cached(lake / "_quickstart_etl.json", key, {"lake": str(lake)})
    return lake


def train_config(cfg: QuickstartConfig, lake: Path, model: str) -> TrainConfig:
    """The TrainConfig of one model: the train job's defaults but for the quickstart's options
    named as TrainConfig fields (seed, epochs, batch_size, lr, ...); it logs to the store the
    quickstart uses."""
    store = os.environ["MLFLOW_TRACKING_URI"]
    return carry_over(cfg, TrainConfig, lake=str(lake), model=model, tracking_uri=store)


def train_all(
    cfg: QuickstartConfig, lake: Path, seconds: dict[str, float] | None = None
) -> dict[str, Summary]:
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
        plural = "s" if cfg.num_workers != 1 else ""
        log.info("training %s with %d Ray Train worker%s", model, cfg.num_workers, plural)
        steps = seconds if seconds is not None else {}
        with timed(steps, f"train {model}"):
            result = train_and_log(train)
        with timed(steps, f"promote {model}"):
            decision = promote(model)
        log.info("promotion of %s: %s", model, decision.reason)
        rows[model] = result.intervals
        save_cached(cache, key, {"summary": {k: list(v) for k, v in rows[model].items()}})
    return rows


def oracle_metrics(raw: Path, lake: Path) -> dict[str, float]:
    """The metrics of the generator's true probabilities on the lake's test rows (reused when
    the raw files and the lake's samples version are the same)."""
    from etl.spec import FeatureSpec

    key = fingerprint({"input": input_stamp(raw), "samples": FeatureSpec.load(lake).tables})
    cached = load_cached(lake / "_quickstart_oracle.json", key)
    if cached is not None:
        log.info("reusing the oracle's metrics (same input and lake)")
        return cached
    from etl.oracle import oracle_frame

    log.info("scoring the generator's true probabilities on the test rows (oracle)")
    metrics = evaluate_frame(oracle_frame(raw, lake))
    save_cached(lake / "_quickstart_oracle.json", key, metrics)
    return metrics
