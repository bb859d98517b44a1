"""Ray Train loop: DDP training over Delta snapshots, per-epoch checkpoints, resume, test metrics.

Driver side: ``run_training(cfg)`` runs the pre-flight checks (``ConfigError``, before Ray
starts), joins or starts Ray, runs a ``TorchTrainer`` and returns a ``TrainResult``;
``run_seeds(cfg)`` repeats that for ``cfg.seeds`` seeds and adds mean/std.

Worker side: ``train_loop_per_worker(config)``, Ray Train style. Each rank reads its shard of the
snapshot files the driver resolved (train/data.py); every rank runs the same number of steps
(MIN over shards, from parquet footers). After each epoch: validation on the full valid split
(predictions of every rank gathered to rank 0, metrics computed once over the union), early
stopping on ``valid_<early_stop_metric>``, a checkpoint (model, optimizer, epoch, data
position, best metric, history) through ``ray.train.report``. A restarted worker group resumes
from the latest checkpoint at the next epoch; the data order of an epoch depends only on
(seed, epoch), so a resumed run reads what an uninterrupted one would. At the end the best
weights predict the full test split; rank 0 gathers every rank's predictions, checks that each
impression appears exactly once, computes the metrics and writes the predictions parquet.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn

from etl import storage
from etl.spec import FeatureSpec
from train.data import (
    MANIFEST_DIR,
    SAMPLES,
    ShardPlan,
    SnapshotError,
    batch_columns,
    make_loader,
    plan_shards,
    snapshot_files,
    steps_per_epoch,
)
from train.train_config import LOADERS, TrainConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PRED_COLUMNS = ("pctr", "pcvr", "pctcvr", "expected_views")
MODEL_FILE, OPTIMIZER_FILE, BEST_FILE = "model.pt", "optimizer.pt", "best_weights.pt"
STATE_FILE, SPEC_FILE, MODEL_INFO_FILE = "state.json", "feature_spec.json", "model.json"
TEST_METRICS_FILE = "test_metrics.json"


class ConfigError(ValueError):
    """A run that cannot start; the message is one line for the user."""


# --- results ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """One finished run (one seed): everything a tracker needs to log it."""

    test_metrics: dict[str, float]
    history: list[dict[str, float]]  # one row per epoch: epoch, train_loss, valid_<metric>...
    best_checkpoint_path: str  # final Ray checkpoint: model.pt = the best epoch's weights
    predictions_path: str | None  # parquet: keys, labels and predictions of every test row
    config: TrainConfig
    run_path: str  # Ray Train run folder (per-epoch checkpoints)
    best_epoch: int | None  # epoch (0-based) of the best valid metric (last epoch w/o valid)
    resumed_from_epoch: int | None  # first epoch of the last attempt when it resumed
    epochs_run: int
    stopped_early: bool
    samples_version: int | None  # Delta version of LAKE/samples read
    lake: str


@dataclass
class SeedsResult:
    results: list[TrainResult]
    summary: dict[str, tuple[float, float]]  # metric -> (mean, std) over seeds

    def to_json(self) -> dict[str, Any]:
        """The final line of jobs/train.py: metrics (mean/std with several seeds) and runs."""
        if len(self.results) == 1:
            metrics: dict[str, Any] = _finite(self.results[0].test_metrics)
        else:
            metrics = {k: {"mean": _num(m), "std": _num(s)} for k, (m, s) in self.summary.items()}
        first = self.results[0]
        return {
            "model": first.config.model,
            "seeds": [r.config.seed for r in self.results],
            "metrics": metrics,
            "runs": [
                {
                    "seed": r.config.seed,
                    "test_metrics": _finite(r.test_metrics),
                    "best_epoch": r.best_epoch,
                    "best_checkpoint": r.best_checkpoint_path,
                    "predictions": r.predictions_path,
                    "run_path": r.run_path,
                }
                for r in self.results
            ],
        }


def _num(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in metrics.items()}


# --- pre-flight (driver, before Ray) -------------------------------------------------------------
@dataclass
class Prepared:
    spec: FeatureSpec
    files: dict[str, list[str]]  # split -> snapshot file URIs
    name: str
    predictions_path: str


def preflight(cfg: TrainConfig) -> Prepared:
    """Every check that needs no Ray; raises ConfigError with one line."""
    _check_numbers(cfg)
    lake = _check_lake(cfg.lake)
    spec = _load_spec(lake)
    _check_model(cfg, spec)
    files = _snapshot(lake, spec)
    name = cfg.name or f"{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}-s{cfg.seed}"
    predictions = storage.join(cfg.storage_path, name, "predictions", "test.parquet")
    return Prepared(spec, files, name, predictions)


def _check_numbers(cfg: TrainConfig) -> None:
    positive = ("num_workers", "epochs", "batch_size", "eval_batch_size", "seeds", "shuffle_buffer")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.loader not in LOADERS:
        raise ConfigError(f"unknown loader {cfg.loader!r}; choose one of {list(LOADERS)}")
    if cfg.patience < 0 or cfg.max_failures < 0 or cfg.max_steps_per_epoch < 0:
        raise ConfigError("--patience, --max-failures and --max-steps-per-epoch must be >= 0")


def _check_lake(lake: str) -> str:
    """The lake location (folder or object-store URI) if it holds a samples table."""
    if not lake:
        raise ConfigError("no lake given: pass --lake <folder or URI written by jobs/etl.py>")
    try:
        found = storage.is_dir(lake)
        has_samples = found and storage.is_dir(storage.join(lake, SAMPLES, "_delta_log"))
    except OSError as exc:  # unreachable store, bad credentials, no such bucket
        raise ConfigError(f"cannot read lake {lake}: {exc}".splitlines()[0]) from None
    if not found:
        raise ConfigError(f"lake {lake} does not exist: run jobs/etl.py --output {lake} first")
    if not has_samples:
        raise ConfigError(f"lake {lake} has no {SAMPLES} Delta table: run jobs/etl.py on it first")
    return lake


def _load_spec(lake: str) -> FeatureSpec:
    try:
        return FeatureSpec.load(lake)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"unreadable feature spec in {lake}: {exc}") from None


def _check_model(cfg: TrainConfig, spec: FeatureSpec) -> None:
    """Unknown name, bad params or a spec the model cannot use: build it once and run it."""
    from train.models import MODEL_NAMES, build_model

    if cfg.model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {list(MODEL_NAMES)}")
    try:
        model = build_model(cfg.model, spec, cfg.model_params)
        batch = dummy_batch(spec)
        with torch.no_grad():
            out = model(batch)
            loss = model.loss(out, batch)["loss"]
    except Exception as exc:  # any failure here means the model and spec do not fit
        raise ConfigError(f"model {cfg.model} does not fit the feature spec: {exc}") from None
    missing = [k for k in PRED_COLUMNS if k not in out]
    if missing or not torch.isfinite(loss):
        raise ConfigError(f"model {cfg.model} breaks the output contract (missing {missing})")


def dummy_batch(spec: FeatureSpec, rows: int = 2) -> dict[str, torch.Tensor]:
    """A tiny batch of the contract (ids 1 = unknown, full histories) for checks."""
    batch = {}
    for name, dtype in batch_columns(spec).items():
        batch[name] = torch.ones(rows, dtype=dtype)
    for f in spec.sequence:
        batch[f.name] = torch.ones(rows, spec.max_len, dtype=torch.int64)
    if spec.sequence:
        batch[spec.length_field] = torch.full((rows,), spec.max_len, dtype=torch.int64)
    batch["click"] = torch.tensor([1.0, 0.0] * (rows // 2) + [1.0] * (rows % 2))
    return batch


def _snapshot(lake: str, spec: FeatureSpec) -> dict[str, list[str]]:
    manifests = storage.join(lake, SAMPLES, MANIFEST_DIR)
    listed = [s for s in SPLITS if storage.is_dir(storage.join(manifests, f"split={s}"))]
    wanted = [s for s in SPLITS if spec.splits.get(s) or s in listed]
    if "train" not in wanted:
        raise ConfigError(f"lake {lake} has no train split in its samples manifest or spec")
    try:
        files = {split: snapshot_files(lake, split, spec) for split in wanted}
    except SnapshotError as exc:
        raise ConfigError(str(exc)) from None
    if not files["train"]:
        raise ConfigError(f"the train split of {lake} has no files")
    return files


# --- Ray (driver) -------------------------------------------------------------------------------
def connect_ray(cfg: TrainConfig) -> None:
    """Join RAY_ADDRESS / --ray-address (ray job submit sets it), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    _check_auth(address)
    try:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=cfg.ray_num_cpus or None, include_dashboard=False)
    except ray.exceptions.AuthenticationError as exc:
        raise ConfigError(f"Ray token authentication failed: {exc}".replace("\n", " ")) from None


def _check_auth(address: str) -> None:
    """Ray >= 2.52 token auth (RAY_AUTH_MODE=token): a cluster we join needs the token; a local
    cluster generates one (~/.ray/auth_token) itself."""
    if os.environ.get("RAY_AUTH_MODE", "disabled").lower() != "token" or not address:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    if not os.environ.get("RAY_AUTH_TOKEN") and not Path(token_file).is_file():
        raise ConfigError(
            "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "(the cluster's `ray get-auth-token`), or copy it to ~/.ray/auth_token"
        )


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train one seed with Ray Train and return its result (pre-flight errors: ConfigError)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    prepared = preflight(cfg)
    cfg = replace(cfg, name=prepared.name)
    connect_ray(cfg)
    has_valid = "valid" in prepared.files
    score = f"valid_{cfg.early_stop_metric}" if has_valid else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "spec": prepared.spec.to_json(),
            "files": prepared.files,
            "predictions_path": prepared.predictions_path,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=prepared.name,
            **_ray_storage(cfg.storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints or None,
                checkpoint_score_attribute=score,
                checkpoint_score_order="max",
            ),
        ),
    )
    log.info("training %s on %s with %d workers", cfg.model, cfg.lake, cfg.num_workers)
    result = trainer.fit()
    return _train_result(result, cfg, prepared)


def _ray_storage(storage_path: str) -> dict[str, Any]:
    """Ray Train storage arguments: object-store URIs go through our S3 filesystem, which
    honours AWS_ENDPOINT_URL_S3 (pyarrow 12, which Ray would use on its own, does not)."""
    if not storage.is_s3(storage_path):
        return {"storage_path": storage_path}
    filesystem, inner = storage.filesystem(storage_path)
    return {"storage_path": inner, "storage_filesystem": filesystem}


def _location(storage_path: str, ray_path: str) -> str:
    """A Ray Train path as a location anyone can open: inside an object store, its URI."""
    if storage.is_s3(storage_path) and not storage.is_uri(ray_path):
        return "s3://" + ray_path.lstrip("/")
    return ray_path


def _train_result(result: Any, cfg: TrainConfig, prepared: Prepared) -> TrainResult:
    """TrainResult from Ray's Result: the final checkpoint's metrics and state.json."""
    metrics = dict(result.metrics or {})
    if result.checkpoint is None or not metrics.get("final"):
        raise RuntimeError(f"run {result.path} ended without its final checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    best_epoch = int(metrics.get("best_epoch", -1))
    resumed = int(metrics.get("resumed_from_epoch", -1))
    test = {k[len("test_") :]: float(v) for k, v in metrics.items() if k.startswith("test_")}
    return TrainResult(
        test_metrics=test,
        history=state["history"],
        best_checkpoint_path=_location(cfg.storage_path, result.checkpoint.path),
        predictions_path=prepared.predictions_path if "test" in prepared.files else None,
        config=cfg,
        run_path=_location(cfg.storage_path, str(result.path)),
        best_epoch=best_epoch if best_epoch >= 0 else None,
        resumed_from_epoch=resumed if resumed >= 0 else None,
        epochs_run=int(metrics.get("epochs_run", 0)),
        stopped_early=bool(metrics.get("stopped_early", False)),
        samples_version=prepared.spec.tables.get(SAMPLES),
        lake=cfg.lake,
    )


def run_seeds(cfg: TrainConfig) -> SeedsResult:
    """``cfg.seeds`` runs with seeds cfg.seed, cfg.seed + 1, ...; test metrics mean/std."""
    from train.metrics import summarize_seeds

    base = cfg.name or f"{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    results = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        name = f"{base}-s{seed}" if cfg.seeds > 1 or not cfg.name else base
        results.append(run_training(replace(cfg, seed=seed, seeds=1, name=name)))
    return SeedsResult(results, summarize_seeds([r.test_metrics for r in results]))


# --- worker -------------------------------------------------------------------------------------
@dataclass
class LoopState:
    """What a checkpoint carries besides the weights (state.json)."""

    next_epoch: int = 0
    global_step: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Worker:
    """Everything one rank holds during a run."""

    cfg: TrainConfig
    spec: FeatureSpec
    plans: dict[str, ShardPlan]
    rank: int
    world: int
    device: torch.device
    module: nn.Module  # the plain model (DDP's .module)
    ddp: nn.Module  # what the training forward runs through
    optimizer: torch.optim.Optimizer
    state: LoopState
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point of every rank."""
    _setup_logging()
    worker = _init_worker(config)
    cfg, state = worker.cfg, worker.state
    steps = steps_per_epoch(worker.plans["train"], cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    for epoch in range(state.next_epoch, cfg.epochs):
        started = time.perf_counter()
        train_loss, rows = _train_epoch(worker, epoch, steps)
        train_seconds = time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": train_loss, "train_rows": rows}
        row["train_samples_per_second"] = rows / max(train_seconds, 1e-9)
        if "valid" in worker.plans:
            valid = _evaluate(worker, "valid")
            row |= {f"valid_{k}": v for k, v in valid.items()}
            _update_best(worker, epoch, valid.get(cfg.early_stop_metric, math.nan))
        else:
            worker.best_weights, state.best_epoch = None, epoch
        row["epoch_seconds"] = time.perf_counter() - started
        state.history.append(row)
        state.next_epoch = epoch + 1
        state.stopped_early = 0 < cfg.patience <= state.bad_epochs
        _log_epoch(worker, row)
        _report_epoch(worker, row)
        if state.stopped_early:
            _log0(
                worker,
                "early stop: no better valid %s for %d epochs",
                cfg.early_stop_metric,
                state.bad_epochs,
            )
            break
    _finish(worker, config["predictions_path"])


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)
    logging.getLogger("train.data").setLevel(logging.INFO)


def _init_worker(config: dict[str, Any]) -> Worker:
    import ray.train
    import ray.train.torch

    from train.models import build_model

    cfg: TrainConfig = config["cfg"]
    spec = FeatureSpec.from_json(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg.model, spec, cfg.model_params)
    state, best, resumed = LoopState(), None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state, best = _load_checkpoint(Path(folder), model)
        resumed = state.next_epoch
    torch.manual_seed(cfg.seed * 1009 + rank)  # dropout differs between ranks
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": cfg.find_unused_parameters}
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(saved)  # moves the state to the parameters' device
    plans = {split: plan_shards(files, world) for split, files in config["files"].items()}
    device = ray.train.torch.get_device()
    worker = Worker(cfg, spec, plans, rank, world, device, model, ddp, optimizer, state, best)
    worker.resumed_from = resumed
    if resumed is not None:
        _log0(worker, "resumed from the checkpoint of epoch %d", resumed - 1)
    _log0(
        worker,
        "%d ranks; train rows per shard %s (%s)",
        world,
        plans["train"].rows,
        plans["train"].mode,
    )
    return worker


def _autocast(worker: Worker):
    if worker.cfg.bf16 and worker.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _train_epoch(worker: Worker, epoch: int, steps: int) -> tuple[float, int]:
    """One epoch of exactly ``steps`` steps; returns (mean loss over all ranks, rows, all ranks)."""
    cfg = worker.cfg
    loader = make_loader(
        worker.spec, worker.plans["train"], cfg.loader, cfg.batch_size, worker.rank,
        worker.world, cfg.seed, epoch, shuffle=True, shuffle_buffer=cfg.shuffle_buffer,
        max_steps=steps,
    )  # fmt: skip
    worker.ddp.train()
    loss_sum = torch.zeros(2, dtype=torch.float64)
    done = 0
    for step, batch in enumerate(loader):
        _test_hook(worker, epoch, step)
        loss = _train_step(worker, _to_device(batch, worker.device))
        rows = len(batch["click"])
        loss_sum += torch.tensor([loss * rows, rows], dtype=torch.float64)
        worker.state.global_step += 1
        done += 1
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            _log0(worker, "epoch %d step %d/%d loss %.4f", epoch, step + 1, steps, loss)
    if done != steps:
        raise RuntimeError(f"rank {worker.rank} ran {done} of {steps} steps in epoch {epoch}")
    total = _all_reduce_sum(worker, loss_sum)
    worker.state.samples_seen += int(total[1])
    return float(total[0] / max(total[1], 1)), int(total[1])


def _train_step(worker: Worker, batch: dict[str, torch.Tensor]) -> float:
    with _autocast(worker):
        out = worker.ddp(batch)
    out = {k: v.float() for k, v in out.items()}
    loss = worker.module.loss(out, batch)["loss"]
    worker.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    worker.optimizer.step()
    return float(loss.detach())


def _all_reduce_sum(worker: Worker, values: torch.Tensor) -> torch.Tensor:
    if worker.world == 1 or not dist.is_initialized():
        return values
    buffer = values.to(worker.device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.cpu()


def _test_hook(worker: Worker, epoch: int, step: int) -> None:
    """Test hook: at ``hook_at`` = "EPOCH:STEP" the last rank writes its PID and waits."""
    cfg = worker.cfg
    if not cfg.hook_pid_file or worker.rank != worker.world - 1 or worker.resumed_from is not None:
        return
    if cfg.hook_at != f"{epoch}:{step}":
        return
    tmp = Path(f"{cfg.hook_pid_file}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(cfg.hook_pid_file)  # atomic: the test never reads a half-written file
    log.warning("test hook: rank %d (pid %d) waits to be killed", worker.rank, os.getpid())
    time.sleep(600)


# --- evaluation ---------------------------------------------------------------------------------
def _predict_shard(worker: Worker, split: str) -> dict[str, np.ndarray]:
    """Keys, labels and predictions of this rank's rows of ``split`` (every row, no shuffle)."""
    cfg, spec = worker.cfg, worker.spec
    loader = make_loader(
        spec, worker.plans[split], cfg.loader, cfg.eval_batch_size, worker.rank, worker.world,
        cfg.seed, 0, shuffle=False,
    )  # fmt: skip
    keep = [*spec.key_fields, *spec.labels]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keep, *PRED_COLUMNS]}
    worker.module.eval()
    with torch.no_grad():
        for batch in loader:
            with _autocast(worker):
                out = worker.module(_to_device(batch, worker.device))
            for k in keep:
                parts[k].append(batch[k].numpy())
            for k in PRED_COLUMNS:
                parts[k].append(out[k].float().cpu().numpy())
    return {k: _concat(v, k in spec.labels or k in PRED_COLUMNS) for k, v in parts.items()}


def _concat(chunks: list[np.ndarray], is_float: bool) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks)
    return np.zeros(0, dtype=np.float32 if is_float else np.int64)


def _gather(worker: Worker, local: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Every rank's predictions on rank 0 (None elsewhere)."""
    if worker.world == 1 or not dist.is_initialized():
        return local
    received: list[Any] | None = [None] * worker.world if worker.rank == 0 else None
    dist.gather_object(local, received, dst=0)
    if worker.rank != 0:
        return None
    return {k: np.concatenate([part[k] for part in received]) for k in local}


def _broadcast(worker: Worker, value: Any) -> Any:
    if worker.world == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _evaluate(worker: Worker, split: str, save_to: str | None = None) -> dict[str, float]:
    """Metrics over the whole split, computed once on rank 0 from every rank's predictions."""
    from train.metrics import evaluate

    rows = _gather(worker, _predict_shard(worker, split))
    metrics = None
    if rows is not None:
        _check_complete(rows, worker.plans[split].total_rows, split)
        labels = {k: rows[k] for k in worker.spec.labels}
        preds = {k: rows[k] for k in PRED_COLUMNS}
        metrics = evaluate(labels, preds, rows["user_key"])
        if save_to:
            _write_predictions(rows, save_to)
    return _broadcast(worker, metrics)


def _check_complete(rows: dict[str, np.ndarray], expected: int, split: str) -> None:
    ids = rows["impression_id"]
    unique = np.unique(ids).size
    if unique != len(ids) or len(ids) != expected:
        raise RuntimeError(
            f"{split}: gathered {len(ids)} predictions ({unique} distinct impressions) "
            f"for {expected} rows: shards overlap or miss rows"
        )


def _write_predictions(rows: dict[str, np.ndarray], path: str) -> None:
    filesystem, target = storage.filesystem(path)
    filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
    pq.write_table(pa.table(rows), target, filesystem=filesystem)


# --- early stopping and checkpoints ---------------------------------------------------------------
def _update_best(worker: Worker, epoch: int, metric: float) -> None:
    """Keep the best weights (in memory) and count epochs without improvement (nan: none)."""
    state = worker.state
    if not math.isnan(metric) and (state.best_metric is None or metric > state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
        worker.best_weights = _cpu_state(worker.module)
    else:
        state.bad_epochs += 1


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _report_epoch(worker: Worker, row: dict[str, float]) -> None:
    """Checkpoint (rank 0 writes it) and metrics of one epoch; every rank reports."""
    import ray.train

    metrics = {**row, "best_epoch": worker.state.best_epoch}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if worker.rank == 0:
            _save_checkpoint(worker, Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    if worker.rank == 0:
        _wait_until_registered()


def _wait_until_registered() -> None:
    """``ray.train.report`` returns before the controller has registered the checkpoint; a
    worker dying in that window would make the restart resume one epoch earlier. Block until
    every in-flight report is processed (alpha API in Ray 2.55; skipped where missing)."""
    import ray.train

    try:
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
        )
    except (AttributeError, NotImplementedError):
        log.debug("ray.train.get_all_reported_checkpoints unavailable: not waiting")


def _save_checkpoint(worker: Worker, folder: Path, final: bool = False) -> None:
    """model.pt: current weights (final: the best ones); best_weights.pt when they differ."""
    state = worker.state
    torch.save(worker.module.state_dict(), folder / MODEL_FILE)
    torch.save(worker.optimizer.state_dict(), folder / OPTIMIZER_FILE)
    this_epoch = state.next_epoch - 1
    if not final and worker.best_weights is not None and state.best_epoch != this_epoch:
        torch.save(worker.best_weights, folder / BEST_FILE)
    (folder / STATE_FILE).write_text(json.dumps(asdict(state), default=_json_default))
    (folder / SPEC_FILE).write_text(worker.spec.to_json())
    info = {"model": worker.cfg.model, "model_params": worker.cfg.model_params}
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def _load_checkpoint(
    folder: Path, model: nn.Module
) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    state = LoopState(**json.loads((folder / STATE_FILE).read_text()))
    weights = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    best = None
    if (folder / BEST_FILE).is_file():
        best = torch.load(folder / BEST_FILE, map_location="cpu", weights_only=True)
    elif state.best_epoch == state.next_epoch - 1 and state.best_metric is not None:
        best = copy.deepcopy(weights)
    return state, best


def _finish(worker: Worker, predictions_path: str) -> None:
    """Best weights -> test predictions of every rank -> metrics once -> final checkpoint.

    The final checkpoint holds the weights that made the test predictions (model.pt), the
    state with the whole history and test_metrics.json; Ray's Result.metrics are its metrics.
    """
    import ray.train

    if worker.best_weights is not None:
        worker.module.load_state_dict(worker.best_weights)
    test = {}
    if "test" in worker.plans:
        test = _evaluate(worker, "test", save_to=predictions_path)
        _log0(worker, "test %s", _fmt(test))
    state = worker.state
    final = {
        **{f"test_{k}": v for k, v in test.items()},
        "final": True,
        "best_epoch": state.best_epoch,
        "epochs_run": state.next_epoch,
        "stopped_early": state.stopped_early,
        "resumed_from_epoch": -1 if worker.resumed_from is None else worker.resumed_from,
        "global_step": state.global_step,
    }
    if "valid" in worker.plans:  # ranks the final checkpoint with the best epoch's
        final[f"valid_{worker.cfg.early_stop_metric}"] = _or_nan(state.best_metric)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if worker.rank == 0:
            _save_checkpoint(worker, Path(folder), final=True)
            (Path(folder) / TEST_METRICS_FILE).write_text(json.dumps(test))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(final, checkpoint=checkpoint)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


# --- logging ------------------------------------------------------------------------------------
def _log0(worker: Worker, message: str, *args: Any) -> None:
    if worker.rank == 0:
        log.info(message, *args)


def _fmt(metrics: dict[str, float]) -> str:
    names = ("ctr_auc", "cvr_auc", "ctcvr_auc", "ctr_gauc", "ctcvr_logloss", "n_rows")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in names if k in metrics)


def _log_epoch(worker: Worker, row: dict[str, float]) -> None:
    cfg, state = worker.cfg, worker.state
    key = f"valid_{cfg.early_stop_metric}"
    valid = ""
    if key in row:
        best = "nan" if state.best_metric is None else f"{state.best_metric:.4f}"
        valid = f" {key}={row[key]:.4f} (best {best} @ epoch {state.best_epoch + 1})"
    _log0(
        worker,
        "epoch %d/%d train_loss=%.4f%s %.0f train samples/s, %.1fs",
        row["epoch"] + 1, cfg.epochs, row["train_loss"], valid, row["train_samples_per_second"],
        row["epoch_seconds"],
    )  # fmt: skip
