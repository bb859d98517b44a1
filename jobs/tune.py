"""Search a model's and its optimizer's settings with Ray Tune; each trial is a Ray Train run.

    python jobs/tune.py --lake data/lake/world --model rnn_mtl --trials 8 --epochs 4
    python jobs/train.py --config data/tune/<name>/best_config.json    # train the best one

Options: every option of jobs/train.py (the base of each trial) plus train/tune_config.py's
(``--trials``, ``--space KEY=SPEC``, ``--scheduler``, ...; ``--help``). Prints the path of the
best config; the last stdout line is one JSON object (best metric, config path, MLflow run id).
Exit codes: 0 done, 2 configuration error (one line on stderr, nothing started), 1 search failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# `python jobs/tune.py` puts jobs/ first on sys.path, where jobs/train.py would shadow the train
# package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from train.train_config import TrainConfig  # noqa: E402
from train.tune_config import TuneJobConfig, parse_tune_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    base, search = parse_tune_config(argv)
    from etl.errors import run_cli
    from train.preflight import ConfigError  # torch and Ray once the options are good

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    return run_cli(lambda: _run(base, search), user_errors=(ConfigError,))


def _run(base: TrainConfig, search: TuneJobConfig) -> int:
    from train.tune import check, run_tune

    plan = check(base, search)  # one clear line before Ray or MLflow starts
    result = run_tune(plan)
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
