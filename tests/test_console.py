"""The quickstart's quiet terminal (train/console.py) in a real child process: stage lines and
epoch lines on stderr, every other output (its own, a subprocess's, logging) in the log file,
what is printed after the block on stdout; a failure prints the log's tail and exits 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from train import console, progress
from train.train_config import TrainConfig

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
with console.quiet(Path(sys.argv[1])) as path:
    log = logging.getLogger("quickstart")
    log.info("generating a synthetic Taobao world in /tmp/world")
    print("NOISE from print")
    child = "import sys; print('NOISE child'); sys.stderr.write('NOISE err')"
    subprocess.run([sys.executable, "-c", child])
    logging.getLogger("ray.train").warning("NOISE PlacementGroupCleaner State API")
    log.info("training esmm with 2 Ray Train workers")
    cfg = TrainConfig(model="esmm", epochs=3)
    sink = progress.current()
    sink.train_started(cfg)
    row = {"epoch": 0, "train_loss": 0.4, "valid_ctr_auc": 0.6123, "valid_ctcvr_auc": 0.64}
    sink.epoch_done(cfg, row)
    sink.train_finished(cfg, True)
    logging.getLogger("train.tracking.guard").warning("esmm ranks below chance")
    if sys.argv[3] == "fail":
        raise RuntimeError("boom")
print("TABLE line")
print(f"log at {path}")
"""


def run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "logs"), str(ROOT), mode],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip


def test_quiet_terminal_and_full_log(tmp_path: Path) -> None:
    done = run(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert "NOISE" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert lines[0].startswith("full log: ") and len(lines) <= 8, done.stderr
    assert "generating a synthetic Taobao world" in done.stderr
    assert re.search(r"esmm seed 0: training, at most 3 epochs", done.stderr)
    assert "esmm epoch 1/3: valid ctr_auc 0.612 ctcvr_auc 0.640" in done.stderr
    assert "warning: esmm ranks below chance" in done.stderr
    assert done.stdout.splitlines()[0] == "TABLE line"
    log = Path(lines[0].removeprefix("full log: "))
    assert done.stdout.splitlines()[1] == f"log at {log}"
    text = log.read_text()
    for noise in ("NOISE from print", "NOISE child", "NOISE err", "PlacementGroupCleaner"):
        assert noise in text, noise
    assert "quickstart: training esmm with 2 Ray Train workers" in text


def test_failure_prints_the_log_tail(tmp_path: Path) -> None:
    done = run(tmp_path, "fail")
    assert done.returncode == 1
    assert "failed: RuntimeError: boom" in done.stderr
    assert "NOISE child" in done.stderr  # the tail of the log
    assert "TABLE line" not in done.stdout
    assert done.stderr.count("Traceback") == 1  # in the tail only
