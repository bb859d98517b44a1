"""Progress events of a training (started, one per epoch, finished) for whoever shows them.

A process installs at most one ``Sink`` (train/console.py's terminal display does); the driver
asks ``epoch_feed(cfg)`` for a feed around ``trainer.fit()``. With no sink installed the feed is
inert: no Ray callback, no queue, nothing printed. Otherwise a Ray Train ``UserCallback``, run by
the Train controller (another process, maybe another node), puts rank 0's report of each epoch
into a Ray queue that a driver thread drains into the sink.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Protocol

from train.train_config import TrainConfig

POLL_SECONDS = 0.5


class Sink(Protocol):
    def train_started(self, cfg: TrainConfig) -> None: ...
    def epoch_done(self, cfg: TrainConfig, row: dict[str, Any]) -> None: ...
    def train_finished(self, cfg: TrainConfig, ok: bool) -> None: ...


_SINK: list[Sink] = []


def install(sink: Sink | None) -> None:
    """Make ``sink`` the process's progress sink (None: remove it)."""
    _SINK.clear()
    if sink is not None:
        _SINK.append(sink)


def current() -> Sink | None:
    return _SINK[0] if _SINK else None


def _epoch_row(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """An epoch's report (not the final one) as a plain dict of numbers."""
    if metrics.get("final") or "epoch" not in metrics:
        return None
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def _callback_class() -> type:
    from ray.train import UserCallback

    class EpochReporter(UserCallback):
        """Puts rank 0's per-epoch metrics into ``queue`` (runs in the Train controller)."""

        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            row = _epoch_row(metrics[0] if metrics else {})
            if row is not None:
                with contextlib.suppress(Exception):  # progress must never fail a training
                    self.queue.put_nowait(row)

    return EpochReporter


class EpochFeed:
    """Around ``trainer.fit()``: ``callbacks`` for the RunConfig, then ``with feed:``."""

    def __init__(self, cfg: TrainConfig, sink: Sink | None) -> None:
        self.cfg, self.sink, self.queue = cfg, sink, None
        self.callbacks: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sink is not None:
            from ray.util.queue import Queue

            self.queue = Queue(actor_options={"num_cpus": 0})
            self.callbacks = [_callback_class()(self.queue)]

    def __enter__(self) -> EpochFeed:
        if self.sink is not None:
            self.sink.train_started(self.cfg)
            self._thread = threading.Thread(target=self._drain, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self.sink is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._forward_all()
        with contextlib.suppress(Exception):
            self.queue.shutdown()
        self.sink.train_finished(self.cfg, exc_type is None)

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                row = self.queue.get(timeout=POLL_SECONDS)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: stop following
                return
            self.sink.epoch_done(self.cfg, row)

    def _forward_all(self) -> None:
        with contextlib.suppress(Exception):
            while not self.queue.empty():
                self.sink.epoch_done(self.cfg, self.queue.get_nowait())


def epoch_feed(cfg: TrainConfig) -> EpochFeed:
    """The feed of one training to the installed sink (inert when there is none)."""
    return EpochFeed(cfg, current())
