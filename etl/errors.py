"""One-line errors for the CLIs: bad input is reported as one line and exit code 2.

Spark and Delta report a user's mistake (an output path under a file, a folder that cannot be
written, a path that is not a Delta table) as a Java stack trace of a hundred lines; the error
classes below are recognised in it and reported as one line naming the path. Any other
exception is a bug or an outage and keeps its traceback (exit 1).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# (marker in the Java message, what it means for the user)
USER_CAUSES = (
    ("DELTA_CANNOT_CREATE_LOG_PATH", "cannot create the Delta table there"),
    ("ParentNotDirectoryException", "a parent of the path is a file, not a folder"),
    ("AccessDeniedException", "permission denied"),
    ("Permission denied", "permission denied"),
    ("DELTA_MISSING_DELTA_TABLE", "not a Delta table"),
    ("DELTA_TABLE_NOT_FOUND", "not a Delta table"),
    ("PATH_NOT_FOUND", "the path does not exist"),
)


class SetupError(RuntimeError):
    """The job's environment is incomplete (e.g. the Delta jars are not on the classpath)."""


def run_cli(fn: Callable[[], int]) -> int:
    from etl.sources.base import InputError

    try:
        return fn()
    except (InputError, FileNotFoundError, ValueError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = user_cause(exc)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2


def user_cause(exc: BaseException) -> str | None:
    """One line for a Spark/Delta exception with a user cause, else None."""
    text = str(exc)
    for marker, meaning in USER_CAUSES:
        if marker in text:
            return f"{meaning}: {_detail(text, marker)}"
    return None


def _detail(text: str, marker: str) -> str:
    """The Java message's line holding ``marker``, without the exception class prefix."""
    line = next(line for line in text.splitlines() if marker in line)
    line = re.sub(r"^[:\s]*([\w.$]+(Exception|Error):\s*)+", "", line.strip())
    return line.replace(f"[{marker}] ", "").strip()
