"""Raw ranking requests for the serving tests: a valid one and a corpus of bad ones.

Each bad case is (name, change to the request, params, words the error message must hold).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

Request = dict[str, Any]


def good_request(time: int = 1_494_100_000, candidates: list[int] | None = None) -> Request:
    return {
        "user_id": 7,
        "time": time,
        "pid": "430548_1007",
        "candidates": candidates or [11, 12, 13],
        "events": [
            {"time": time - 600, "btag": "pv", "cate": 3, "brand": 5},
            {"time": time - 60, "btag": "cart", "cate": 3, "brand": None},
        ],
        "profile": {"final_gender_code": 1, "age_level": 3},
    }


def world_request(world: Path, row: Any, events: pd.DataFrame, others: list[int]) -> Request:
    """The request a shop would send for the raw impression ``row`` of a generated ``world``
    (a raw_sample.csv row): ``events`` (behavior_log.csv rows of the user before it, in time
    order), the profile as published, the shown ad first, then ``others``."""
    profiles = pd.read_csv(world / "user_profile.csv").rename(columns=str.strip)
    profile = profiles[profiles.userid == row.user].drop(columns="userid")
    shown = int(row.adgroup_id)
    return {
        "user_id": int(row.user),
        "time": int(row.time_stamp),
        "pid": str(row.pid),
        "candidates": [shown, *[int(a) for a in others if a != shown]],
        "events": [
            {
                "time": int(e.time_stamp),
                "btag": e.btag,
                "cate": _int(e.cate),
                "brand": _int(e.brand),
            }
            for e in events.itertuples()
        ],
        "profile": {k: _int(v) for k, v in profile.iloc[0].items()} if len(profile) else {},
    }


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _set(key: str, value: Any) -> Callable[[Request], Request]:
    def change(request: Request) -> Request:
        out = copy.deepcopy(request)
        out[key] = value
        return out

    return change


def _drop(key: str) -> Callable[[Request], Request]:
    def change(request: Request) -> Request:
        out = copy.deepcopy(request)
        del out[key]
        return out

    return change


def _event(index: int, **values: Any) -> Callable[[Request], Request]:
    def change(request: Request) -> Request:
        out = copy.deepcopy(request)
        out["events"][index] = {**out["events"][index], **values}
        return out

    return change


def _last_event_after_the_request(request: Request) -> Request:
    out = copy.deepcopy(request)
    out["events"][-1] = {**out["events"][-1], "time": out["time"] + 60}
    return out


def _same(request: Request) -> Request:
    return copy.deepcopy(request)


def _swap_events(request: Request) -> Request:
    out = copy.deepcopy(request)
    out["events"] = out["events"][::-1]
    return out


BAD_REQUESTS: list[tuple[str, Callable[[Request], Request], dict, list[str]]] = [
    ("unknown-policy", _same, {"policy": "best"}, ["unknown policy", "best"]),
    ("bad-policy-param", _same, {"policy": "softmax:0"}, ["temperature"]),
    ("negative-beta", _same, {"policy": "incentive", "beta": -1.0}, ["beta"]),
    ("beta-for-uniform", _same, {"policy": "uniform", "beta": 0.5}, ["takes no beta"]),
    ("bad-k", _same, {"k": -3}, ["k"]),
    ("empty-slate", _set("candidates", []), {}, ["empty slate"]),
    ("too-many-candidates", _set("candidates", list(range(10_001))), {}, ["10001", "limit"]),
    ("non-numeric-candidate", _set("candidates", [11, "x"]), {}, ["candidates"]),
    ("fractional-candidate", _set("candidates", [11, 12.5]), {}, ["candidates[1]"]),
    ("candidates-not-a-list", _set("candidates", "11,12"), {}, ["candidates", "list"]),
    ("non-numeric-user", _set("user_id", "abc"), {}, ["user_id"]),
    ("missing-user", _drop("user_id"), {}, ["user_id"]),
    ("missing-time", _drop("time"), {}, ["time"]),
    ("missing-pid", _drop("pid"), {}, ["pid"]),
    ("missing-candidates", _drop("candidates"), {}, ["candidates"]),
    ("events-out-of-order", _swap_events, {}, ["time order"]),
    ("event-after-request", _last_event_after_the_request, {}, ["after the request time"]),
    ("unknown-btag", _event(0, btag="click"), {}, ["btag"]),
    ("event-without-time", _event(0, time=None), {}, ["time"]),
    ("events-not-a-list", _set("events", "pv,cart"), {}, ["events"]),
    ("fractional-time", _set("time", 1_494_100_000.5), {}, ["time"]),
]
