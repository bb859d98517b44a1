"""The software a run ran with: Python, platform, package versions and the git commit.

Logged as tags ``isrec.env.<name>`` (plus MLflow's own ``mlflow.source.git.commit``) and as
``environment/environment.json``. The commit and whether the work tree had uncommitted changes
to tracked files come from ``git`` in ``etl.project.PROJECT_ROOT``; outside a checkout they are
left out.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

import mlflow

from etl.project import PROJECT_ROOT
from train.tracking.store import TAG

ENV_PACKAGES = (
    "torch",
    "ray",
    "pyspark",
    "delta-spark",
    "petastorm",
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
)


def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ENV_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            env[pkg] = version(pkg)
    env |= git_info()
    return env


def git_info() -> dict[str, str]:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(git("status", "--porcelain", "-uno")))}


def log_environment() -> None:
    env = environment()
    tags = {f"{TAG}env.{k}": v for k, v in env.items()}
    if "git_commit" in env:
        tags["mlflow.source.git.commit"] = env["git_commit"]
    mlflow.set_tags(tags)
    mlflow.log_dict(env, "environment/environment.json")
