"""The policy protocol of the world in the loop: a slate of candidates per ad slot, a callback
that picks one, and the world's truth for every candidate (numpy only; etl/ never imports train/).

At each simulation step, every page that shows an ad becomes one row of a ``SlateRequest`` (a
batch of m decisions, vectorized). A policy is any callable ``policy(request) -> Decision``:

- ``request.user_ids``, ``request.time`` (the impression's Unix time), ``request.pid`` (slot
  code into ``PIDS``), ``request.page_cate`` (raw cate id of the page just viewed);
- ``request.ad_ids`` ``[m, K]``: the slate's adgroup ids. Column 0 is the logging policy's own
  draw; then ads by the logging mix (popular by weight, the page's category, one of the user's
  favourite categories) and a share of ads that are new to the catalog. Ads may repeat in a
  slate (draws with replacement); a policy picks a slot, so a repeated ad is just two slots;
- ``request.logging_propensity`` ``[m, K]``: each candidate's probability under the logging
  policy (over the whole catalog);
- ``request.truth`` (a ``SlateTruth``): the world's true p_click, p_buy_given_click and
  expected further views of every candidate for this user at this moment (the oracle's input);
- ``request.behaviors()``: the requesting users' behaviors of this simulation run strictly
  before each request's time (earlier runs' behaviors are in their logs), for a ranker's
  request features;
- ``request.rng``: the policy's own random stream (seeded by the world; using it never moves
  the world's streams).

The slate, its propensities and its truth are built on first access, so a policy that needs
only column 0 (the logging policy) costs nothing extra. The ``Decision`` holds, per row, the
chosen ``slot`` and its ``propensity`` (P(the policy picks that slot | the slate)), and
optionally every slot's ``probabilities`` (kept in slates.csv for off-policy evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from etl.world.behavior import BehaviorModel
from etl.world.config import N_FAVCATS, PIDS
from etl.world.numeric import Segments


@dataclass(frozen=True)
class SlateTruth:
    """The world's true response model for each candidate ``[m, K]`` (no position effect)."""

    p_click: np.ndarray
    p_buy_given_click: np.ndarray
    expected_further_views: np.ndarray

    @property
    def p_ctcvr(self) -> np.ndarray:
        """P(click and purchase): the expected purchases of showing the candidate."""
        return self.p_click * self.p_buy_given_click

    @property
    def expected_views(self) -> np.ndarray:
        """Expected further views of showing the candidate: P(click) x E[views | click]."""
        return self.p_click * self.expected_further_views


@dataclass(frozen=True)
class Decision:
    """A policy's answer to a ``SlateRequest`` of m rows."""

    slot: np.ndarray  # [m] chosen index into the slate
    propensity: np.ndarray  # [m] P(the policy picks that slot | the slate), in (0, 1]
    probabilities: np.ndarray | None = None  # [m, K] P(each slot), rows summing to 1

    def checked(self, m: int, k: int) -> Decision:
        """This decision as int/float arrays, or a ValueError naming what is wrong."""
        slot = np.asarray(self.slot)
        prop = np.asarray(self.propensity, dtype=np.float64)
        if slot.shape != (m,) or prop.shape != (m,):
            raise ValueError(f"a decision needs slot and propensity of shape ({m},)")
        if not np.issubdtype(slot.dtype, np.integer) or slot.min(initial=0) < 0:
            raise ValueError("decision slots must be non-negative integers")
        if slot.max(initial=0) >= k:
            raise ValueError(f"decision slot out of range for a slate of {k}")
        if not ((prop > 0) & (prop <= 1 + 1e-9)).all():
            raise ValueError("decision propensities must be in (0, 1]")
        probs = self.probabilities
        if probs is not None:
            probs = np.asarray(probs, dtype=np.float64)
            if probs.shape != (m, k):
                raise ValueError(f"decision probabilities must have shape ({m}, {k})")
        return Decision(slot.astype(np.int64), prop, probs)


class SlatePolicy(Protocol):
    """What the world asks at each ad slot: pick one candidate per row of the request."""

    def __call__(self, request: SlateRequest) -> Decision: ...


@dataclass(frozen=True)
class SlateSetup:
    """How slates are drawn in one simulation run, and the run's slate and policy streams."""

    k: int
    new_ads: np.ndarray  # ad indices counted as new (entered in the last few days)
    new_share: float
    slate_rng: np.random.Generator
    policy_rng: np.random.Generator
    record: bool = False


History = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


class SlateRequest:
    """m decisions of one simulation step; see the module docstring for the fields."""

    def __init__(
        self,
        model: BehaviorModel,
        setup: SlateSetup,
        users: np.ndarray,
        time: np.ndarray,
        pid: np.ndarray,
        page: np.ndarray,
        interest: np.ndarray,
        first: tuple[np.ndarray, np.ndarray],
        history: History,
    ) -> None:
        self._model, self._setup, self._history = model, setup, history
        self.user_index, self.time, self.pid = users, time, pid
        self.page_index, self._interest = page, interest
        self._first, self._first_propensity = first
        self.rng = setup.policy_rng

    @property
    def size(self) -> int:
        return int(self.user_index.size)

    @property
    def k(self) -> int:
        return self._setup.k

    @property
    def user_ids(self) -> np.ndarray:
        return self._model.users.ids[self.user_index]

    @property
    def page_cate(self) -> np.ndarray:
        return self._model.catalog.cate_ids[self.page_index]

    @property
    def pid_names(self) -> np.ndarray:
        return np.asarray(PIDS)[self.pid]

    @cached_property
    def ad_index(self) -> np.ndarray:
        """[m, K] catalog indices of the candidates (column 0: the logging policy's draw)."""
        return build_slates(self._model, self._setup, self.user_index, self.page_index, self._first)

    @property
    def ad_ids(self) -> np.ndarray:
        return self._model.catalog.ad_ids[self.ad_index]

    @cached_property
    def logging_propensity(self) -> np.ndarray:
        m, k = self.size, self.k
        if k == 1:
            return self._first_propensity[:, None]
        users, page = np.repeat(self.user_index, k), np.repeat(self.page_index, k)
        return self._model.propensity(users, page, self.ad_index.ravel()).reshape(m, k)

    @property
    def first_propensity(self) -> np.ndarray:
        """The logging propensity of column 0, without building the slate."""
        return self._first_propensity

    @cached_property
    def truth(self) -> SlateTruth:
        model, m, k = self._model, self.size, self.k
        ads, users = self.ad_index.ravel(), np.repeat(self.user_index, k)
        interest = np.repeat(self._interest, k, axis=0)
        page, pid = np.repeat(self.page_index, k), np.repeat(self.pid, k)
        return SlateTruth(
            model.p_click(users, interest, page, ads, pid).reshape(m, k),
            model.p_buy(users, ads).reshape(m, k),
            model.expected_further_views(users, ads).reshape(m, k),
        )

    def behaviors(self) -> dict[str, np.ndarray]:
        """Behaviors of this run strictly before each request: columns ``request`` (row of this
        batch), ``user`` (raw id), ``time_stamp``, ``btag`` (code into BTAGS), ``cate``,
        ``brand`` (raw ids, -1 = null), by request then time."""
        return self._history(self.user_index, self.time)

    def ads_at(self, slot: np.ndarray) -> np.ndarray:
        """Catalog indices of the chosen slots (column 0 needs no slate)."""
        if "ad_index" not in self.__dict__ and not slot.any():
            return self._first
        return self.ad_index[np.arange(self.size), slot]


def build_slates(
    model: BehaviorModel,
    setup: SlateSetup,
    users: np.ndarray,
    page: np.ndarray,
    first: np.ndarray,
) -> np.ndarray:
    """[m, K] candidates: ``first``, then popular / page-category / favourite-category ads in
    the logging mix's shares, then new ads (by weight) when the catalog has any."""
    cat, rng, m, k = model.catalog, setup.slate_rng, users.size, setup.k
    rest = k - 1
    n_new = min(rest, round(setup.new_share * k)) if setup.new_ads.size else 0
    g, pg, _ = model.config.policy_mix
    n_pop = round(g * (rest - n_new))
    n_page = round(pg * (rest - n_new))
    n_taste = rest - n_new - n_pop - n_page
    pop = cat.ads_all.sample(np.zeros(m * n_pop, dtype=np.int64), rng)
    in_page = cat.ads_by_cate.sample(np.repeat(page, n_page), rng)
    fav = model.users.favcats[np.repeat(users, n_taste), rng.integers(0, N_FAVCATS, m * n_taste)]
    taste = cat.ads_by_cate.sample(fav, rng)
    parts = [first[:, None], pop.reshape(m, n_pop), in_page.reshape(m, n_page)]
    parts.append(taste.reshape(m, n_taste))
    if n_new:
        new = setup.new_ads
        by_weight = Segments(np.zeros(new.size, dtype=np.int64), cat.ad_weight[new], 1)
        parts.append(
            new[by_weight.sample(np.zeros(m * n_new, dtype=np.int64), rng)].reshape(m, n_new)
        )
    return np.hstack(parts).astype(np.int64)


class LoggingPolicy:
    """The world's built-in logging policy as a callback: it shows column 0, its own draw from
    all ads (by weight, from the page's category or one of the user's favourite categories),
    with that draw's probability over the whole catalog as the propensity (truth.csv's)."""

    def __call__(self, request: SlateRequest) -> Decision:
        return Decision(np.zeros(request.size, dtype=np.int64), request.first_propensity)
