"""One-line errors for the CLIs: a user-caused failure is one line on stderr and exit code 2.

The rule, applied by ``run_cli`` to every job in jobs/ (the one place it lives):

- exit 2 with ``error: <one line>`` when the failure has a user cause the user can fix:
  the project's refusal classes (``InputError``, ``SetupError``, ``OptionError``,
  ``SnapshotError``, plus the classes a job passes in ``user_errors``, e.g. train's
  ``ConfigError`` or rank's ``RankError``); an OS error on a path the user named (missing, not a
  folder, a folder, permission denied); a ``SystemExit`` carrying a message; an MLflow error with
  a user cause (no such model or version, bad parameter, unauthenticated or forbidden, see
  ``MLFLOW_USER_CODES``); a Spark/Delta exception whose Java message carries a user cause
  (``USER_CAUSES``: an output path under a file, a folder that cannot be written, a path that is
  not a Delta table). Spark and Delta report these as a Java stack trace of a hundred lines; the
  markers are recognised in it and reported as one line naming the path.
- anything else is a bug or an outage and keeps its traceback (exit 1).

Jobs check their paths and options before heavy work (Spark, Ray, an MLflow run), so the one line
comes before any write; ``require_dir`` is that check for a folder a job writes into.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

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
# MlflowException.error_code values that name the user's mistake (not an outage)
MLFLOW_USER_CODES = frozenset(
    {
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "INVALID_PARAMETER_VALUE",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    }
)
# OS errors about a path the user named
PATH_ERRORS = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
)


class SetupError(RuntimeError):
    """The job's environment is incomplete (e.g. the Delta jars are not on the classpath)."""


class OptionError(ValueError):
    """An option names something the job cannot use (e.g. a folder that is a file)."""


def run_cli(fn: Callable[[], int], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a job's body under the rule of the module docstring; its exit code."""
    from etl.delta_log import SnapshotError
    from etl.sources.base import InputError

    logging.getLogger("py4j").setLevel(logging.WARNING)  # no chatter after a one-line error
    known = (InputError, SetupError, OptionError, SnapshotError, *PATH_ERRORS, *user_errors)
    try:
        return fn()
    except known as exc:
        return _refuse(str(exc) or type(exc).__name__)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        return _refuse(exc.code.removeprefix("error: "))
    except Exception as exc:
        cause = user_cause(exc)
        if cause is None:
            raise
        return _refuse(cause)


def _refuse(message: str) -> int:
    line = next((x.strip() for x in message.splitlines() if x.strip()), message)
    print(f"error: {line}", file=sys.stderr, flush=True)
    return 2


def require_dir(path: str | Path, option: str) -> Path:
    """The local folder ``path`` (created if missing) once it can be written, else OptionError."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"{option} {path} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".isrec_write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OptionError(f"{option} {path} cannot be written: {exc.strerror or exc}") from None
    return folder


def user_cause(exc: BaseException) -> str | None:
    """One line for a Spark/Delta or MLflow exception with a user cause, else None."""
    if getattr(exc, "error_code", None) in MLFLOW_USER_CODES:  # an MlflowException
        return str(getattr(exc, "message", exc))
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
