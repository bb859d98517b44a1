"""The Ray Train worker loop: ``train_loop_per_worker(config)``, run by every rank.

Each rank reads its shard of the snapshot files the driver resolved (train/data.py); every rank
runs the same number of steps (MIN over shards, from parquet footers). After each epoch:
validation on the full valid split (train/evaluation.py), early stopping on
``valid_<early_stop_metric>`` in that metric's direction (train/metrics.py registry), and a
checkpoint through ``ray.train.report`` (train/checkpoints.py). A restarted worker group resumes
from the latest checkpoint at the next epoch; the data order of an epoch depends only on
(seed, epoch), so a resumed run reads what an uninterrupted one would. A warm start
(``--init-from``, train/warm_start.py) loads the earlier model's weights into the fresh model on
every rank before DDP wraps it (so every rank starts from the same weights, which DDP's broadcast
from rank 0 then confirms); the optimizer starts fresh, and a resume takes precedence. At the
end the best weights predict the full test split; rank 0 computes the metrics and writes the
predictions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.checkpoints import (
    OPTIMIZER_FILE,
    TEST_METRICS_FILE,
    load_checkpoint,
    report,
    report_epoch,
)
from train.collectives import all_reduce_sum
from train.data import label_priors, make_loader, plan_shards, steps_per_epoch
from train.evaluation import evaluate_split
from train.metrics import TABLE_METRICS, is_better
from train.train_config import TrainConfig
from train.warm_start import apply_initial_state
from train.worker_state import LoopState, Worker, log


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
            valid = evaluate_split(worker, "valid")
            row |= {f"valid_{k}": v for k, v in valid.items()}
            _update_best(worker, epoch, valid.get(cfg.early_stop_metric, math.nan))
        else:
            worker.best_weights, state.best_epoch = None, epoch
        row["epoch_seconds"] = time.perf_counter() - started
        state.history.append(row)
        state.next_epoch = epoch + 1
        state.stopped_early = 0 < cfg.patience <= state.bad_epochs
        _log_epoch(worker, row)
        report_epoch(worker, row)
        if state.stopped_early:
            worker.log0(
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
    import ray
    import ray.train
    import ray.train.torch

    from train.models import build_model

    cfg: TrainConfig = config["cfg"]
    spec = FeatureSpec.from_json(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(cfg.model, spec, cfg.model_params)
    model.set_priors(label_priors(config["files"]["train"]))  # the same on every rank
    state, best, resumed = LoopState(), None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state, best = load_checkpoint(Path(folder), model)
        resumed = state.next_epoch
    elif config.get("init_state") is not None:  # a ray.put of preflight's --init-from weights
        fresh = apply_initial_state(model, ray.get(config["init_state"]))
        if rank == 0:
            log.info("warm start from %s (%d new embedding rows)", cfg.init_from, fresh)
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
        worker.log0("resumed from the checkpoint of epoch %d", resumed - 1)
    worker.log0(
        "%d ranks; train rows per shard %s (%s)",
        world,
        plans["train"].rows,
        plans["train"].mode,
    )
    return worker


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
        loss = _train_step(worker, worker.to_device(batch))
        rows = len(batch["click"])
        loss_sum += torch.tensor([loss * rows, rows], dtype=torch.float64)
        worker.state.global_step += 1
        done += 1
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            worker.log0("epoch %d step %d/%d loss %.4f", epoch, step + 1, steps, loss)
    if done != steps:
        raise RuntimeError(f"rank {worker.rank} ran {done} of {steps} steps in epoch {epoch}")
    total = all_reduce_sum(loss_sum, worker.world, worker.device)
    worker.state.samples_seen += int(total[1])
    return float(total[0] / max(total[1], 1)), int(total[1])


def _train_step(worker: Worker, batch: dict[str, torch.Tensor]) -> float:
    with worker.autocast():
        out = worker.ddp(batch)
    out = {k: v.float() for k, v in out.items()}
    loss = worker.module.loss(out, batch)["loss"]
    worker.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    worker.optimizer.step()
    return float(loss.detach())


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


def _update_best(worker: Worker, epoch: int, metric: float) -> None:
    """Keep the best weights (in memory) and count epochs without improvement (nan: none),
    in the direction the metric registry gives the early-stopping metric."""
    state = worker.state
    if is_better(worker.cfg.early_stop_metric, metric, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
        worker.best_weights = _cpu_state(worker.module)
    else:
        state.bad_epochs += 1


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _finish(worker: Worker, predictions_path: str) -> None:
    """Best weights -> test predictions of every rank -> metrics once -> final checkpoint.

    The final checkpoint holds the weights that made the test predictions (model.pt), the
    state with the whole history and test_metrics.json; Ray's Result.metrics are its metrics.
    """

    if worker.best_weights is not None:
        worker.module.load_state_dict(worker.best_weights)
    test = {}
    if "test" in worker.plans:
        test = evaluate_split(worker, "test", save_to=predictions_path)
        worker.log0("test %s", _fmt(test))
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

    def write_test_metrics(folder: Path) -> None:
        (folder / TEST_METRICS_FILE).write_text(json.dumps(test))

    report(worker, final, final=True, extra=write_test_metrics)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


# --- logging ------------------------------------------------------------------------------------
def _fmt(metrics: dict[str, float]) -> str:
    names = (*TABLE_METRICS, "n_rows")
    return " ".join(f"{k}={metrics[k]:.4g}" for k in names if k in metrics)


def _log_epoch(worker: Worker, row: dict[str, float]) -> None:
    cfg, state = worker.cfg, worker.state
    key = f"valid_{cfg.early_stop_metric}"
    valid = ""
    if key in row:
        best = "nan" if state.best_metric is None else f"{state.best_metric:.4f}"
        valid = f" {key}={row[key]:.4f} (best {best} @ epoch {state.best_epoch + 1})"
    worker.log0("epoch %d/%d train_loss=%.4f%s %.0f train samples/s, %.1fs",
        row["epoch"] + 1, cfg.epochs, row["train_loss"], valid, row["train_samples_per_second"],
        row["epoch_seconds"],
    )  # fmt: skip
