"""Raw ranking requests end to end: the logged model encodes them with its feature bundle and
ranks by the policy, in-process, through jobs/rank.py and through a real `mlflow models serve`
process, which answers every kind of bad request with HTTP 400 naming the problem."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import PROJECT_ROOT, mlflow_env, post_invocations, serve_model
from helpers_requests import BAD_REQUESTS, world_request

from train import pyfunc, serving
from train.tracking.store import configure

SLATE = 12


def raw_request(ranker, row: pd.Series, others: list[int]) -> dict:
    """The user's behaviors before the impression (raw behavior_log) in a raw request."""
    behaviors = pd.read_csv(ranker.world / "behavior_log.csv")
    mine = behaviors[(behaviors.user == row.user) & (behaviors.time_stamp < row.time_stamp)]
    return world_request(ranker.world, row, mine.sort_values("time_stamp", kind="stable"), others)


def frame_of(requests: list[dict]) -> pd.DataFrame:
    """A frame of copies: MLflow's schema enforcement converts nested lists in place."""
    return pd.DataFrame(copy.deepcopy(requests))


@pytest.fixture(scope="module")
def requests_(ranker) -> list[dict]:
    """Requests for test-day impressions whose (user, second) is unique in the raw log."""
    raw = pd.read_csv(ranker.world / "raw_sample.csv")
    test_day = ranker.spec.splits["test"][0]
    day = pd.to_datetime(raw.time_stamp + 8 * 3600, unit="s").dt.strftime("%Y-%m-%d")
    unique = raw[(day == test_day) & ~raw.duplicated(["user", "time_stamp"], keep=False)]
    ads = pd.read_csv(ranker.world / "ad_feature.csv").adgroup_id.tolist()
    return [raw_request(ranker, row, ads[:SLATE]) for _, row in unique.head(6).iterrows()]


@pytest.fixture(scope="module")
def model(ranker):
    configure(ranker.tracking_uri)
    return mlflow.pyfunc.load_model(ranker.model_uri)


def test_raw_requests_score_like_the_samples_rows(ranker, model, requests_) -> None:
    responses = model.predict(frame_of(requests_))
    samples = ranker.samples
    encoded = pyfunc.input_example(samples, ranker.spec, n=len(samples))
    expected = model.predict(encoded)
    for request, response in zip(requests_, responses, strict=True):
        shown = next(r for r in response["ranking"] if r["ad_id"] == request["candidates"][0])
        (row,) = np.flatnonzero(
            (samples.user_key == request["user_id"]) & (samples.ts == request["time"])
        )
        for key in ("pctr", "pcvr", "pctcvr", "expected_views"):
            assert shown[key] == pytest.approx(float(expected[key][row]), abs=1e-6), key


def test_requests_scored_together_equal_one_at_a_time(model, requests_) -> None:
    """One forward pass for the whole batch (the GRU once per distinct history row) gives
    what scoring each request alone gives."""
    inner = model.unwrap_python_model()
    parsed = serving.parse_requests(frame_of(requests_))
    together = serving.SlateScorer(inner.model, inner.bundle)(parsed)
    alone = serving.SlateScorer(inner.model, inner.bundle, max_rows=1)(parsed)
    assert len(together) == len(alone) == len(requests_)
    for a, b, request in zip(together, alone, requests_, strict=True):
        assert len(a["pctr"]) == len(request["candidates"]) > 1
        for key in serving.SCORED:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_chunks_of_requests() -> None:
    assert serving._chunks([3, 3, 3], 6) == [[0, 1], [2]]
    assert serving._chunks([7, 2, 2], 6) == [[0], [1, 2]]
    assert serving._chunks([], 6) == []


def test_policies_rank_the_slate(model, requests_) -> None:
    frame = frame_of(requests_[:2])
    greedy = model.predict(frame)
    for request, response in zip(requests_[:2], greedy, strict=True):
        pctcvr = [r["pctcvr"] for r in response["ranking"]]
        assert pctcvr == sorted(pctcvr, reverse=True) and response["propensity"] == 1.0
        assert sorted(r["ad_id"] for r in response["ranking"]) == sorted(request["candidates"])
    same = model.predict(frame, params={"policy": "incentive", "beta": 0.0})
    assert [r["ranking"] for r in same] == [r["ranking"] for r in greedy]
    boosted = model.predict(frame, params={"policy": "incentive", "beta": 10.0, "k": 3})
    for response in boosted:
        assert len(response["ranking"]) == 3
        top = response["ranking"][0]
        assert top["score"] == pytest.approx(top["pctcvr"] + 10.0 * top["expected_views"])
    soft = model.predict(frame, params={"policy": "softmax:0.01", "seed": 4})
    for response in soft:
        assert sum(r["probability"] for r in response["ranking"]) == pytest.approx(1.0)
        assert response["ranking"][0]["ad_id"] == response["chosen"]


def test_rank_job_prints_the_response(ranker, model, requests_, tmp_path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(requests_[0]))
    cmd = [sys.executable, str(PROJECT_ROOT / "jobs" / "rank.py"), "--model-uri", ranker.model_uri]
    cmd += ["--request", str(path), "--policy", "incentive:0.5", "--k", "5"]
    done = subprocess.run(
        cmd, env=mlflow_env(ranker.tracking_uri), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    local = model.predict(frame_of([requests_[0]]), params={"policy": "incentive:0.5", "k": 5})
    assert printed == json.loads(json.dumps(local))
    path.write_text(json.dumps({**requests_[0], "candidates": []}))
    bad = subprocess.run(
        cmd, env=mlflow_env(ranker.tracking_uri), capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "empty slate" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# --- a real `mlflow models serve` ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server(ranker, tmp_path_factory) -> Iterator[str]:
    with serve_model(
        ranker.model_uri, ranker.tracking_uri, tmp_path_factory.mktemp("serve")
    ) as url:
        yield url


def post(url: str, payload: dict) -> tuple[int, dict]:
    return post_invocations(url, payload)


def test_served_raw_requests(server, model, requests_) -> None:
    params = {"policy": "incentive:0.2", "k": 4}
    status, body = post(server, {"dataframe_records": requests_[:3], "params": params})
    assert status == 200, body
    local = model.predict(frame_of(requests_[:3]), params=params)
    assert body["predictions"] == json.loads(json.dumps(local))


@pytest.mark.parametrize(
    ("change", "params", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_served_bad_requests_get_400(server, requests_, change, params, words) -> None:
    payload = {"dataframe_records": [change(requests_[0])], "params": params}
    status, body = post(server, payload)
    assert status == 400, (status, body)
    message = body.get("message", "")
    for word in words:
        assert word in message, message[:2000]
