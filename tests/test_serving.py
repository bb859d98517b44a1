"""Online serving: a real `mlflow models serve` process scores one session's candidates and
answers bad requests with 4xx and a message that names the problem."""

from __future__ import annotations

import json
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import champion, post_invocations, serve_model  # noqa: F401

from train import pyfunc
from train.tracking.store import configure


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    with serve_model(
        champion.champion_uri, champion.tracking_uri, tmp_path_factory.mktemp("serve")
    ) as url:
        yield url


def post(url: str, payload: dict) -> tuple[int, dict]:
    return post_invocations(url, payload)


def session_candidates(champion, n: int = 4) -> pd.DataFrame:  # noqa: F811
    """One user's context and history, ``n`` candidate ads (JSON-friendly types)."""
    row = pyfunc.input_example(champion.test_rows(), champion.spec, n=1)
    frame = pd.concat([row] * n, ignore_index=True)
    frame["ad"] = [2 + i for i in range(n)]
    frame["cate"] = [2 + (i % 10) for i in range(n)]
    return frame.drop(columns=["hist_len"])


def split_payload(frame: pd.DataFrame) -> dict:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def test_scores_candidates(server, champion):  # noqa: F811
    frame = session_candidates(champion)
    status, body = post(server, split_payload(frame))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert list(served.columns) == list(pyfunc.OUTPUTS) and len(served) == len(frame)
    configure(champion.tracking_uri)
    local = mlflow.pyfunc.load_model(champion.champion_uri).predict(frame)
    for col in pyfunc.OUTPUTS:
        np.testing.assert_allclose(served[col], local[col], rtol=0, atol=1e-6)
    assert served["score"].nunique() > 1  # candidates are ranked apart
    # records orientation + a ranking beta
    records = {"dataframe_records": frame.to_dict(orient="records"), "params": {"beta": 0.5}}
    status, body = post(server, records)
    assert status == 200, body
    ranked = pd.DataFrame(body["predictions"])
    expected = ranked["pctcvr"] + 0.5 * ranked["expected_views"]
    np.testing.assert_allclose(ranked["score"], expected, rtol=1e-6)  # float32 network


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda f: f.drop(columns=["ad"]), ["missing", "ad"]),
        (lambda f: f.assign(price=["cheap"] * len(f)), ["price"]),
        (lambda f: f.assign(hist_cate=[[2] * 9] * len(f)), ["hist_cate", "longer than max_len=5"]),
        (lambda f: f.assign(ad=[999] * len(f)), ["ad", "ids must be in [0, 40)"]),
        (lambda f: f.assign(hist_cate=[["a", "b"]] * len(f)), ["hist_cate", "flat list of int"]),
        (lambda f: f.assign(hist_cate=[[[2]]] * len(f)), ["hist_cate", "flat list of int"]),
    ],
    ids=[
        "missing-field",
        "wrong-type",
        "over-long-sequence",
        "unknown-id",
        "text-in-sequence",
        "nested-sequence",
    ],
)
def test_bad_requests_get_4xx_with_reason(server, champion, change, words):  # noqa: F811
    status, body = post(server, split_payload(change(session_candidates(champion))))
    assert 400 <= status < 500, (status, body)
    # our validation: INVALID_PARAMETER_VALUE; MLflow's JSON parsing of a bad type: BAD_REQUEST
    assert body.get("error_code") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), body
    message = body["message"]
    for word in words:
        assert word in message, message[:2000]
