"""Checkpoints of the worker loop: what each epoch's checkpoint holds and how a restarted
worker group resumes from it.

A checkpoint folder holds model.pt (current weights; in the final checkpoint the best epoch's),
optimizer.pt, best_weights.pt (when the best epoch is not the current one), state.json
(``LoopState``), feature_spec.json and model.json (model name and params, and the lake it was
trained on, where a warm start finds its vocabularies: train/warm_start.py), enough to rebuild
the model anywhere (train/pyfunc.py). Rank 0 writes it; every rank reports through ray.train.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.worker_state import LoopState, Worker

log = logging.getLogger(__name__)

MODEL_FILE, OPTIMIZER_FILE, BEST_FILE = "model.pt", "optimizer.pt", "best_weights.pt"
STATE_FILE, SPEC_FILE, MODEL_INFO_FILE = "state.json", "feature_spec.json", "model.json"
TEST_METRICS_FILE = "test_metrics.json"


def report_epoch(worker: Worker, row: dict[str, float]) -> None:
    """Checkpoint (rank 0 writes it) and metrics of one epoch; every rank reports."""
    report(worker, {**row, "best_epoch": worker.state.best_epoch})
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


def save_checkpoint(worker: Worker, folder: Path, final: bool = False) -> None:
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
    info["lake"] = worker.cfg.lake
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def load_checkpoint(
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


def report(worker: Worker, metrics: dict[str, Any], final: bool = False, extra=None) -> None:
    """Report ``metrics`` with a checkpoint that rank 0 writes (``extra(folder)`` adds files)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if worker.rank == 0:
            save_checkpoint(worker, Path(folder), final=final)
            if extra is not None:
                extra(Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
