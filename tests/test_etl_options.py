"""Options and splits are checked before the first write: a bad one is one line (exit 2 for the
job) and leaves a good lake exactly as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_infra import ROOT, generate_world

from etl.config import EtlConfig
from etl.delta_log import latest_version
from etl.pipeline import run_etl
from etl.sources.base import InputError
from etl.spec import FeatureSpec

PROBES = [
    (["--gap-minutes", "-5"], "--gap-minutes must be > 0"),
    (["--max-len", "0"], "--max-len must be >= 1"),
    (["--test-start", "2017/05/08"], "--test-start must be a date YYYY-MM-DD"),
    (["--test-start", "2017-5-8"], "--test-start must be a date YYYY-MM-DD"),
    (["--min-count", "0"], "--min-count must be >= 1"),
    (["--max-quarantine-share", "1.5"], "--max-quarantine-share"),
    (["--tz-offset-hours", "30"], "--tz-offset-hours"),
]


@pytest.mark.parametrize(("args", "words"), PROBES, ids=[p[0][0] + p[0][1] for p in PROBES])
def test_nonsense_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, words):
    lake = tmp_path / "lake"
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "etl.py"), "--input", str(tmp_path), "--output"]
        + [str(lake), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    assert not lake.exists()


def test_bad_splits_fail_before_any_write(spark, tmp_path):
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    generate_world(raw, users=60, seed=3)
    run_etl(spark, EtlConfig(input=str(raw), output=str(lake), max_len=5))
    tables = ("bronze_raw_sample", "events", "sessions", "vocab", "impressions", "samples")
    before = {t: latest_version(lake / t)[0] for t in tables}
    spec_before = (lake / "_feature_spec.json").read_text()
    for test_start, words in (("1999-01-01", "no train days left"), ("2030-01-01", "empty")):
        with pytest.raises((InputError, ValueError), match=words):
            run_etl(spark, EtlConfig(input=str(raw), output=str(lake), test_start=test_start))
        after = {t: latest_version(lake / t)[0] for t in tables}
        assert after == before, test_start
        assert (lake / "_feature_spec.json").read_text() == spec_before
    assert FeatureSpec.load(lake).tables["samples"] == before["samples"]


def spark_submit_etl(raw, lake, jars: bool) -> subprocess.CompletedProcess:
    from etl.spark import delta_jar_paths

    venv = ROOT / ".venv" / "bin"
    cmd = [str(venv / "spark-submit"), "--master", "local[1]"]
    if jars:
        cmd += ["--jars", ",".join(map(str, delta_jar_paths()))]
    cmd += [str(ROOT / "jobs" / "etl.py"), "--input", str(raw), "--output", str(lake)]
    env = {
        **os.environ,
        "PATH": f"{venv}:{os.environ['PATH']}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]


def test_spark_and_delta_user_errors_are_one_line(tmp_path):
    raw = tmp_path / "raw"
    generate_world(raw, users=30, seed=1)
    (tmp_path / "afile").write_text("not a folder\n")
    under_a_file = spark_submit_etl(raw, tmp_path / "afile" / "lake", jars=True)
    assert under_a_file.returncode == 2, under_a_file.stderr[-3000:]
    assert error_lines(under_a_file) == [
        f"error: cannot create the Delta table there: Cannot create file:{tmp_path}/afile/lake/"
        "bronze_raw_sample/_delta_log"
    ]
    assert "Traceback" not in under_a_file.stdout + under_a_file.stderr
    no_jars = spark_submit_etl(raw, tmp_path / "lake", jars=False)
    assert no_jars.returncode == 2, no_jars.stderr[-3000:]
    (line,) = error_lines(no_jars)
    assert "Delta Lake jars are not on the Spark classpath" in line and "--packages" in line
    assert "Traceback" not in no_jars.stdout + no_jars.stderr
    assert not (tmp_path / "lake").exists()


def test_user_cause_of_a_java_message():
    from etl.errors import user_cause

    java = (
        "An error occurred while calling o12.save.\n"
        ": org.apache.spark.sql.delta.DeltaIOException: [DELTA_CANNOT_CREATE_LOG_PATH] Cannot "
        "create file:/x/_delta_log\n\tat org.apache.spark.sql.delta.X(X.scala:1)"
    )
    assert user_cause(RuntimeError(java)) == (
        "cannot create the Delta table there: Cannot create file:/x/_delta_log"
    )
    assert user_cause(RuntimeError("NullPointerException in the planner")) is None


def test_output_folder_of_other_files_is_refused(spark, tmp_path):
    """A folder that holds anything but a lake's tables (or a file) is not written into."""
    raw = tmp_path / "raw"  # never read: the output is refused first
    raw.mkdir()
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(
        InputError, match=r"holds 1 entries that are not a lake's tables \(e.g. 'notes.txt'\)"
    ):
        run_etl(spark, EtlConfig(input=str(raw), output=str(folder)))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_etl(spark, EtlConfig(input=str(raw), output=str(folder / "notes.txt")))
