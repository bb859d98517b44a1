"""Evaluation inside the workers: every rank predicts its shard of a split, rank 0 gathers the
union, checks that every impression appears exactly once, computes the metrics once
(train/metrics.py) and, for the test split, writes the predictions parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from etl import storage
from train.collectives import broadcast, gather_arrays
from train.data import make_loader
from train.metrics import evaluate
from train.models.base import PREDICTIONS
from train.worker_state import Worker


def _predict_shard(worker: Worker, split: str) -> dict[str, np.ndarray]:
    """Keys, labels and predictions of this rank's rows of ``split`` (every row, no shuffle)."""
    cfg, spec = worker.cfg, worker.spec
    loader = make_loader(
        spec, worker.plans[split], cfg.loader, cfg.eval_batch_size, worker.rank, worker.world,
        cfg.seed, 0, shuffle=False,
    )  # fmt: skip
    keep = [*spec.key_fields, *spec.labels]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keep, *PREDICTIONS]}
    worker.module.eval()
    with torch.no_grad():
        for batch in loader:
            with worker.autocast():
                out = worker.module(worker.to_device(batch))
            for k in keep:
                parts[k].append(batch[k].numpy())
            for k in PREDICTIONS:
                parts[k].append(out[k].float().cpu().numpy())
    return {k: _concat(v, k in spec.labels or k in PREDICTIONS) for k, v in parts.items()}


def _concat(chunks: list[np.ndarray], is_float: bool) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks)
    return np.zeros(0, dtype=np.float32 if is_float else np.int64)


def evaluate_split(worker: Worker, split: str, save_to: str | None = None) -> dict[str, float]:
    """Metrics over the whole split, computed once on rank 0 from every rank's predictions."""
    rows = gather_arrays(_predict_shard(worker, split), worker.rank, worker.world)
    metrics = None
    if rows is not None:
        _check_complete(rows, worker.plans[split].total_rows, split)
        labels = {k: rows[k] for k in worker.spec.labels}
        preds = {k: rows[k] for k in PREDICTIONS}
        metrics = evaluate(labels, preds, rows["user_key"])
        if save_to:
            _write_predictions(rows, save_to)
    return broadcast(metrics, worker.world)


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
