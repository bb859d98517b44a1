"""A quiet terminal for the quickstart and the simulation: one line or bar per stage, every log
in one file.

``quiet(log_dir)`` sends everything the process and its children write (logging, Ray's
forwarded worker output, spark-submit) to ``<log_dir>/quickstart-<time>.log`` by pointing file
descriptors 1 and 2 at it, and shows on the terminal's stderr only:

- one line per stage: each INFO record of the ``quickstart`` logger (world, ETL, promotion...)
  opens a stage, closed with its duration when the next one opens;
- each INFO record of the ``line_loggers`` as one line (the simulation's result per arm and
  round: ``quiet(log_dir, name="simulate", line_loggers=("train.sim.loop",))``);
- one bar per training (train/progress.py's feed): epochs done and the epoch's valid AUCs;
  trainings that overlap (the simulation's arms) each keep their own bar or line;
- warnings of the project's own loggers (``train``, ``etl``, ``quickstart``).

On a terminal these are tqdm bars (a stage's bar shows its duration). Otherwise (a pipe, CI)
every stage is one plain line stamped with the run's clock, and a training one more line when
it ends: its epochs, time and each epoch's valid AUCs (nothing is redrawn as new lines). When
the block raises (but for SystemExit and Ctrl-C), the traceback goes to the log, the log's last
lines and its path are printed and the block exits with SystemExit(1). Stdout is restored on
exit, so what the caller prints afterwards (the result table, the links) goes to the real
stdout; the root logger's console handlers keep writing to the log file after the block.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from train import progress
from train.metrics import AUC_METRICS
from train.train_config import TrainConfig

STAGE_LOGGER = "quickstart"
OWN_LOGGERS = ("train", "etl", STAGE_LOGGER)
PLAIN_WIDTH = 200  # cut of a plain (non-terminal) line
TAIL_LINES = 40  # log lines shown when the run fails


def epoch_text(row: dict[str, Any]) -> str:
    """``valid ctr_auc 0.612 cvr_auc 0.550 ctcvr_auc 0.640`` (the epoch's valid AUCs)."""
    return epochs_text([row])


def epochs_text(rows: list[dict[str, Any]]) -> str:
    """``valid ctr_auc 0.601/0.612 ctcvr_auc 0.630/0.640``: each AUC over the epochs ``rows``."""
    names = [m for m in AUC_METRICS if any(f"valid_{m}" in r for r in rows)]
    if not names:
        losses = "/".join(f"{r.get('train_loss', float('nan')):.4f}" for r in rows)
        return f"train_loss {losses}"
    nan = float("nan")
    cells = ["/".join(f"{r.get(f'valid_{m}', nan):.3f}" for r in rows) for m in names]
    return "valid " + " ".join(f"{m} {c}" for m, c in zip(names, cells, strict=True))


@dataclass
class OpenTraining:
    """A training between its start and its end: its epoch rows and its bar (terminal)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    bar: Any = None
    position: int = 0  # the bar's line below the cursor, free among the open trainings'

    def text(self, cfg: TrainConfig, ok: bool) -> str:
        """``3/3 epochs in 95s, valid ctr_auc 0.601/0.612/0.615 ...`` (plain mode's line)."""
        took = time.monotonic() - self.started_at
        done = f"{len(self.epochs)}/{cfg.epochs} epochs in {took:.0f}s"
        if not ok:
            return f"FAILED after {done}"
        return f"{done}, {epochs_text(self.epochs)}" if self.epochs else done


class Display:
    """Stage lines and training bars on ``stream`` (tqdm on a terminal, else plain lines)."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.lock = threading.RLock()
        self.stage_text: str | None = None
        self.stage_bar: Any = None
        self.trainings: dict[str, OpenTraining] = {}  # by TrainConfig.name: several may run
        self.started = time.monotonic()
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

    # --- output ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        with self.lock:
            if self.tty:
                from tqdm import tqdm

                tqdm.write(text, file=self.stream)
            else:
                self.stream.write(text[:PLAIN_WIDTH] + "\n")
                self.stream.flush()

    def timed_line(self, text: str) -> None:
        """``text`` as one line stamped with the run's clock."""
        self.line(f"{self._clock()} {text}")

    def _clock(self) -> str:
        return f"[{time.monotonic() - self.started:5.0f}s]"

    # --- stages ------------------------------------------------------------------------------
    def stage(self, text: str) -> None:
        """Close the open stage (with its duration) and open ``text``."""
        with self.lock:
            self.end_stage()
            self.stage_text = text
            if not self.tty:
                self.timed_line(text)
                return
            from tqdm import tqdm

            self.stage_bar = tqdm(
                total=None, desc=f"{self._clock()} {text}", bar_format="{desc} [{elapsed}]",
                file=self.stream, leave=True, dynamic_ncols=True,
            )  # fmt: skip
            self._start_ticker()

    def end_stage(self, keep: bool = True) -> None:
        with self.lock:
            if self.stage_text is None:
                return
            if self.stage_bar is not None:  # plain mode: the next line's clock says it
                self.stage_bar.leave = keep
                self.stage_bar.close()
            self.stage_text, self.stage_bar = None, None

    def _start_ticker(self) -> None:
        """Refresh the elapsed time of the open stage or bar once a second (terminal only)."""
        if self._ticker is not None:
            return

        def tick() -> None:
            while not self._closed.wait(1.0):
                with self.lock:
                    bars = [self.stage_bar, *(t.bar for t in self.trainings.values())]
                    for bar in bars:
                        if bar is not None:
                            bar.refresh()

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    # --- trainings (train/progress.py's Sink) ------------------------------------------------
    def train_started(self, cfg: TrainConfig) -> None:
        with self.lock:
            self.end_stage(keep=False)  # the bar stands for the "training ..." stage
            taken = {t.position for t in self.trainings.values()}
            position = min(set(range(len(taken) + 1)) - taken)
            training = self.trainings[cfg.name] = OpenTraining(position=position)
            desc = f"{self._clock()} {cfg.model} seed {cfg.seed}"
            if not self.tty:  # the stage line announced it; one line when it ends
                return
            from tqdm import tqdm

            training.bar = tqdm(  # tqdm writes the postfix as ", <postfix>"
                total=cfg.epochs, desc=desc, unit="epoch", file=self.stream, leave=True,
                bar_format="{desc} {bar:20} {n}/{total} epochs [{elapsed}]{postfix}",
                dynamic_ncols=True, position=training.position,
            )  # fmt: skip
            self._start_ticker()

    def epoch_done(self, cfg: TrainConfig, row: dict[str, Any]) -> None:
        with self.lock:
            training = self.trainings.get(cfg.name)
            if training is None:
                return
            training.epochs.append(row)
            if training.bar is not None:
                training.bar.set_postfix_str(epoch_text(row), refresh=False)
                training.bar.update(1)

    def train_finished(self, cfg: TrainConfig, ok: bool) -> None:
        with self.lock:
            training = self.trainings.pop(cfg.name, None) or OpenTraining()
            if training.bar is not None:
                if not ok:
                    training.bar.set_postfix_str("FAILED", refresh=False)
                training.bar.close()
            else:
                text = training.text(cfg, ok)
                self.line(f"        {cfg.model} seed {cfg.seed}: {text}")

    def close(self) -> None:
        with self.lock:
            self.end_stage()
            for training in self.trainings.values():
                if training.bar is not None:
                    training.bar.close()
            self.trainings.clear()
        self._closed.set()


class DisplayHandler(logging.Handler):
    """Stage records (logger ``quickstart``, INFO) open stages, those of ``line_loggers`` are
    lines; the project's warnings show."""

    def __init__(self, display: Display, line_loggers: tuple[str, ...] = ()) -> None:
        super().__init__(logging.INFO)
        self.display = display
        self.line_loggers = line_loggers

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the log file has it
            return
        own = record.name.split(".")[0] in OWN_LOGGERS
        if record.levelno >= logging.WARNING and own:
            self.display.line(f"        {record.levelname.lower()}: {message}")
        elif record.name == STAGE_LOGGER:
            self.display.stage(message)
        elif record.name in self.line_loggers:
            self.display.timed_line(message)


def log_file(log_dir: Path, now: dt.datetime | None = None, name: str = "quickstart") -> Path:
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{name}-{stamp}.log"


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _descriptors_to(path: Path) -> Iterator[TextIO]:
    """Point fds 1 and 2 at ``path``; yields a stream on the original stderr."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with open(path, "ab", buffering=0) as out:
        for fd in (1, 2):
            os.dup2(out.fileno(), fd)
        try:
            yield terminal
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def _stop_ray() -> None:
    """Shut a Ray this process started down while its output still goes to the log."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):
            ray.shutdown()


def _keep_logging_in(path: Path) -> None:
    """Point the root logger's stdout/stderr handlers at the log file: what libraries log after
    the block, while the process exits (py4j closing its gateway...), stays off the terminal."""
    stream = open(path, "a", buffering=1)  # noqa: SIM115 (open until the process exits)
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in consoles:
            handler.setStream(stream)


@contextlib.contextmanager
def quiet(
    log_dir: Path, name: str = "quickstart", line_loggers: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Run the block with every output in ``log_dir/<name>-<time>.log`` and progress on the
    terminal (see the module docstring); yields the log file's path."""
    path = log_file(log_dir, name=name)
    with _descriptors_to(path) as terminal:
        display = Display(terminal)
        display.line(f"full log: {path}")
        handler = DisplayHandler(display, line_loggers)
        logging.getLogger().addHandler(handler)
        progress.install(display)
        try:
            yield path
        except BaseException as exc:
            if not isinstance(exc, SystemExit):
                traceback.print_exc()  # into the log
            _stop_ray()
            display.close()
            if not isinstance(exc, SystemExit | KeyboardInterrupt):
                terminal.write(f"{tail(path)}\n\nfailed: {type(exc).__name__}: {exc}\n")
                terminal.write(f"full log: {path}\n")
                raise SystemExit(1) from None  # the traceback is in the tail above
            raise
        else:
            _stop_ray()
            display.close()
        finally:
            progress.install(None)
            logging.getLogger().removeHandler(handler)
            _keep_logging_in(path)
            terminal.close()
