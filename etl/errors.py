"""One-line errors for the CLIs: bad input is reported as one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_cli(fn: Callable[[], int]) -> int:
    from etl.sources.base import InputError

    try:
        return fn()
    except (InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
