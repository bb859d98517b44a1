"""Rank one or more raw requests with a registered model and print the response as JSON.

    python jobs/rank.py --model-uri models:/isrec-rnn_mtl@champion --request request.json \
        [--policy incentive:0.5] [--k 10] [--seed 0]

A request: {"user_id": 1, "time": 1494032400, "pid": "430548_1007", "candidates": [...],
"events": [{"time": ..., "btag": "pv", "cate": ..., "brand": ...}], "profile": {...}}
(train/serving.py). The response is what `mlflow models serve` answers for the same payload:
per request the ranked candidates with pctr, pcvr, pctcvr, expected_views, score, their
probability under the policy, the chosen ad and its propensity. Exit 2 with one line for a bad
option, file or request. Options: train/rank_config.py (``--help``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # stderr: the error line alone
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.cli import parse  # noqa: E402
from etl.errors import run_cli  # noqa: E402
from train.rank_config import RankConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse(RankConfig, argv, description=__doc__.split("\n")[0])
    from train.rank import RankError, rank_file

    return run_cli(lambda: print(json.dumps(rank_file(cfg))) or 0, user_errors=(RankError,))


if __name__ == "__main__":
    sys.exit(main())
