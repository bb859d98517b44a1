"""A trained model and a ranking policy as the world's slate policy (etl/world/slate.py).

Per request row the candidates are encoded exactly as served (etl/online.py ``encode_request``
on the user's behaviors so far: earlier days from the arm's logs, the day's own from the world),
scored in one forward pass for the whole batch, and the policy (train/policy.py) picks a slot
with its propensity. The oracle reads the world's truth instead of a model; uniform needs none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from etl.online import FeatureBundle, RankRequest, encode_request
from etl.world import BTAGS, Decision
from train.policy import Oracle, Policy, Slate, Uniform

KEEP_EVENTS = 300  # past behaviors kept per user: the history window plus its session


class PastEvents:
    """Each user's behaviors of earlier days (the last KEEP_EVENTS), as raw columns."""

    def __init__(self) -> None:
        self.frame = pd.DataFrame(columns=["user", "time_stamp", "btag", "cate", "brand"])
        self._by_user: dict[int, pd.DataFrame] = {}

    def extend(self, behaviors: dict[str, np.ndarray]) -> None:
        new = pd.DataFrame({k: behaviors[k] for k in self.frame.columns})
        frame = pd.concat([self.frame, new], ignore_index=True) if len(self.frame) else new
        frame = frame.sort_values(["user", "time_stamp"], kind="stable")
        self.frame = frame.groupby("user", sort=False).tail(KEEP_EVENTS).reset_index(drop=True)
        self._by_user = {int(u): g for u, g in self.frame.groupby("user", sort=False)}

    def of(self, user: int) -> pd.DataFrame:
        return self._by_user.get(user, self.frame.iloc[:0])


def read_profiles(path: str) -> dict[int, dict[str, Any]]:
    """user_profile.csv as user id -> {column: value} (the serving format's profile)."""
    frame = pd.read_csv(path).rename(columns=str.strip)
    rows = frame.set_index("userid").to_dict(orient="index")
    return {
        int(u): {k: (None if pd.isna(v) else int(v)) for k, v in r.items()} for u, r in rows.items()
    }


def events_of(past: pd.DataFrame, today: pd.DataFrame) -> dict[str, np.ndarray]:
    """The request's behaviors (serving format columns): earlier days, then the day's own."""
    both = pd.concat([past, today], ignore_index=True) if len(today) else past
    brand = both["brand"].to_numpy(np.float64)
    return {
        "time": both["time_stamp"].to_numpy(np.int64),
        "btag": np.asarray(BTAGS, dtype=object)[both["btag"].to_numpy(np.int64)],
        "cate": both["cate"].to_numpy(np.int64),
        "brand": np.where(brand < 0, np.nan, brand),
    }


def served_request(
    user: int,
    time: int,
    candidates: Any,
    pid: str,
    past: PastEvents,
    today: pd.DataFrame,
    profiles: dict[int, dict[str, Any]],
) -> RankRequest:
    """The raw request a shop would send: ``user``'s earlier days from ``past``, then
    ``today``'s behaviors before the request, and the user's profile."""
    return RankRequest(
        user_id=user,
        time=time,
        candidates=candidates,
        pid=pid,
        events=events_of(past.of(user), today),
        profile=profiles.get(user),
    )


class ModelScorer:
    """pctcvr, expected_views, pctr and pcvr of ``[m, K]`` candidates from the served features."""

    def __init__(self, model: Any, bundle: FeatureBundle) -> None:
        from train.serving import SlateScorer

        self.model, self.bundle = model.eval(), bundle
        self._scorer = SlateScorer(self.model, bundle)

    def __call__(self, requests: list[RankRequest], k: int) -> dict[str, np.ndarray]:
        flat = self._scorer.score_encoded([encode_request(self.bundle, r) for r in requests])
        return {n: v.reshape(len(requests), k) for n, v in flat.items()}


class ModelSlatePolicy:
    """The world's slate policy: ``policy`` over ``scorer``'s outputs (the truth for the
    oracle; nothing for uniform). Decisions carry every slot's probability (for OPE)."""

    def __init__(
        self,
        policy: Policy,
        scorer: ModelScorer | None,
        past: PastEvents,
        profiles: dict[int, dict[str, Any]],
    ) -> None:
        self.policy, self.scorer, self.past, self.profiles = policy, scorer, past, profiles

    def __call__(self, request: Any) -> Decision:
        return self.decide(request, *self.slate_scores(request), request.rng)

    def slate_scores(self, request: Any) -> tuple[np.ndarray, np.ndarray]:
        """[m, K] pCTCVR and expected further views the policy ranks by (the truth for the
        oracle, zeros for uniform)."""
        if isinstance(self.policy, Oracle):
            truth = request.truth
            return truth.p_ctcvr, truth.expected_views
        if isinstance(self.policy, Uniform):
            zeros = np.zeros((request.size, request.k))
            return zeros, zeros
        scores = self.scorer(self.requests(request), request.k)
        return scores["pctcvr"], scores["expected_views"]

    def decide(
        self, request: Any, pctcvr: np.ndarray, views: np.ndarray, rng: np.random.Generator
    ) -> Decision:
        m, k = request.size, request.k
        oracle = isinstance(self.policy, Oracle)
        slots, props, probs = np.zeros(m, np.int64), np.zeros(m), np.zeros((m, k))
        for i in range(m):
            slate = Slate(pctcvr[i], views[i], pctcvr[i] if oracle else None)
            choice = self.policy.choose(slate, rng)
            slots[i], props[i], probs[i] = choice.chosen, choice.propensity, choice.probabilities
        return Decision(slots, props, probs)

    def requests(self, request: Any) -> list[RankRequest]:
        today = pd.DataFrame(request.behaviors())
        rows = today.groupby("request", sort=False) if len(today) else None
        groups = dict(iter(rows)) if rows is not None else {}
        users, times, pids = request.user_ids, request.time, request.pid_names
        return [
            served_request(
                int(users[i]),
                int(times[i]),
                request.ad_ids[i],
                str(pids[i]),
                self.past,
                groups.get(i, today.iloc[:0]),
                self.profiles,
            )
            for i in range(request.size)
        ]
