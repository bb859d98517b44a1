"""Batch scoring inside Spark (spark_udf) -> Delta scores equal the pyfunc's own predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import PROJECT_ROOT, champion, mlflow_env  # noqa: F401

from etl.score import OUTPUTS, score_samples
from etl.spark import delta_jar_paths
from train import pyfunc
from train.tracking.store import configure


def read_scores(spark, path) -> pd.DataFrame:
    frame = spark.read.format("delta").load(str(path)).toPandas()
    return frame.sort_values("impression_id").reset_index(drop=True)


def expected_scores(model_uri: str, rows: pd.DataFrame, spec) -> pd.DataFrame:
    rows = rows.sort_values("impression_id").reset_index(drop=True)
    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pyfunc.input_example(rows, spec, n=len(rows)))


def assert_same(scores: pd.DataFrame, expected: pd.DataFrame) -> None:
    for col in OUTPUTS:
        np.testing.assert_allclose(scores[col], expected[col], rtol=0, atol=1e-6, err_msg=col)


@pytest.fixture(scope="module")
def scores_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scores") / "scores"


def test_score_samples_matches_pyfunc_and_overwrites(spark, champion, scores_path):  # noqa: F811
    configure(champion.tracking_uri)
    first = score_samples(spark, champion.champion_uri, champion.lake, "test", scores_path)
    assert first.model_version == champion.version
    assert first.model_uri == f"models:/{champion.registered_model}/{champion.version}"
    test = champion.test_rows()
    scores = read_scores(spark, scores_path)
    assert scores["impression_id"].tolist() == sorted(test["impression_id"])
    assert set(scores["split"]) == {"test"} and set(scores["model_version"]) == {champion.version}
    assert set(scores["samples_version"]) == {0}
    assert_same(scores, expected_scores(first.model_uri, test, champion.spec))
    # a rerun replaces the split: same rows, one more Delta version, no duplicates
    again = score_samples(spark, champion.champion_uri, champion.lake, "test", scores_path)
    assert again.delta_version == first.delta_version + 1
    rescored = read_scores(spark, scores_path)
    assert len(rescored) == len(test) == rescored["impression_id"].nunique()
    assert_same(rescored, scores)


def test_spark_submit_job(spark, champion, tmp_path):  # noqa: F811
    """The real entry point: spark-submit jobs/score.py adds the valid split beside test.

    The test split is written first in-process into this test's own table, so the job must keep
    it: a job that overwrote the whole table instead of its split would lose those rows."""
    scores_path = tmp_path / "scores"
    configure(champion.tracking_uri)
    score_samples(spark, champion.champion_uri, champion.lake, "test", scores_path)
    env = mlflow_env(champion.tracking_uri)
    env |= {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    submit = PROJECT_ROOT / ".venv" / "bin" / "spark-submit"
    cmd = [str(submit) if submit.exists() else "spark-submit", "--master", "local[2]"]
    cmd += ["--jars", ",".join(str(p) for p in delta_jar_paths())]
    cmd += ["--conf", "spark.sql.shuffle.partitions=4", str(PROJECT_ROOT / "jobs" / "score.py")]
    cmd += ["--model-uri", champion.champion_uri, "--lake", str(champion.lake)]
    cmd += ["--split", "valid", "--output", str(scores_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rows of split valid" in done.stdout
    scores = read_scores(spark, scores_path)
    frame = champion.frame
    expected_rows = {s: int((frame.split == s).sum()) for s in ("test", "valid")}
    assert min(expected_rows.values()) > 0
    assert scores.groupby("split").size().to_dict() == expected_rows
    assert scores["impression_id"].is_unique
    rows = frame[frame.split.isin(list(expected_rows))]
    assert_same(scores, expected_scores(champion.champion_uri, rows, champion.spec))
