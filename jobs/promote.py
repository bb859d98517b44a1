"""Promote the challenger of a registered model to champion when it wins (train/registry.py).

    python jobs/promote.py --model-name isrec-rnn_mtl [--metric ctcvr_auc] [--version N]
        [--min-delta 0.0] [--tracking-uri URI] [--json] [--fail-if-refused]

Prints the decision. Exit 0 whether promoted or refused (1 with --fail-if-refused when
refused), 2 when the registered model or version does not exist.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# `python jobs/x.py` puts jobs/ first on sys.path, where jobs/train.py would shadow the train
# package: import the project's packages from the project root instead.
_JOBS = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS]
sys.path.insert(0, str(_JOBS.parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-name", required=True, help="isrec-<model> or <model>")
    parser.add_argument("--metric", default="ctcvr_auc", help="test metric that decides")
    parser.add_argument("--version", default=None, help="challenger version (default @challenger)")
    parser.add_argument("--min-delta", type=float, default=0.0, help="required improvement")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or local"
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.add_argument("--fail-if-refused", action="store_true", help="exit 1 when refused")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from mlflow.exceptions import MlflowException

    from train.registry import promote

    try:
        decision = promote(
            args.model_name,
            args.metric,
            version=args.version,
            min_delta=args.min_delta,
            tracking_uri=args.tracking_uri,
        )
    except MlflowException as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(decision.to_json() if args.json else decision.summary())
    return 1 if args.fail_if_refused and not decision.promoted else 0


if __name__ == "__main__":
    sys.exit(main())
