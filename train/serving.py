"""Raw ranking requests: validation, scoring of each slate and the ranked response.

A request is what a shop's ranking service (or the closed-loop simulation) has: a user, the
request time, the slot, the user's recent behaviors as raw values and a slate of candidate ad
ids. ``parse_requests`` checks every field and raises ``BadRequest`` (a ``ValueError`` whose
message names the problem and the request) before anything is scored; the served model turns it
into HTTP 400. ``rank`` scores the validated requests with a ``score_slates`` callback (features +
model: ``SlateScorer``) and applies a ranking policy (train/policy.py).

Request fields: ``user_id`` (int), ``time`` (Unix seconds), ``pid`` (slot string),
``candidates`` (list of ad ids, 1..MAX_CANDIDATES), optional ``events`` (list of
``{"time", "btag", "cate", "brand"}``, optionally ``"item"``; in time order, all before
``time``) and optional ``profile`` (user_profile.csv fields; absent = null).
Params: ``policy`` (a train.policy spec, default greedy), ``beta`` (the incentive weight for
policies that take one), ``k`` (how many ranked candidates to return, default all), ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from train.policy import Choice, Policy, Slate, make_policy

MAX_CANDIDATES = 10_000
BTAGS = ("pv", "cart", "fav", "buy")
REQUIRED = ("user_id", "time", "pid", "candidates")
OPTIONAL = ("events", "profile")
EVENT_KEYS = ("time", "btag", "cate", "brand")
OPTIONAL_EVENT_KEYS = ("item",)
_EVENT_KEY_SET = frozenset((*EVENT_KEYS, *OPTIONAL_EVENT_KEYS))
_BTAG_SET = frozenset(BTAGS)
RESPONSE_SCORES = ("pctr", "pcvr", "pctcvr", "expected_views", "score")
SCORED = RESPONSE_SCORES[:-1]  # what the model gives per candidate (score: the policy's)


class BadRequest(ValueError):
    """A request the service refuses; the message says which request and what is wrong."""


@dataclass(frozen=True)
class Event:
    time: int
    btag: str
    cate: int | None
    brand: int | None
    item: int | None = None


@dataclass(frozen=True)
class Request:
    user_id: int
    time: int
    pid: str
    candidates: list[int]
    events: list[Event] = field(default_factory=list)
    profile: dict[str, int | None] = field(default_factory=dict)

    def online(self) -> Any:
        """This request as etl.online's ``RankRequest`` (what the feature bundle encodes)."""
        from etl.online import RankRequest

        events = {k: [getattr(e, k) for e in self.events] for k in (*EVENT_KEYS, "item")}
        return RankRequest(
            user_id=self.user_id,
            time=self.time,
            candidates=np.asarray(self.candidates, dtype=np.int64),
            pid=self.pid,
            events={k: _id_array(v) if k != "btag" else v for k, v in events.items()},
            profile=self.profile,
        )


def _id_array(values: list[int | None]) -> list[int | None] | np.ndarray:
    """Validated ids as int64 when none is null (etl.features.int_ids's vectorised path)."""
    return values if None in values else np.asarray(values, dtype=np.int64)


@dataclass(frozen=True)
class Params:
    policy: Policy
    k: int | None
    seed: int | None


def is_raw_request_frame(frame: pd.DataFrame) -> bool:
    """Raw requests (``user_id``, ``candidates``...) rather than encoded sample rows (whose
    columns are the spec's fields: ``user``, ``ad``, ``hist_*``...)."""
    return bool(set(frame.columns) & {*REQUIRED, *OPTIONAL})


def parse_requests(frame: pd.DataFrame) -> list[Request]:
    """Every row as a validated ``Request``; the first bad one raises ``BadRequest``."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BadRequest(f"requests lack the required fields {missing} (need {list(REQUIRED)})")
    unknown = sorted(set(frame.columns) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise BadRequest(f"unknown request fields {unknown}; known: {[*REQUIRED, *OPTIONAL]}")
    if frame.empty:
        raise BadRequest("no requests")
    columns = {c: frame[c].tolist() for c in frame.columns}  # 10x cheaper than to_dict
    values = zip(*columns.values(), strict=True)
    rows = (dict(zip(columns, row, strict=True)) for row in values)
    return [_request(i, row) for i, row in enumerate(rows)]


def _request(i: int, row: Mapping[str, Any]) -> Request:
    where = f"request {i}"
    time = _integer(row.get("time"), f"{where}: time")
    if time < 0:
        raise BadRequest(f"{where}: time must be Unix seconds >= 0, got {time}")
    pid = row.get("pid")
    if not isinstance(pid, str) or not pid.strip():
        raise BadRequest(f"{where}: pid must be a non-empty slot string, got {pid!r}")
    return Request(
        user_id=_integer(row.get("user_id"), f"{where}: user_id"),
        time=time,
        pid=pid,
        candidates=_candidates(row.get("candidates"), where),
        events=_events(row.get("events"), time, where),
        profile=_profile(row.get("profile"), where),
    )


def _integer(value: Any, what: str, nullable: bool = False) -> int | None:
    """An int from a JSON number or a numeric string; bools, fractions and NaN are refused."""
    if _missing(value):
        if nullable:
            return None
        raise BadRequest(f"{what} is missing")
    if isinstance(value, bool | np.bool_):
        raise BadRequest(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise BadRequest(f"{what} must be an integer, got {value!r}")
        return int(text)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    raise BadRequest(f"{what} must be an integer, got {value!r}")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, np.ndarray):
        return list(value)
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def _candidates(value: Any, where: str) -> list[int]:
    if _missing(value):
        raise BadRequest(f"{where}: candidates is missing")
    ids = _as_list(value, f"{where}: candidates")
    if not ids:
        raise BadRequest(f"{where}: empty slate: candidates needs at least one ad id")
    if len(ids) > MAX_CANDIDATES:
        raise BadRequest(f"{where}: {len(ids)} candidates, more than the limit {MAX_CANDIDATES}")
    if all(type(v) is int for v in ids):  # the common JSON case, checked at C speed
        return ids
    return [_integer(v, f"{where}: candidates[{j}]") for j, v in enumerate(ids)]


def _events(value: Any, time: int, where: str) -> list[Event]:
    if _missing(value):
        return []
    events = []
    for j, raw in enumerate(_as_list(value, f"{where}: events")):
        what = f"{where}: events[{j}]"
        if not isinstance(raw, Mapping):
            raise BadRequest(f"{what} must be an object with {list(EVENT_KEYS)}")
        if not ("time" in raw and "btag" in raw and raw.keys() <= _EVENT_KEY_SET):
            missing = [k for k in ("time", "btag") if k not in raw]
            unknown = sorted(set(raw) - _EVENT_KEY_SET)
            raise BadRequest(f"{what}: missing {missing}, unknown {unknown}")
        btag = raw["btag"]
        if not (isinstance(btag, str) and btag in _BTAG_SET):
            raise BadRequest(f"{what}: btag must be one of {list(BTAGS)}, got {btag!r}")
        events.append(
            Event(
                time=_field(raw, "time", what, nullable=False),
                btag=btag,
                cate=_field(raw, "cate", what),
                brand=_field(raw, "brand", what),
                item=_field(raw, "item", what),
            )
        )
    times = [e.time for e in events]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise BadRequest(f"{where}: events are not in time order")
    if times and times[-1] > time:
        raise BadRequest(f"{where}: an event at {times[-1]} is after the request time {time}")
    return events


def _field(raw: Mapping[str, Any], key: str, what: str, nullable: bool = True) -> int | None:
    value = raw.get(key)
    if type(value) is int:  # most values: no message built
        return value
    return _integer(value, f"{what}.{key}", nullable=nullable)


def _profile(value: Any, where: str) -> dict[str, int | None]:
    if _missing(value):
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}: profile must be an object of user_profile.csv fields")
    return {str(k): _integer(v, f"{where}: profile.{k}", nullable=True) for k, v in value.items()}


def parse_params(params: Mapping[str, Any] | None) -> Params:
    """Policy (a train.policy spec, default greedy), ``beta``, ``k`` and ``seed``.

    ``beta`` (None: the policy's own) sets the incentive weight of the policies that have one
    (incentive, incentive_mult, epsilon_greedy, softmax); greedy, uniform and the oracle take
    only beta = 0."""
    params = dict(params or {})
    try:
        policy = make_policy(str(params.get("policy") or "greedy"))
        beta = params.get("beta")
        if not _missing(beta):
            if hasattr(policy, "beta"):
                policy = replace(policy, beta=float(beta))
            elif float(beta) != 0:
                raise ValueError(f"policy {policy.name} takes no beta")
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"params: {exc}") from None
    k = params.get("k")
    k = None if _missing(k) or k == 0 else _integer(k, "params: k")
    if k is not None and k < 1:
        raise BadRequest(f"params: k must be >= 1, got {k}")
    seed = params.get("seed")
    return Params(policy, k, None if _missing(seed) else _integer(seed, "params: seed"))


ScoreSlates = Callable[[Sequence[Request]], Sequence[Mapping[str, np.ndarray]]]


def rank(
    requests: Sequence[Request], params: Params, score_slates: ScoreSlates
) -> list[dict[str, Any]]:
    """One response per request: the ranked candidates with their scores and the choice's
    propensity. ``score_slates(requests)`` returns per request pctr, pcvr, pctcvr and
    expected_views per candidate (and, for the oracle, ``truth``)."""
    rng = np.random.default_rng(params.seed)
    scores = score_slates(requests)
    return [_respond(r, params, s, rng) for r, s in zip(requests, scores, strict=True)]


def _respond(
    request: Request, params: Params, scores: Mapping[str, np.ndarray], rng: np.random.Generator
) -> dict[str, Any]:
    slate = Slate(scores["pctcvr"], scores["expected_views"], scores.get("truth"))
    choice: Choice = params.policy.choose(slate, rng)
    policy_scores = np.asarray(params.policy.scores(slate), dtype=np.float64).tolist()
    top = choice.ranking[: params.k] if params.k else choice.ranking
    values = {k: np.asarray(scores[k], dtype=np.float64).tolist() for k in SCORED}
    probabilities = np.asarray(choice.probabilities, dtype=np.float64).tolist()
    ranked = [
        {
            "ad_id": request.candidates[i],
            **{k: values[k][i] for k in SCORED},
            "score": policy_scores[i],
            "probability": probabilities[i],
        }
        for i in np.asarray(top).tolist()
    ]
    return {
        "user_id": request.user_id,
        "policy": params.policy.name,
        "chosen": request.candidates[choice.chosen],
        "propensity": choice.propensity,
        "ranking": ranked,
    }


class SlateScorer:
    """Features of a request's candidates (etl/online.py) -> the network's outputs (numpy)."""

    def __init__(self, model: Any, bundle: Any, max_rows: int = 8192) -> None:
        self.model, self.bundle, self.max_rows = model, bundle, max_rows
        spec = bundle.spec
        dense = {f.name for f in spec.fields if f.kind == "dense"}
        names = [f.name for f in spec.fields] + ([spec.length_field] if spec.sequence else [])
        self.dtypes = {n: np.float32 if n in dense else np.int64 for n in names}  # model inputs
        self.first = names[0]  # any input column: its length is the rows of an encoded request

    def __call__(self, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        """Every request's candidates in one forward pass per ``max_rows`` rows: the GRU then
        runs once per distinct history row across the whole batch (train/models/rnn_mtl.py)."""

        from etl.online import encode_request

        encoded = []
        for request in requests:
            try:
                encoded.append(encode_request(self.bundle, request.online(), strict=True))
            except ValueError as exc:
                raise BadRequest(f"request for user {request.user_id}: {exc}") from None
        flat = self.score_encoded(encoded)
        ends = np.cumsum([len(r.candidates) for r in requests])
        return [
            {k: flat[k][end - len(r.candidates) : end] for k in SCORED}
            for r, end in zip(requests, ends, strict=True)
        ]

    def score_encoded(self, encoded: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The network's outputs (``SCORED``) for the rows of several ``encode_request``
        results, concatenated in order, one forward pass per ``max_rows`` rows."""
        import torch

        sizes = [len(columns[self.first]) for columns in encoded]
        outputs: dict[str, list[np.ndarray]] = {k: [] for k in SCORED}
        for chunk in _chunks(sizes, self.max_rows):
            if len(chunk) == 1:  # one request (the online case): no copy to concatenate
                columns = encoded[chunk[0]]
            else:
                columns = {n: np.concatenate([encoded[i][n] for i in chunk]) for n in self.dtypes}
            with torch.inference_mode():
                out = self.model(self.tensors(columns))
            for k in SCORED:
                outputs[k].append(out[k].double().numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in outputs.items()}

    def tensors(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The model's batch from encode_request's columns."""
        import torch

        return {n: torch.from_numpy(columns[n].astype(t)) for n, t in self.dtypes.items()}


def _chunks(sizes: Sequence[int], max_rows: int) -> list[list[int]]:
    """Consecutive request indices in groups of at most ``max_rows`` candidates (a request
    larger than that is a group of its own)."""
    groups: list[list[int]] = []
    rows = 0
    for i, size in enumerate(sizes):
        if groups and rows + size <= max_rows:
            groups[-1].append(i)
            rows += size
        else:
            groups.append([i])
            rows = size
    return groups
