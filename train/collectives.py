"""DDP collectives of the worker loop; each is a no-op with one rank or no process group."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def _single(world: int) -> bool:
    return world == 1 or not dist.is_initialized()


def all_reduce_sum(values: torch.Tensor, world: int, device: torch.device) -> torch.Tensor:
    """Element-wise sum over ranks (on CPU)."""
    if _single(world):
        return values
    buffer = values.to(device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.cpu()


def gather_arrays(
    local: dict[str, np.ndarray], rank: int, world: int
) -> dict[str, np.ndarray] | None:
    """Every rank's arrays concatenated on rank 0 (None on the other ranks)."""
    if _single(world):
        return local
    received: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(local, received, dst=0)
    if rank != 0:
        return None
    return {k: np.concatenate([part[k] for part in received]) for k in local}


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank."""
    if _single(world):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
