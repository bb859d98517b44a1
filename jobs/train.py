"""Train a model on a lake with Ray Train; the last stdout line is one JSON object of metrics.

    python jobs/train.py --lake data/lake --model rnn_mtl --num-workers 2 --epochs 5
    ray job submit --working-dir . -- python jobs/train.py --lake /shared/lake --seeds 3

Options: train/train_config.py (``--help``, ``--config FILE``, ``--param KEY=VALUE``). Exit
codes: 0 done, 2 configuration error (one line on stderr, nothing started), 1 training failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# `python jobs/train.py` puts jobs/ first on sys.path, where this file would shadow the train
# package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from train.train_config import TrainConfig, parse_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    from etl.errors import run_cli
    from train.preflight import ConfigError  # torch and Ray once the options are good

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    return run_cli(lambda: _run(cfg), user_errors=(ConfigError,))


def _run(cfg: TrainConfig) -> int:
    from train.driver import train_and_log
    from train.preflight import preflight

    preflight(cfg)  # one clear line for a bad lake, spec or model, before Ray or MLflow
    result = train_and_log(cfg)
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
