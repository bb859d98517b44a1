"""Promote the challenger of a registered model to champion when it wins (train/registry.py).

    python jobs/promote.py --model-name isrec-rnn_mtl [--metric ctcvr_auc] [--version N]
        [--min-delta 0.0] [--tracking-uri URI] [--json] [--fail-if-refused]

Prints the decision. Exit 0 whether promoted or refused (1 with --fail-if-refused when
refused), 2 when the registered model or version does not exist. Options:
train/promote_config.py (``--help``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # stderr: the error line alone
# `python jobs/x.py` puts jobs/ first on sys.path, where jobs/train.py would shadow the train
# package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))

from etl.cli import parse  # noqa: E402
from etl.errors import run_cli  # noqa: E402
from train.promote_config import PromoteConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse(PromoteConfig, argv, description=__doc__.split("\n")[0])
    return run_cli(lambda: _run(cfg))


def _run(cfg: PromoteConfig) -> int:
    from train.registry import promote

    decision = promote(
        cfg.model_name,
        cfg.metric,
        version=cfg.version,
        min_delta=cfg.min_delta,
        tracking_uri=cfg.tracking_uri,
    )
    print(decision.to_json() if cfg.json else decision.summary())
    return 1 if cfg.fail_if_refused and not decision.promoted else 0


if __name__ == "__main__":
    sys.exit(main())
