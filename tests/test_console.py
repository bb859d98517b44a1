"""The quickstart's quiet terminal (train/console.py) in a real child process: stage lines and
one line per training on stderr, every other output (its own, a subprocess's, logging, warnings,
a library's progress bar) in the log file, what is printed after the block on stdout; the same
on a terminal (a pty: tqdm bars); a failure prints the log's tail and exits 1."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what a real demo run writes to the log that must never reach the terminal
NOISY = (
    "NOISE", "PlacementGroupCleaner", "WARN ", "INFO", "Traceback", "RayTrainWorker",
    "(pid=", "it/s", "FutureWarning", "SparkStringUtils", "py4j",
)  # fmt: skip

SCRIPT = """
import logging, os, subprocess, sys, warnings
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tqdm import tqdm
from train import console, progress
from train.train_config import TrainConfig

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
with console.quiet(Path(sys.argv[1])) as path:
    log = logging.getLogger("quickstart")
    log.info("generating a synthetic Taobao world in /tmp/world")
    print("NOISE from print")
    child = "import sys; print('NOISE child'); sys.stderr.write('26/12/01 WARN NOISE java-like')"
    subprocess.run([sys.executable, "-c", child])
    os.write(2, b"NOISE fd 2\\n")
    warnings.warn("NOISE FutureWarning", FutureWarning)
    for _ in tqdm(range(3), desc="NOISE bar", mininterval=0):
        pass
    logging.getLogger("ray.train").warning("NOISE PlacementGroupCleaner State API")
    logging.getLogger("py4j").warning("NOISE py4j")
    logging.getLogger("quickstart.detail").info("NOISE detail: spark-submit --jars a,b,c")
    log.info("training esmm with 2 Ray Train workers")
    cfg = TrainConfig(model="esmm", epochs=3)
    sink = progress.current()
    sink.train_started(cfg)
    for epoch, auc in enumerate((0.6123, 0.65)):
        row = {"epoch": epoch, "train_loss": 0.4, "valid_ctr_auc": auc, "valid_ctcvr_auc": 0.64}
        sink.epoch_done(cfg, row)
    sink.train_finished(cfg, True)
    logging.getLogger("train.tracking.guard").warning("esmm ranks below chance")
    if sys.argv[3] == "fail":
        raise RuntimeError("boom")
print("TABLE line")
print(f"log at {path}")
logging.getLogger("py4j.clientserver").info("NOISE py4j: Closing down clientserver connection")
"""


def run(tmp_path: Path, mode: str, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", SCRIPT, str(tmp_path / "logs"), str(ROOT), mode]
    return subprocess.run(command, timeout=300, cwd=tmp_path, **kwargs)


def plain_run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return run(tmp_path, mode, capture_output=True, text=True)


def test_quiet_terminal_and_full_log(tmp_path: Path) -> None:
    done = plain_run(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("full log: "), done.stderr
    assert [re.sub(r"\[\s*\d+s\] ", "[t] ", line) for line in lines[1:]] == [
        "[t] generating a synthetic Taobao world in /tmp/world",
        "[t] training esmm with 2 Ray Train workers",
        "        esmm seed 0: 2/3 epochs in 0s, valid ctr_auc 0.612/0.650 ctcvr_auc 0.640/0.640",
        "        warning: esmm ranks below chance",
    ], done.stderr
    assert not [n for n in NOISY if n in done.stderr + done.stdout]
    assert done.stdout.splitlines()[0] == "TABLE line"
    log = Path(lines[0].removeprefix("full log: "))
    assert done.stdout.splitlines()[1] == f"log at {log}"
    text = log.read_text()
    for noise in (
        "NOISE from print", "NOISE child", "WARN NOISE java-like", "NOISE fd 2",
        "NOISE FutureWarning", "NOISE bar", "PlacementGroupCleaner", "NOISE py4j",
        "NOISE detail: spark-submit", "NOISE py4j: Closing down",
    ):  # fmt: skip
        assert noise in text, noise
    assert "quickstart: training esmm with 2 Ray Train workers" in text


def test_terminal_shows_bars_and_nothing_else(tmp_path: Path) -> None:
    """On a terminal: one kept line per stage bar, per training bar and per warning; the
    redraws of a bar stay on its line (carriage returns, no newlines)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        done = run(tmp_path, "ok", stderr=secondary, stdout=subprocess.PIPE, text=True)
    finally:
        os.close(secondary)
    screen = b""
    try:
        while chunk := os.read(primary, 65536):
            screen += chunk
    except OSError:  # EIO: the child closed its side
        pass
    os.close(primary)
    text = screen.decode(errors="replace").replace("\r\n", "\n")  # the pty's newline
    assert done.returncode == 0, text
    assert not [n for n in NOISY if n in text + done.stdout], text
    kept = [re.sub(r".*\r", "", line).strip() for line in text.split("\n") if line.strip()]
    assert len(kept) == 4, kept  # the log path, the world stage, the training, the warning
    assert kept[0].startswith("full log: ")
    assert "generating a synthetic Taobao world" in kept[1]
    assert re.search(
        r"esmm seed 0 .* 2/3 epochs \[\d\d:\d\d\], valid ctr_auc 0\.650 ctcvr_auc 0\.640", kept[2]
    )
    assert kept[3] == "warning: esmm ranks below chance"


def test_failure_prints_the_log_tail(tmp_path: Path) -> None:
    done = plain_run(tmp_path, "fail")
    assert done.returncode == 1
    assert "failed: RuntimeError: boom" in done.stderr
    assert "NOISE child" in done.stderr  # the tail of the log
    assert "TABLE line" not in done.stdout
    assert done.stderr.count("Traceback") == 1  # in the tail only


def test_epochs_text() -> None:
    from train.console import epochs_text

    rows = [{"valid_ctr_auc": 0.61, "valid_cvr_auc": 0.5}, {"valid_ctr_auc": 0.7}]
    assert epochs_text(rows) == "valid ctr_auc 0.610/0.700 cvr_auc 0.500/nan"
    assert epochs_text([{"train_loss": 0.25}]) == "train_loss 0.2500"


LINES_SCRIPT = """
import logging, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from train import console

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
with console.quiet(Path(sys.argv[1]), "simulate", ("train.sim.loop",)):
    logging.getLogger("train.sim.loop").info("seed 0 round 1 greedy: purchases 3")
    logging.getLogger("train.sim.arms").info("NOISE another train logger's info")
    logging.getLogger("quickstart.detail").info("NOISE detail")
    print("NOISE from print")
print("TABLE line")
"""


def test_line_loggers_show_their_info_records(tmp_path: Path) -> None:
    """The simulation's terminal: the loop logger's INFO records as lines, nothing else."""
    command = [sys.executable, "-c", LINES_SCRIPT, str(tmp_path / "logs"), str(ROOT)]
    done = subprocess.run(command, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    log = Path(lines[0].removeprefix("full log: "))
    assert log.parent == tmp_path / "logs" and log.name.startswith("simulate-"), lines
    assert [re.sub(r"\[\s*\d+s\] ", "[t] ", line) for line in lines[1:]] == [
        "[t] seed 0 round 1 greedy: purchases 3"
    ], done.stderr
    assert done.stdout == "TABLE line\n"
    assert "NOISE another train logger's info" in log.read_text()
