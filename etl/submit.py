"""Run a job script of this project through this interpreter's ``spark-submit``, Delta included.

Delta comes from the cached jars (``--jars``) when present, else from Maven (``--packages``);
the driver and the Python workers run this interpreter (the venv), whose bin/ is put first on
PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from etl.spark import DELTA_PACKAGE, delta_jar_paths, delta_jars_present


def submit_command(
    script: Path, args: Sequence[str], master: str = "local[2]", driver_memory: str = "4g"
) -> list[str]:
    """The spark-submit command line running ``script`` with ``args``."""
    jars = (
        ["--jars", ",".join(str(p) for p in delta_jar_paths())]
        if delta_jars_present()
        else ["--packages", DELTA_PACKAGE]
    )
    submit = Path(sys.executable).parent / "spark-submit"
    options = ["--master", master, "--driver-memory", driver_memory, *jars]
    return [str(submit), *options, str(script), *args]


def submit_env() -> dict[str, str]:
    """This process's environment with the venv's bin/ first and its Python for the workers."""
    venv_bin = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
    }


def spark_submit(command: list[str]) -> None:
    """Run a command of ``submit_command``; CalledProcessError when it fails."""
    subprocess.run(command, check=True, env=submit_env())
