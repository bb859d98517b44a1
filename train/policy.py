"""Ranking policies: how the model's outputs for a slate of candidates become a choice, a
ranking and the probability with which the choice was made.

A policy sees one slate: per candidate the model's ``pctcvr`` and ``expected_views`` (numpy
arrays of length K) and, for the oracle only, the world's ``truth``. ``policy.probabilities(slate)``
gives P(candidate i is shown) for every i (they sum to 1); ``policy.choose(slate, rng)`` draws the
shown candidate with exactly those probabilities and returns it with its propensity, which is what
off-policy evaluation needs from logs. The ranking puts the chosen candidate first and the rest by
the policy's score, best first. Ties go to the lower index, so deterministic policies are
reproducible without a seed; stochastic ones draw from the ``numpy.random.Generator`` given.

Scores (``beta`` >= 0 trades purchase likelihood against further searching):

- ``greedy``: pCTCVR.
- ``incentive``: pCTCVR + beta * E[further views]; beta = 0 is exactly greedy.
- ``incentive_mult``: pCTCVR * (1 + beta * E[further views]): the views scale the purchase
  likelihood instead of adding to it, so an item that will not sell gains nothing from views.
- ``epsilon_greedy``: the incentive ranking's top with probability 1 - eps, else a uniform pick.
- ``softmax``: P(i) proportional to exp(score_i / temperature) over the incentive score.
- ``uniform``: every candidate with probability 1/K.
- ``oracle``: greedy on the world's truth (the simulation's upper bound) instead of the model.

``make_policy("incentive:0.5")`` builds a policy from a short spec (``NAME[:PARAM]``), the form
the closed-loop CLI takes; ``POLICIES`` lists the names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

DEFAULT_BETA = 0.5  # a bare "incentive" spec
DEFAULT_EPSILON = 0.1
DEFAULT_TEMPERATURE = 0.05  # pCTCVR differences are a few hundredths: keep the softmax sharp


def ranking_score(outputs: Mapping[str, Any], beta: float) -> Any:
    """Incentivized ranking score: pCTCVR + beta * E[further views] (beta = 0: plain ranking).

    Works on numpy arrays and torch tensors alike (the served model scores with it)."""
    if beta == 0:
        return outputs["pctcvr"]
    return outputs["pctcvr"] + beta * outputs["expected_views"]


@dataclass(frozen=True)
class Slate:
    """One slate of K candidates as the model (and, for the oracle, the world) sees it."""

    pctcvr: np.ndarray
    expected_views: np.ndarray
    truth: np.ndarray | None = None  # the world's true value of each candidate (oracle only)

    def __post_init__(self) -> None:
        k = len(self.pctcvr)
        if k == 0:
            raise ValueError("empty slate: a policy needs at least one candidate")
        if len(self.expected_views) != k or (self.truth is not None and len(self.truth) != k):
            raise ValueError("slate arrays differ in length")

    @property
    def size(self) -> int:
        return len(self.pctcvr)


@dataclass(frozen=True)
class Choice:
    """What a policy did with one slate."""

    chosen: int  # index of the shown candidate
    propensity: float  # P(the policy shows ``chosen`` | slate)
    ranking: np.ndarray  # candidate indices, ``chosen`` first, then by score
    probabilities: np.ndarray  # P(each candidate is shown)


class Policy(ABC):
    """Maps a slate to probabilities over its candidates; ``choose`` samples from them."""

    name: ClassVar[str] = ""

    @abstractmethod
    def scores(self, slate: Slate) -> np.ndarray:
        """The policy's score of each candidate (higher is better): orders the ranking."""

    @abstractmethod
    def probabilities(self, slate: Slate) -> np.ndarray:
        """P(candidate i is shown), summing to 1 over the slate."""

    def choose(self, slate: Slate, rng: np.random.Generator | None = None) -> Choice:
        probs = self.probabilities(slate)
        deterministic = np.count_nonzero(probs) == 1
        if deterministic:
            chosen = int(np.flatnonzero(probs)[0])
        else:
            if rng is None:
                raise ValueError(f"policy {self.name} is stochastic: pass a numpy Generator")
            chosen = int(rng.choice(slate.size, p=probs))
        rest = [i for i in _order(self.scores(slate)) if i != chosen]
        ranking = np.array([chosen, *rest], dtype=np.int64)
        return Choice(chosen, float(probs[chosen]), ranking, probs)


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices by score, best first; ties keep the lower index first."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _one_hot(index: int, size: int) -> np.ndarray:
    probs = np.zeros(size)
    probs[index] = 1.0
    return probs


class _Deterministic(Policy):
    def probabilities(self, slate: Slate) -> np.ndarray:
        return _one_hot(int(_order(self.scores(slate))[0]), slate.size)


@dataclass(frozen=True)
class Incentive(_Deterministic):
    beta: float = DEFAULT_BETA
    name: ClassVar[str] = "incentive"

    def __post_init__(self) -> None:
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")

    def scores(self, slate: Slate) -> np.ndarray:
        return ranking_score(vars(slate), self.beta)


@dataclass(frozen=True)
class Greedy(Incentive):
    """Incentive with beta = 0: rank by pCTCVR alone."""

    beta: float = 0.0
    name: ClassVar[str] = "greedy"

    def __post_init__(self) -> None:
        _check(self.beta == 0, "greedy takes no beta (use incentive)")


@dataclass(frozen=True)
class IncentiveMult(_Deterministic):
    beta: float = DEFAULT_BETA
    name: ClassVar[str] = "incentive_mult"

    def __post_init__(self) -> None:
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")

    def scores(self, slate: Slate) -> np.ndarray:
        return slate.pctcvr * (1.0 + self.beta * slate.expected_views)


@dataclass(frozen=True)
class Oracle(_Deterministic):
    """Greedy on the world's truth: the upper bound of a simulation."""

    name: ClassVar[str] = "oracle"

    def scores(self, slate: Slate) -> np.ndarray:
        if slate.truth is None:
            raise ValueError("the oracle policy needs the slate's truth")
        return slate.truth


@dataclass(frozen=True)
class EpsilonGreedy(Policy):
    epsilon: float = DEFAULT_EPSILON
    beta: float = 0.0
    name: ClassVar[str] = "epsilon_greedy"

    def __post_init__(self) -> None:
        _check(0 <= self.epsilon <= 1, f"epsilon must be in [0, 1], got {self.epsilon}")
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")

    def scores(self, slate: Slate) -> np.ndarray:
        return ranking_score(vars(slate), self.beta)

    def probabilities(self, slate: Slate) -> np.ndarray:
        best = _one_hot(int(_order(self.scores(slate))[0]), slate.size)
        return (1 - self.epsilon) * best + self.epsilon / slate.size


@dataclass(frozen=True)
class Softmax(Policy):
    temperature: float = DEFAULT_TEMPERATURE
    beta: float = 0.0
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")

    def scores(self, slate: Slate) -> np.ndarray:
        return ranking_score(vars(slate), self.beta)

    def probabilities(self, slate: Slate) -> np.ndarray:
        logits = np.asarray(self.scores(slate), dtype=np.float64) / self.temperature
        weights = np.exp(logits - logits.max())  # shifted: no overflow
        return weights / weights.sum()


@dataclass(frozen=True)
class Uniform(Policy):
    name: ClassVar[str] = "uniform"

    def scores(self, slate: Slate) -> np.ndarray:
        return np.zeros(slate.size)

    def probabilities(self, slate: Slate) -> np.ndarray:
        return np.full(slate.size, 1.0 / slate.size)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# name -> (constructor from one optional float parameter)
POLICIES: dict[str, Callable[[float | None], Policy]] = {
    "greedy": lambda p: Greedy() if p is None else Greedy(beta=p),
    "incentive": lambda p: Incentive(DEFAULT_BETA if p is None else p),
    "incentive_mult": lambda p: IncentiveMult(DEFAULT_BETA if p is None else p),
    "epsilon_greedy": lambda p: EpsilonGreedy(DEFAULT_EPSILON if p is None else p),
    "softmax": lambda p: Softmax(DEFAULT_TEMPERATURE if p is None else p),
    "uniform": lambda p: Uniform() if p is None else _no_param("uniform"),
    "oracle": lambda p: Oracle() if p is None else _no_param("oracle"),
}


def _no_param(name: str) -> Policy:
    raise ValueError(f"policy {name} takes no parameter")


def make_policy(spec: str) -> Policy:
    """A policy from ``NAME`` or ``NAME:PARAM`` (beta, epsilon or temperature by policy)."""
    name, _, param = spec.strip().partition(":")
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    try:
        value = float(param) if param else None
    except ValueError:
        raise ValueError(f"policy {spec!r}: parameter {param!r} is not a number") from None
    return POLICIES[name](value)


def rank_slates(frame: Any, policy: Policy, seed: int = 0) -> Any:
    """Rank one slate given as a pandas DataFrame (one row per candidate with ``pctcvr``,
    ``expected_views``, ``user_key``, ``slate_key``, ``impression_id``; optional ``truth``):
    ``impression_id``, ``rank`` (1 = shown first), ``probability`` (of being chosen),
    ``chosen`` and ``policy_score``. A stochastic policy draws from a generator seeded by
    (seed, user, slate), so a slate ranks the same however the rows are partitioned."""
    import pandas as pd

    frame = frame.sort_values("impression_id", kind="stable")
    truth = frame["truth"].to_numpy() if "truth" in frame.columns else None
    slate = Slate(frame["pctcvr"].to_numpy(), frame["expected_views"].to_numpy(), truth)
    first = frame.iloc[0]
    key = [seed, int(first["user_key"]) % 2**63, int(first["slate_key"]) % 2**63]
    choice = policy.choose(slate, np.random.default_rng(key))
    ranks = np.empty(slate.size, np.int32)
    ranks[choice.ranking] = np.arange(1, slate.size + 1)
    return pd.DataFrame(
        {
            "impression_id": frame["impression_id"].to_numpy(np.int64),
            "rank": ranks,
            "probability": choice.probabilities.astype(np.float64),
            "chosen": ranks == 1,
            "policy_score": np.asarray(policy.scores(slate), dtype=np.float64),
        }
    )
