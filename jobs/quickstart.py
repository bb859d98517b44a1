"""The main job on the embedded default: world -> ETL (spark-submit) -> Ray Train -> MLflow.

    python jobs/quickstart.py                       # synthetic Taobao world of default size
    python jobs/quickstart.py --source user_behavior --input DIR   # your copy of public data

A second run reuses the world, the lake (same input and options) and the trained models (same
data version and training options), so it neither duplicates data nor registry versions.
The terminal shows one line per stage and a bar per training (train/console.py); every log goes
to DATA_DIR/logs/quickstart-<time>.log, whose path is printed. Stdout ends with the comparison
table and the MLflow UI links.
Options and why their defaults differ from jobs/train.py's: train/quickstart.py (``--help``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# `python jobs/quickstart.py` puts jobs/ first on sys.path, where jobs/train.py would shadow the
# train package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.cli import parse  # noqa: E402
from train.console import quiet  # noqa: E402
from train.quickstart import QuickstartConfig, run_quickstart  # noqa: E402
from train.tracking.store import ui_links  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse(QuickstartConfig, argv, description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with quiet(Path(cfg.data_dir).resolve() / "logs") as log_path:
        report = run_quickstart(cfg)
    print(report)
    print(ui_links(os.environ["MLFLOW_TRACKING_URI"], cfg.experiment))
    print(f"full log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
