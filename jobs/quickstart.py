"""The main job on the embedded default: world -> ETL (spark-submit) -> Ray Train -> MLflow.

    python jobs/quickstart.py                       # synthetic Taobao world of default size
    python jobs/quickstart.py --source user_behavior --input DIR   # your copy of public data

A second run reuses the world, the lake (same input and options) and the trained models (same
data version and training options), so it neither duplicates data nor registry versions.
The terminal shows one bar (in a pipe: one line) per stage and per training (train/console.py);
every log goes to DATA_DIR/logs/quickstart-<time>.log, whose path is printed. Stdout ends with
the comparison table, the MLflow UI links and the log's path; --result-json FILE also writes the
rows, each step's seconds and the load as JSON (tests/benchmarks/quickstart.json).
Options and why their defaults differ from jobs/train.py's: train/quickstart.py (``--help``).
"""

from __future__ import annotations

import json
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
from etl.errors import require_dir, run_cli  # noqa: E402
from train.console import quiet  # noqa: E402
from train.quickstart import QuickstartConfig, run_quickstart  # noqa: E402
from train.tracking.store import ui_links  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse(QuickstartConfig, argv, description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_cli(lambda: _run(cfg))


def _run(cfg: QuickstartConfig) -> int:
    require_dir(cfg.data_dir, "--data-dir")  # one line, not the log tail, for a bad folder
    with quiet(Path(cfg.data_dir).resolve() / "logs") as log_path:
        result = run_quickstart(cfg)
        links = ui_links(os.environ["MLFLOW_TRACKING_URI"], cfg.experiment)  # logs go to the log
    if cfg.result_json:
        Path(cfg.result_json).write_text(json.dumps(result.to_json(cfg), indent=2) + "\n")
    print(result.report())
    print(links)
    print(f"full log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
