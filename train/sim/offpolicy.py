"""Off-policy evaluation inside the loop: from one arm's logged day (a stochastic policy, e.g.
``softmax``), estimate every other arm's value of that day with IPS, SNIPS and doubly robust
(train/ope.py), and keep what the estimates are judged against.

``OffPolicyRecorder`` wraps the logging arm's slate policy. At each decision it also scores the
same slate, in the logging arm's context (its users' histories), with every target arm's policy
and model of the round: the target's probability of each candidate, the logging model's
pCTCVR as the reward model of DR, and the world's true pCTCVR. After the day, the logged
rewards (purchases) are joined to the decisions by (user, time, ad). Per target arm it gives:

- ``ope_ips``, ``ope_snips``, ``ope_dr``: the estimates of purchases per impression;
- ``ope_truth``: the target's true expected value on the logged contexts (sum over the slate of
  its probabilities times the true pCTCVR): what an unbiased estimator aims at here;
- with the target's own day (``purchases_per_impression``), ``ope_<est>_error`` = estimate -
  what the world produced for the target; over seeds its mean is the bias and the mean of
  ``ope_<est>_sq_error`` the mean squared error (the report's intervals come from the seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from etl.world import Decision
from train.ope import ESTIMATORS, evaluate
from train.sim.ranker import ModelSlatePolicy


@dataclass
class _Target:
    policy: ModelSlatePolicy
    probs: list[np.ndarray] = field(default_factory=list)  # [m, K] per decision batch


class OffPolicyRecorder:
    """The logging arm's slate policy, recording every target's view of each slate."""

    def __init__(self, logging: ModelSlatePolicy, targets: dict[str, ModelSlatePolicy]) -> None:
        self.logging = logging
        self.targets = {name: _Target(policy) for name, policy in targets.items()}
        self.keys: list[np.ndarray] = []  # (user id, time, ad index) of each decision
        self.slot: list[np.ndarray] = []
        self.propensity: list[np.ndarray] = []
        self.reward_model: list[np.ndarray] = []
        self.true_value: list[np.ndarray] = []
        self._rng = np.random.default_rng(0)  # never the world's: its streams stay the same

    def __call__(self, request: Any) -> Decision:
        pctcvr, views = self.logging.slate_scores(request)
        decision = self.logging.decide(request, pctcvr, views, request.rng)
        chosen = request.ads_at(decision.slot)
        self.keys.append(np.stack([request.user_ids, request.time, chosen], axis=1))
        self.slot.append(decision.slot)
        self.propensity.append(decision.propensity)
        self.reward_model.append(pctcvr)
        self.true_value.append(request.truth.p_ctcvr)
        for target in self.targets.values():
            scores = target.policy.slate_scores(request)
            target.probs.append(target.policy.decide(request, *scores, self._rng).probabilities)
        return decision

    def estimates(self, impressions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """target arm -> its ope_* measures, from the day the logging arm produced."""
        if not self.keys:
            return {}
        reward = self._rewards(impressions)
        slot, prop = np.concatenate(self.slot), np.concatenate(self.propensity)
        model, truth = np.concatenate(self.reward_model), np.concatenate(self.true_value)
        out = {}
        for name, target in self.targets.items():
            probs = np.concatenate(target.probs)
            found = evaluate(reward, prop, probs, model, slot)
            out[name] = {f"ope_{k}": float(found[k].value) for k in ESTIMATORS}
            out[name]["ope_truth"] = float((probs * truth).sum(axis=1).mean())
        return out

    def _rewards(self, impressions: dict[str, np.ndarray]) -> np.ndarray:
        """The purchase of each recorded decision, from the day's impressions."""
        logged: dict[tuple[int, int, int], list[int]] = {}
        rows = zip(
            impressions["user"],
            impressions["time_stamp"],
            impressions["ad"],
            impressions["conversion"],
            strict=True,
        )
        for user, ts, ad, buy in rows:
            logged.setdefault((int(user), int(ts), int(ad)), []).append(int(buy))
        keys = np.concatenate(self.keys)
        try:
            return np.array([logged[tuple(int(v) for v in key)].pop(0) for key in keys], float)
        except (KeyError, IndexError):
            raise RuntimeError("a recorded decision has no impression in the day's logs") from None


def with_errors(ope: dict[str, float], actual: float) -> dict[str, float]:
    """``ope`` plus each estimate's error against the value the world produced for the arm."""
    out = dict(ope)
    for k in ESTIMATORS:
        error = ope[f"ope_{k}"] - actual
        out[f"ope_{k}_error"], out[f"ope_{k}_sq_error"] = error, error * error
    return out
