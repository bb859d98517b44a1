"""Training-run helpers: a pre-flight refusal that must be one line, and a run whose last worker
is SIGKILLed at its test hook (TrainConfig.hook_at) to drive the restart-and-resume path."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from train.driver import run_training
from train.preflight import ConfigError
from train.results import TrainResult
from train.train_config import TrainConfig


def run_with_worker_killed(cfg: TrainConfig) -> tuple[TrainResult, list[int]]:
    """Run ``cfg`` (with hook_pid_file and hook_at set); SIGKILL the worker that writes its PID
    to hook_pid_file when it reaches the hook. Returns the result and the PIDs killed."""
    pid_file = Path(cfg.hook_pid_file)
    killed: list[int] = []

    def kill_when_ready() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not pid_file.exists():
            time.sleep(0.2)
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_when_ready, daemon=True)
    killer.start()
    result = run_training(cfg)
    killer.join(timeout=5)
    return result, killed


def one_line_error(cfg: TrainConfig, match: str) -> str:
    """The ConfigError message of running ``cfg``: it must match ``match`` and be one line."""
    with pytest.raises(ConfigError, match=match) as info:
        run_training(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message
