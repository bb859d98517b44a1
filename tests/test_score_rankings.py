"""Batch scoring with a policy: per-session rankings in Delta, by policy, seeded, rerunnable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.lake import read_table
from etl.score import rank_sessions, score_samples
from train.rank import RankError, slate_ranker
from train.tracking.store import configure


@pytest.fixture(scope="module")
def scored(spark, ranker, tmp_path_factory):
    configure(ranker.tracking_uri)
    out = tmp_path_factory.mktemp("scored") / "scores"
    score_samples(spark, ranker.model_uri, ranker.lake, "test", out)
    return out


def rankings(spark, path) -> pd.DataFrame:
    return spark.read.format("delta").load(str(path)).toPandas()


def test_greedy_ranks_each_session_by_pctcvr(spark, ranker, scored, tmp_path):
    out = tmp_path / "rankings"
    result = rank_sessions(
        spark, scored, ranker.lake, "test", slate_ranker("greedy", None, 0), "greedy", out
    )
    ranked = rankings(spark, out)
    scores = spark.read.format("delta").load(str(scored)).toPandas()
    assert result.rows == len(ranked) == len(scores) == ranked["impression_id"].nunique()
    sessions = read_table(spark, ranker.lake, "impressions").select("impression_id", "session_id")
    expected = sessions.toPandas().set_index("impression_id")["session_id"]
    assert (ranked.set_index("impression_id")["session_id"].sort_index()
            .equals(expected.loc[sorted(ranked.impression_id)].sort_index()))  # fmt: skip
    merged = ranked.merge(scores[["impression_id", "pctcvr"]], on="impression_id")
    multi = 0
    for _, slate in merged.groupby(["user_key", merged.session_id.fillna(-merged.impression_id)]):
        assert sorted(slate["rank"]) == list(range(1, len(slate) + 1))
        by_rank = slate.sort_values("rank")
        assert by_rank.pctcvr.is_monotonic_decreasing
        assert by_rank.chosen.tolist() == [True] + [False] * (len(slate) - 1)
        assert by_rank.probability.tolist() == [1.0] + [0.0] * (len(slate) - 1)
        multi += len(slate) > 1
    assert multi > 0, "the world must have sessions with several impressions"
    # a rerun replaces the split: no duplicates, one more version
    again = rank_sessions(
        spark, scored, ranker.lake, "test", slate_ranker("greedy", None, 0), "greedy", out
    )
    assert again.delta_version == result.delta_version + 1 and again.rows == result.rows


def test_softmax_rankings_are_seeded_probabilities(spark, ranker, scored, tmp_path):
    def run(seed: int, name: str) -> pd.DataFrame:
        path = tmp_path / name
        rank_sessions(
            spark,
            scored,
            ranker.lake,
            "test",
            slate_ranker("softmax:0.01", 0.5, seed),
            "softmax",
            path,
        )
        return rankings(spark, path).sort_values("impression_id", ignore_index=True)

    first, same = run(1, "a"), run(1, "b")
    assert first[["rank", "probability"]].equals(same[["rank", "probability"]])
    totals = first.groupby(
        ["user_key", first.session_id.fillna(-first.impression_id)]
    ).probability.sum()
    np.testing.assert_allclose(totals, 1.0)
    assert set(first.policy) == {"softmax"}


def test_policy_options_are_checked_before_spark():
    for bad, words in [("best", "unknown policy"), ("oracle", "truth"), ("uniform", "beta")]:
        with pytest.raises(RankError, match=words):
            slate_ranker(bad, 0.5 if bad == "uniform" else None, 0)


def test_score_job_refuses_a_bad_policy_in_one_line(tmp_path):
    import subprocess
    import sys

    from helpers_mlflow import PROJECT_ROOT

    cmd = [sys.executable, str(PROJECT_ROOT / "jobs" / "score.py"), "--model-uri", "models:/x@y"]
    cmd += ["--lake", str(tmp_path), "--policy", "softmax:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "temperature must be > 0" in done.stderr
