"""Peers on the same rows: torch-rechub (ESMM, MMoE) and DeepCTR-Torch (DeepFM, xDeepFM, DIN)
beside the project's models, scored by the project's metric code, plus training throughput.

Steps: (1) a lake: ``--lake`` or a generated world run through the ETL (bench_quality.py's
steps, reused when done); (2) export the train/valid/test rows of the lake's Delta ``samples``
snapshot (the version the feature spec records, through etl.delta_log.snapshot_files and
pyarrow) to DATA_DIR/export/*.npz; (3) the peer virtual environment
tests/benchmarks/peers/.venv (created on first use: the pinned peers/requirements.txt, torch and
the other dependencies shared read-only from the project's .venv); (4) peers/run_peers.py trains
every peer there with its library's own training loop on one thread and writes predictions per
epoch; (5) the project's models train through train.driver.run_training (Ray Train, the loader,
``--num-workers`` ranks of one CPU each) with the project's defaults; (6) every run is scored
with train.metrics.evaluate (CVR AUC on clicked rows for all); a peer's reported epoch is the one
the project's early stopping would keep (best valid ``early_stop_metric``, same patience).

Throughput: training samples/s per core, median over the epochs after the first; the project's
counts Ray Train and the loader (all ranks / ranks), a peer's is its library's loop on one
thread; "model only" is the peer's model on in-memory batches (no loader). "e2e" divides every
epoch's training rows by the whole run (Ray start, evaluation, checkpoints; the peer's
prediction passes). Not run by CI.

    python tests/benchmarks/peers.py                       # 2,000-user world, defaults
    python tests/benchmarks/peers.py --lake LAKE --seeds 3 --out data/bench/peers.json
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl import storage
from etl.cli import parse
from etl.delta_log import snapshot_files
from etl.spec import FeatureSpec
from train.config import MODEL_CONFIGS, resolve_config
from train.metrics import TABLE_METRICS, evaluate, is_better, t_interval
from train.models import MODEL_NAMES
from train.report import format_cell
from train.train_config import LOADERS, TrainConfig

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / "peers"
PEER_VENV = PEER_DIR / ".venv"
REQUIREMENTS = PEER_DIR / "requirements.txt"
SPLITS = ("train", "valid", "test")
PEERS = {  # peer -> (library, the project model of the same architecture)
    "deepctr_deepfm": ("deepctr-torch", "deepfm"),
    "deepctr_xdeepfm": ("deepctr-torch", "xdeepfm"),
    "deepctr_din": ("deepctr-torch", "din"),
    "rechub_esmm": ("torch-rechub", "esmm"),
    "rechub_mmoe": ("torch-rechub", "mmoe"),
}
DIN_FALLBACK = {"dnn_hidden": [128, 64], "attention_hidden": [64, 16]}  # without a project DIN
_TRAIN = TrainConfig()


@dataclass
class PeersConfig:
    lake: str = field(default="", metadata={"help": "existing lake (default: generate a world)"})
    data_dir: str = "data/bench/peers"
    users: int = 2000
    days: int = 8
    ads: int = 300
    items: int = 3000
    cates: int = 30
    brands: int = 120
    world_seed: int = 0
    max_len: int = 20
    models: str = field(default=",".join(MODEL_NAMES), metadata={"help": "project models"})
    peers: str = ",".join(PEERS)
    seeds: int = field(default=1, metadata={"help": "seeds 0..N-1 for every run"})
    epochs: int = _TRAIN.epochs
    patience: int = _TRAIN.patience
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    num_workers: int = field(default=2, metadata={"help": "Ray Train ranks (one CPU each)"})
    loader: str = field(default=_TRAIN.loader, metadata={"choices": LOADERS})
    peer_timeout: int = field(default=3600, metadata={"help": "seconds for all peer runs"})
    out: str = "tests/benchmarks/peers.json"

    def validate(self) -> None:
        unknown = [m for m in _names(self.models) if m not in MODEL_NAMES]
        unknown += [p for p in _names(self.peers) if p not in PEERS]
        if unknown:
            raise ValueError(f"unknown model or peer {unknown[0]!r}: models {list(MODEL_NAMES)}, "
                             f"peers {list(PEERS)}")  # fmt: skip
        if self.seeds < 1 or self.epochs < 1:
            raise ValueError("--seeds and --epochs must be >= 1")


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


# --- export -------------------------------------------------------------------------------------
def read_split(lake: str | Path, split: str, spec: FeatureSpec) -> pa.Table:
    """The ``spec.columns()`` of ``split`` in the samples version the spec records, sorted by
    impression_id (the version the spec records, whatever the table committed later)."""
    parts = []
    for uri in snapshot_files(lake, split, spec):
        filesystem, path = storage.filesystem(uri)
        parts.append(pq.read_table(path, columns=spec.columns(), filesystem=filesystem))
    table = pa.concat_tables(parts) if parts else pa.table({})
    return table.sort_by("impression_id")


def to_numpy(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A column as numpy; list columns as (rows, width) (every list must hold ``width``)."""
    array = column.combine_chunks()
    if not pa.types.is_list(array.type):
        return array.to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != width).any():
        raise ValueError(f"a sequence column holds lists not of length max_len={width}")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def export_snapshot(lake: str | Path, out: Path) -> dict:
    """Write out/<split>.npz (one array per spec column) and out/export.json; returns the
    latter (spec fields, shared vocab sizes, the samples version, rows per split)."""
    spec = FeatureSpec.load(lake)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split in SPLITS:
        table = read_split(lake, split, spec)
        arrays = {name: to_numpy(table.column(name), spec.max_len) for name in spec.columns()}
        np.savez(out / f"{split}.npz", **arrays)
        rows[split] = table.num_rows
    meta = {
        "lake": str(lake),
        "samples_version": spec.tables.get("samples"),
        "fields": [asdict(f) for f in spec.fields],
        "vocab_sizes": spec.vocab_sizes,
        "max_len": spec.max_len,
        "length_field": spec.length_field,
        "labels": spec.labels,
        "key_fields": spec.key_fields,
        "rows": rows,
    }
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    return meta


# --- the peer environment and runs --------------------------------------------------------------
def ensure_peer_venv() -> Path:
    """tests/benchmarks/peers/.venv with the pinned peers; the project's site-packages are on
    its path (a .pth file) so it reuses the project's torch. Rebuilt when the pins change."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "requirements.installed"
    wanted = REQUIREMENTS.read_text()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(PEER_VENV)],
                   check=True)  # fmt: skip
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = PEER_VENV / "lib" / version / "site-packages"
    (site / "_isrec_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
    subprocess.run([*install, "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def peer_params(peer: str, bench: PeersConfig) -> dict:
    """The project's settings of the same architecture (its defaults, as the train job has them)."""
    arch = PEERS[peer][1]
    params = resolve_config(arch).to_dict() if arch in MODEL_CONFIGS else dict(DIN_FALLBACK)
    for key, value in DIN_FALLBACK.items():
        params.setdefault(key, value)
    base = resolve_config("deepfm").to_dict()
    for key in ("embedding_dim", "dropout", "activation", "dense_log1p"):
        params.setdefault(key, base[key])
    return params | {
        "epochs": bench.epochs,
        "batch_size": bench.batch_size,
        "eval_batch_size": _TRAIN.eval_batch_size,
        "lr": bench.lr,
    }


def run_peers(bench: PeersConfig, export: Path, out: Path) -> dict[str, list[dict]]:
    """Every peer and seed in the peer venv; per peer a list (per seed) of timing + epochs."""
    peers = _names(bench.peers)
    if not peers:
        return {}
    python = ensure_peer_venv()
    config = {
        "peers": peers,
        "seeds": list(range(bench.seeds)),
        "threads": 1,
        "params": {p: peer_params(p, bench) for p in peers},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DO_NOT_TRACK": "1"}
    command = [str(python), str(PEER_DIR / "run_peers.py"), "--export", str(export)]
    command += ["--out", str(out), "--config", str(out / "config.json")]
    log = out / "run_peers.log"
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                              timeout=bench.peer_timeout, cwd=PEER_DIR)  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"peer runs failed (exit {done.returncode}); end of {log}:\n{tail}")
    return {
        p: [json.loads((out / p / f"seed{s}" / "timing.json").read_text()) for s in config["seeds"]]
        for p in peers
    }


def score_peer(peer_out: Path, epochs: int, data: dict, bench: PeersConfig) -> dict:
    """Valid metrics per epoch -> the epoch early stopping keeps -> its test metrics."""
    metric = _TRAIN.early_stop_metric
    best, best_epoch, bad, run = None, 0, 0, 0
    for epoch in range(epochs):
        run = epoch + 1
        valid = score(data["valid"], dict(np.load(peer_out / f"epoch{epoch}_valid.npz")))
        if is_better(metric, valid[metric], best):
            best, best_epoch, bad = valid[metric], epoch, 0
        else:
            bad += 1
        if 0 < bench.patience <= bad:
            break
    test = score(data["test"], dict(np.load(peer_out / f"epoch{best_epoch}_test.npz")))
    return {"test": test, "best_epoch": best_epoch, "epochs_run": run}


def score(rows: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> dict[str, float]:
    labels = {k: rows[k] for k in ("click", "conversion")}
    return evaluate(labels, preds, rows["user_key"])


# --- the project's runs -------------------------------------------------------------------------
def run_project(bench: PeersConfig, lake: str, model: str, seed: int, test_ids: np.ndarray) -> dict:
    from train.driver import run_training

    cfg = TrainConfig(
        lake=lake,
        model=model,
        seed=seed,
        num_workers=bench.num_workers,
        epochs=bench.epochs,
        patience=bench.patience,
        batch_size=bench.batch_size,
        lr=bench.lr,
        loader=bench.loader,
        storage_path=str(Path(bench.data_dir).resolve() / "ray_results"),
        name=f"peers-{model}-s{seed}-{int(time.time())}",
        log_every=0,
        track=False,
        register=False,
    )
    started = time.perf_counter()
    result = run_training(cfg)
    seconds = time.perf_counter() - started
    preds = pd.read_parquet(result.predictions_path).sort_values("impression_id")
    if not np.array_equal(preds["impression_id"].to_numpy(), test_ids):
        raise SystemExit(f"{model}: its test predictions are not the exported test rows")
    history = result.history
    rates = [h["train_samples_per_second"] for h in history]
    rows = sum(h["train_rows"] for h in history)
    labels = {k: preds[k].to_numpy() for k in ("click", "conversion")}
    test = evaluate(labels, {k: preds[k].to_numpy() for k in ("pctr", "pcvr", "pctcvr")},
                    preds["user_key"].to_numpy())  # fmt: skip
    return {
        "test": test,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "per_core": _steady(rates) / bench.num_workers,
        "e2e_per_core": rows / seconds / bench.num_workers,
        "run_seconds": seconds,
    }


def _steady(rates: list[float]) -> float:
    """Median over the epochs after the first (the first pays start-up), or the only one."""
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def peer_runs(timings: list[dict], peer: str, out: Path, data: dict, bench: PeersConfig) -> list:
    runs = []
    for t in timings:
        scored = score_peer(out / peer / f"seed{t['seed']}", len(t["epochs"]), data, bench)
        rates = [e["train_rows"] / e["train_seconds"] for e in t["epochs"]]
        rows = sum(e["train_rows"] for e in t["epochs"])
        runs.append(scored | {
            "per_core": _steady(rates) / t["threads"],
            "e2e_per_core": rows / t["wall_seconds"] / t["threads"],
            "model_only_per_core": t["model_only_samples_per_s"] / t["threads"],
            "run_seconds": t["wall_seconds"],
        })  # fmt: skip
    return runs


# --- tables -------------------------------------------------------------------------------------
def summary(runs: list[dict]) -> dict:
    """Test metrics: the value for one seed, (mean, 95% t half-width) over seeds; speeds: means."""
    names = list(dict.fromkeys(k for r in runs for k in r["test"]))
    if len(runs) == 1:
        cells = dict(runs[0]["test"])
    else:
        cells = {k: t_interval([r["test"].get(k, math.nan) for r in runs]) for k in names}
    keys = ("per_core", "e2e_per_core", "model_only_per_core", "run_seconds")
    speeds = {k: statistics.mean(r[k] for r in runs) for k in keys if k in runs[0]}
    epochs = "/".join(f"{r['best_epoch']}:{r['epochs_run']}" for r in runs)
    return {"metrics": cells, "epochs": epochs, **speeds}


def quality_table(rows: dict[str, dict]) -> str:
    header = f"{'model':<16}{'library':<14}" + "".join(f"{m:>18}" for m in TABLE_METRICS)
    header += f"{'best:run':>10}{'samples/s/core':>16}"
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        line = f"{name:<16}{row['library']:<14}"
        line += "".join(format_cell(row["metrics"].get(m)) for m in TABLE_METRICS)
        lines.append(line + f"{row['epochs']:>10}{row.get('per_core', 0):>16,.0f}")
    return "\n".join(lines)


def speed_table(rows: dict[str, dict]) -> tuple[str, list[dict]]:
    """Project vs peer of the same architecture: samples/s per core and their ratio."""
    header = (f"{'architecture':<13}{'peer':<17}{'project/core':>13}{'peer/core':>11}"
              f"{'ratio':>7}{'peer model only':>16}{'e2e ratio':>10}")  # fmt: skip
    lines, ratios = [header, "-" * len(header)], []
    for peer, (_, arch) in PEERS.items():
        if peer not in rows or arch not in rows:
            continue
        mine, theirs = rows[arch], rows[peer]
        ratio = mine["per_core"] / theirs["per_core"]
        e2e = mine["e2e_per_core"] / theirs["e2e_per_core"]
        ratios.append({"architecture": arch, "peer": peer, "ratio": ratio, "e2e_ratio": e2e})
        lines.append(
            f"{arch:<13}{peer:<17}{mine['per_core']:>13,.0f}{theirs['per_core']:>11,.0f}"
            f"{ratio:>7.2f}{theirs['model_only_per_core']:>16,.0f}{e2e:>10.2f}"
        )
    return "\n".join(lines), ratios


# --- main ---------------------------------------------------------------------------------------
def ensure_lake(bench: PeersConfig) -> str:
    if bench.lake:
        return bench.lake
    from bench_quality import ensure_lake as etl_lake  # sibling script (its folder is on sys.path)
    from bench_quality import ensure_world

    from etl.world import WorldConfig

    data = Path(bench.data_dir).resolve()
    sizes = {k: getattr(bench, k) for k in ("ads", "items", "cates", "brands")}
    world = WorldConfig(users=bench.users, days=bench.days, seed=bench.world_seed, **sizes)
    ensure_world(world, data / "raw")
    etl_lake(data / "raw", data / "lake", bench.max_len)
    return str(data / "lake")


def main(argv: list[str] | None = None) -> int:
    bench = parse(PeersConfig, argv, description=__doc__.split("\n")[0])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started, load_start = time.perf_counter(), os.getloadavg()
    lake = ensure_lake(bench)
    data_dir = Path(bench.data_dir).resolve()
    meta = export_snapshot(lake, data_dir / "export")
    data = {s: dict(np.load(data_dir / "export" / f"{s}.npz")) for s in SPLITS}
    print(f"lake {lake} samples v{meta['samples_version']}: rows {meta['rows']}", flush=True)
    timings = run_peers(bench, data_dir / "export", data_dir / "peer_runs")
    rows = {}
    for peer, t in timings.items():
        rows[peer] = {
            "library": PEERS[peer][0],
            **summary(peer_runs(t, peer, data_dir / "peer_runs", data, bench)),
        }
        print(f"{peer}: {rows[peer]}", flush=True)
    test_ids = data["test"]["impression_id"]
    for model in _names(bench.models):
        runs = [run_project(bench, lake, model, s, test_ids) for s in range(bench.seeds)]
        rows[model] = {"library": "isrec", **summary(runs)}
        print(f"{model}: {rows[model]}", flush=True)
    speeds, ratios = speed_table(rows)
    print()
    print(quality_table(rows))
    print()
    print(speeds)
    report = {
        "args": asdict(bench),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "export": meta,
        "project_models_present": list(MODEL_NAMES),
        "peer_versions": {t[0]["library"]: t[0].get("version") for t in timings.values()},
        "rows": rows,
        "throughput_ratios": ratios,
    }
    Path(bench.out).parent.mkdir(parents=True, exist_ok=True)
    Path(bench.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {bench.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
