"""Raw request validation (train/serving.py): every bad kind fails with a message naming it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_requests import BAD_REQUESTS, good_request

from train import serving
from train.policy import Greedy, Incentive, Softmax


def parse(request: dict, params: dict | None = None):
    return serving.parse_requests(pd.DataFrame([request])), serving.parse_params(params)


def test_a_good_request_parses() -> None:
    (request,), params = parse(good_request(), {"policy": "incentive:0.2", "k": 2, "seed": 3})
    assert request.user_id == 7 and request.candidates == [11, 12, 13] and request.pid
    assert [e.btag for e in request.events] == ["pv", "cart"] and request.events[1].brand is None
    assert request.profile == {"final_gender_code": 1, "age_level": 3}
    assert params.policy == Incentive(0.2) and params.k == 2 and params.seed == 3


def test_params_defaults_and_beta() -> None:
    assert serving.parse_params(None).policy == Greedy()
    assert serving.parse_params({"beta": 0.0}).policy == Greedy()
    assert serving.parse_params({"policy": "incentive", "beta": 0.3}).policy == Incentive(0.3)
    assert serving.parse_params({"policy": "softmax:0.1", "beta": 0.2}).policy == Softmax(0.1, 0.2)
    assert serving.parse_params({"k": 0}).k is None  # 0: every candidate


@pytest.mark.parametrize(
    ("change", "params", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_name_the_problem(change, params, words) -> None:
    with pytest.raises(serving.BadRequest) as info:
        parse(change(good_request()), params)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_rank_orders_by_the_policy_and_reports_propensities() -> None:
    (request,), _ = parse(good_request())

    def scores(requests):
        return [
            {
                "pctr": np.array([0.1, 0.2, 0.3]),
                "pcvr": np.array([0.5, 0.5, 0.1]),
                "pctcvr": np.array([0.05, 0.10, 0.03]),
                "expected_views": np.array([0.0, 0.0, 4.0]),
            }
            for _ in requests
        ]

    (greedy,) = serving.rank([request], serving.parse_params({}), scores)
    assert [r["ad_id"] for r in greedy["ranking"]] == [12, 11, 13]
    assert greedy["chosen"] == 12 and greedy["propensity"] == 1.0
    incentive_params = serving.parse_params({"policy": "incentive:0.1"})
    (incentive,) = serving.rank([request], incentive_params, scores)
    assert incentive["chosen"] == 13 and incentive["ranking"][0]["score"] == pytest.approx(0.43)
    params = serving.parse_params({"policy": "softmax:0.05", "k": 2, "seed": 1})
    (soft,) = serving.rank([request], params, scores)
    assert len(soft["ranking"]) == 2 and 0 < soft["propensity"] < 1
    assert soft["ranking"][0]["ad_id"] == soft["chosen"]
