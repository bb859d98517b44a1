"""Every job's user-caused failure is one line on stderr and exit code 2 (etl/errors.py run_cli).

Each job runs as a real subprocess (``python jobs/X.py``; the Spark jobs also under
``spark-submit``) with one bad input and must answer before any heavy work: exit 2, stderr one
non-empty ``error: ...`` line naming the problem, no traceback. Under spark-submit the JVM
launcher's own log4j lines (``yy/MM/dd HH:mm:ss INFO ...``) are not the job's and are set aside,
and the launcher relays the driver's stderr on its stdout, so both streams are read there.
A bug keeps its traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JVM_LOG = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARN) ")


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def job(name: str, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args])


def submit(name: str, *args: str) -> subprocess.CompletedProcess:
    spark_submit = str(Path(sys.executable).parent / "spark-submit")
    return run([spark_submit, "--master", "local[1]", str(ROOT / "jobs" / f"{name}.py"), *args])


def assert_one_line(done: subprocess.CompletedProcess, *words: str, jvm: bool = False) -> None:
    # spark-submit's PythonRunner copies the driver's stdout and stderr onto its own stdout
    text = done.stdout + done.stderr if jvm else done.stderr
    lines = [x for x in text.splitlines() if x.strip() and not (jvm and JVM_LOG.match(x))]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "error: " in lines[0] and all(w in lines[0] for w in words), lines[0]


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    """A file, an empty folder, a folder with a samples log but no feature spec, bad JSON."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "nospec" / "samples" / "_delta_log").mkdir(parents=True)
    (tmp_path / "bad.json").write_text("{not json")
    return {p.name: p for p in tmp_path.iterdir()} | {"missing": tmp_path / "missing"}


def test_etl_missing_input(paths):
    done = job("etl", "--input", str(paths["missing"]), "--output", str(paths["empty"] / "lake"))
    assert_one_line(done, "input path not found", str(paths["missing"]))
    assert not (paths["empty"] / "lake").exists()


def test_generate_out_under_a_file(paths):
    assert_one_line(job("generate", "--out", str(paths["afile"] / "w")), "--out", "afile")


@pytest.mark.parametrize(
    "lake, words",
    [("missing", "does not exist"), ("empty", "has no samples Delta table"), ("nospec", "spec")],
)
def test_train_on_a_path_that_is_not_a_lake(paths, lake, words):
    assert_one_line(job("train", "--lake", str(paths[lake]), "--epochs", "1"), words)


def test_tune_on_a_path_that_is_not_a_lake(paths):
    assert_one_line(job("tune", "--lake", str(paths["empty"])), "has no samples Delta table")


def test_score_on_a_lake_without_samples(paths):
    done = job("score", "--model-uri", "models:/isrec-esmm@champion", "--lake", str(paths["empty"]))
    assert_one_line(done, "no Delta table", str(paths["empty"] / "samples"))


def test_promote_a_model_that_is_not_registered(paths):
    store = f"sqlite:///{paths['empty'] / 'mlflow.db'}"
    done = job("promote", "--model-name", "isrec-nosuch", "--tracking-uri", store)
    assert_one_line(done, "isrec-nosuch", "not found")


@pytest.mark.parametrize("request_file, words", [("missing", "No such file"), ("bad.json", "")])
def test_rank_with_a_bad_request_file(paths, request_file, words):
    model = "models:/isrec-esmm@champion"
    done = job("rank", "--model-uri", model, "--request", str(paths[request_file]))
    assert_one_line(done, "cannot read requests", str(paths[request_file]), words)


@pytest.mark.parametrize("name", ["simulate", "quickstart"])
def test_data_dir_that_is_a_file(paths, name):
    done = job(name, "--data-dir", str(paths["afile"]))
    assert_one_line(done, "--data-dir", str(paths["afile"]), "is a file, not a folder")


def test_spark_jobs_under_spark_submit(paths):
    etl = submit("etl", "--input", str(paths["missing"]), "--output", str(paths["empty"] / "l"))
    assert_one_line(etl, "input path not found", jvm=True)
    model = "models:/isrec-esmm@champion"
    score = submit("score", "--model-uri", model, "--lake", str(paths["empty"]))
    assert_one_line(score, "no Delta table", jvm=True)


def raising(exc: BaseException) -> Callable[[], int]:
    def body() -> int:
        raise exc

    return body


def test_the_rule_in_process(capsys, tmp_path):
    """User causes -> one line, exit 2; a bug keeps its exception (and so its traceback)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    from etl.errors import OptionError, require_dir, run_cli

    gone = MlflowException("Registered Model with name=x not found\nmore", RESOURCE_DOES_NOT_EXIST)
    assert run_cli(raising(gone)) == 2
    assert capsys.readouterr().err == "error: Registered Model with name=x not found\n"
    assert run_cli(raising(SystemExit("error: input not found: x"))) == 2
    assert capsys.readouterr().err == "error: input not found: x\n"
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0)
    with pytest.raises(ValueError):  # not a user error unless the job says so
        run_cli(lambda: json.loads("{"))
    assert run_cli(lambda: json.loads("{"), user_errors=(ValueError,)) == 2
    capsys.readouterr()
    with pytest.raises(MlflowException):  # an outage is not the user's mistake
        run_cli(raising(MlflowException("boom", INTERNAL_ERROR)))
    (tmp_path / "f").write_text("")
    with pytest.raises(OptionError, match="is a file"):
        require_dir(tmp_path / "f", "--out")
    assert require_dir(tmp_path / "new" / "dir", "--out").is_dir()
