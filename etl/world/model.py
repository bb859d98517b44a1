"""The synthetic Taobao world: a generative model with known ground truth (README: "Generate").

numpy only. The world has three parts, each in a module of its own:

* a catalog of items (etl/world/catalog.py), the first ``n_ads`` of which are ads (category,
  brand, campaign, customer, price, long-tail popularity, latent vector, quality,
  attractiveness and "curiosity": the expected number of further views a click triggers);
* users (etl/world/users.py) with a latent taste vector, profile fields correlated with it,
  activity and price level;
* sessions (etl/world/simulator.py), simulated step by step for a whole chunk of users at once
  with the behavior models of etl/world/behavior.py. On impression days a page may show one ad,
  picked from a slate by a policy callback (etl/world/slate.py; by default the logging policy,
  with known propensities); a click leads to a pv of the ad and to further views, which are
  pages that can show ads again. A conversion is a ``buy`` of the ad's category and brand.

``TaobaoWorld`` simulates in two ways. ``simulate_chunk`` runs one chunk of users over all
configured days with a fixed catalog (what ``write_world`` writes). ``simulate_day`` runs one
day for every user with any policy, carrying the state over between days: before each impression
day d >= 1, ``LoopConfig.new_ad_share`` of the catalog enters as new ads with no history; users
keep their taste.

Sessions live in 3-hour slots of the UTC+8 day (at most one per slot), start in the first
30 minutes of their slot and last at most ``max_session_minutes`` (+ up to 8 minutes for a
trailing buy), so consecutive sessions are more than 70 minutes apart (60 at the largest cap),
while gaps inside a session are capped at 20 minutes: a 30-minute-gap sessionizer recovers the
sessions exactly (delayed conversions are the one exception: a lone ``buy`` hours after its
click, which may form a session of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etl.world.behavior import BehaviorModel
from etl.world.catalog import Catalog, build_catalog, grow_catalog
from etl.world.config import (
    BTAGS,
    BUY,
    DAY_S,
    FIRST_DAY,
    MAX_START_OFFSET_S,
    N_SLOTS,
    PIDS,
    PV,
    SLOT_S,
    SLOT_WEIGHTS,
    T0,
    LoopConfig,
    WorldConfig,
)
from etl.world.numeric import stream
from etl.world.simulator import TRUTH_EXTRA, ChunkLogs, SessionSimulator
from etl.world.slate import LoggingPolicy, SlatePolicy, SlateSetup
from etl.world.users import Users, build_users

__all__ = [
    "BTAGS",
    "DAY_S",
    "FIRST_DAY",
    "PIDS",
    "T0",
    "TRUTH_EXTRA",
    "Catalog",
    "ChunkLogs",
    "DayLogs",
    "LoopConfig",
    "Response",
    "TaobaoWorld",
    "Users",
    "WorldConfig",
]
DAY_KEY_OFFSET = 10_000  # day d's streams use d + this (history days are negative)


@dataclass
class Response:
    """A world's answer to a list of ads shown together to one user (closed loop).

    ``p_click`` includes the position effect of the list; ``events`` are the behaviors the
    response produced (clicked-ad pv, further views, buys) with btag codes into ``BTAGS``.
    """

    ad_ids: np.ndarray
    p_click: np.ndarray
    p_buy_given_click: np.ndarray
    expected_further_views: np.ndarray
    click: np.ndarray
    buy: np.ndarray
    further_views: np.ndarray
    events: dict[str, np.ndarray]


@dataclass
class DayLogs:
    """The logs of one simulated day (all users), sorted by (user, time)."""

    day: int  # 0 = 2017-05-06 (UTC+8); negative = a behavior-only day
    logs: ChunkLogs
    new_ads: int  # ads that entered the catalog at the start of this day
    n_ads: int  # ads in the catalog on this day

    @property
    def start(self) -> int:
        return T0 + self.day * DAY_S


class TaobaoWorld(BehaviorModel):
    """The generated state (catalog, users) plus the behavior models that act on it.

    ``simulate_chunk`` produces the logged data of one chunk of users; ``simulate_day`` one day
    of every user under a slate policy; ``respond`` answers a ranking policy's choice for one
    user in closed loop. All are deterministic for a seed (and a deterministic policy).
    """

    def __init__(self, config: WorldConfig | None = None, loop: LoopConfig | None = None):
        config = config or WorldConfig()
        config.validate()
        self.loop = loop or LoopConfig()
        self.loop.validate()
        catalog = build_catalog(config)
        super().__init__(config, catalog, build_users(config, catalog))
        self.behavior_start = T0 - config.history_days * DAY_S
        self.impression_end = T0 + config.days * DAY_S  # exclusive
        self.catalog_day = 0  # impression day the catalog is grown to
        self._state_z = self.users.taste.copy()
        self._state_cate = np.full(config.users, -1, dtype=np.int64)
        self._loop_rng = stream(config.seed, 3)

    # --- chunking -----------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return -(-self.config.users // self.config.chunk_users)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.config.chunk_users
        return lo, min(lo + self.config.chunk_users, self.config.users)

    def simulate_chunk(self, chunk: int, policy: SlatePolicy | None = None) -> ChunkLogs:
        """Sessions, behaviors and impressions of the users of one chunk over all days (the
        logging policy by default: then exactly what ``write_world`` has always written)."""
        lo, hi = self.chunk_range(chunk)
        cfg = self.config
        rng = stream(cfg.seed, 2, chunk)
        plan = self.plan_sessions(
            np.arange(lo, hi), rng, -cfg.history_days, cfg.history_days + cfg.days
        )
        setup = self._setup(
            self.catalog_day, stream(cfg.seed, 4, chunk), stream(cfg.seed, 5, chunk)
        )
        sim = SessionSimulator(
            self, plan, rng, end=self.impression_end, policy=policy or LoggingPolicy(), setup=setup
        )
        return sim.run()

    def plan_sessions(
        self, uix: np.ndarray, rng: np.random.Generator, first_day: int, n_days: int
    ) -> dict[str, np.ndarray]:
        """Sessions of ``n_days`` days from ``first_day`` (0 = the first impression day): at most
        one per 3-hour slot; slot choice follows a diurnal profile; ads on days >= 0."""
        lam = np.repeat(self.users.activity[uix][:, None], n_days, axis=1)
        n = np.minimum(rng.poisson(lam), N_SLOTS)
        keys = np.log(SLOT_WEIGHTS) + rng.gumbel(size=(uix.size, n_days, N_SLOTS))
        rank = np.argsort(np.argsort(-keys, axis=2), axis=2)
        b, d, s = np.nonzero(rank < n[:, :, None])
        start = T0 + (first_day + d) * DAY_S + s * SLOT_S
        start += rng.integers(0, MAX_START_OFFSET_S, b.size)
        users = uix[b]
        budget = rng.geometric(1.0 / np.maximum(self.users.session_len[users], 1.0))
        return {
            "user": users,
            "start": start.astype(np.int64),
            "budget": np.minimum(budget, 100).astype(np.int64),
            "imp_day": first_day + d >= 0,
        }

    def _setup(
        self, day: int, slate_rng: np.random.Generator, policy_rng: np.random.Generator
    ) -> SlateSetup:
        loop = self.loop
        return SlateSetup(
            k=loop.slate,
            new_ads=self.catalog.new_ads(day, loop.new_ad_days),
            new_share=loop.slate_new_share,
            slate_rng=slate_rng,
            policy_rng=policy_rng,
            record=loop.record_slates,
        )

    # --- one day at a time --------------------------------------------------------------------
    def advance_to(self, day: int) -> None:
        """Grow the catalog up to impression day ``day`` (new ads enter before days >= 1).
        Days only move forward: the catalog of a past day is gone."""
        if max(day, 0) < self.catalog_day:
            raise ValueError(f"day {day} is before the world's day {self.catalog_day}")
        for d in range(self.catalog_day + 1, day + 1):
            entered = round(self.loop.new_ad_share * self.catalog.n_ads)
            self.catalog = grow_catalog(self.catalog, self.config, d, entered)
        self.catalog_day = max(self.catalog_day, day)

    def simulate_day(
        self, day: int, policy: SlatePolicy | None = None, users: np.ndarray | None = None
    ) -> DayLogs:
        """Every user's sessions of day ``day`` (0 = 2017-05-06; negative days show no ads)
        under ``policy`` (the logging policy by default); ``users`` (a boolean mask over the
        world's users) keeps the sessions of those users only (the closed loop's held-out
        evaluation users). The same day, seed and mask give the same session plan for any
        policy; the day's streams do not depend on earlier days, and several arms may share
        one world (the catalog of a day is the same for all). A user's sessions run one after
        the other, so ``request.behaviors()`` holds every behavior of the day before the
        request (in ``simulate_chunk`` sessions of all days step together: there it may miss
        some of the user's earlier sessions)."""
        if day < -DAY_KEY_OFFSET:
            raise ValueError(f"day must be >= {-DAY_KEY_OFFSET}, got {day}")
        self.advance_to(day)
        seed, key = self.config.seed, day + DAY_KEY_OFFSET
        policy = policy or LoggingPolicy()
        parts = []
        # a day's chunk holds as many user-days as a chunk of simulate_chunk (fewer steps)
        per_chunk = self.config.chunk_users * (self.config.history_days + self.config.days)
        for chunk in range(-(-self.config.users // per_chunk)):
            lo, hi = chunk * per_chunk, min((chunk + 1) * per_chunk, self.config.users)
            rng = stream(seed, 8, key, chunk)
            plan = self.plan_sessions(np.arange(lo, hi), rng, day, 1)
            if users is not None:  # after planning: every user's plan is the same either way
                plan = {k: v[users[plan["user"]]] for k, v in plan.items()}
            plan["wave"] = _ordinal(plan["user"])  # a request sees the user's earlier sessions
            setup = self._setup(day, stream(seed, 9, key, chunk), stream(seed, 10, key, chunk))
            end = T0 + (day + 1) * DAY_S
            sim = SessionSimulator(self, plan, rng, end=end, policy=policy, setup=setup)
            parts.append(sim.run())
        entered = int((self.catalog.ad_birth_day == day).sum()) if day > 0 else 0
        return DayLogs(day, _concat(parts), entered, self.catalog.n_ads)

    # --- closed loop --------------------------------------------------------------------------
    def user_index(self, user_ids: np.ndarray | int) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
        idx = np.searchsorted(self.users.ids, ids)
        idx = np.minimum(idx, self.users.ids.size - 1)
        if not np.array_equal(self.users.ids[idx], ids):
            raise KeyError("unknown user id")
        return idx

    def ad_index(self, ad_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ad_ids, dtype=np.int64)
        idx = np.minimum(np.searchsorted(self.catalog.ad_ids, ids), self.catalog.n_ads - 1)
        if not np.array_equal(self.catalog.ad_ids[idx], ids):
            raise KeyError("unknown adgroup_id")
        return idx

    def candidates(
        self, user_id: int, n: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """n ads drawn by the logging policy for the user's current page (with propensities):
        a candidate pool that a ranking policy can reorder."""
        rng = rng or self._loop_rng
        u = np.repeat(self.user_index(user_id), n)
        page = self._page_cate(u)
        ad, prop = self.policy_pick(u, page, rng)
        return self.catalog.ad_ids[ad], prop

    def _page_cate(self, u: np.ndarray) -> np.ndarray:
        last = self._state_cate[u]
        return np.where(last >= 0, last, self.users.favcats[u, 0])

    def respond(
        self,
        user_id: int,
        ts: int,
        ad_ids: np.ndarray,
        pid: int = 0,
        rng: np.random.Generator | None = None,
        position_decay: float = 0.5,
    ) -> Response:
        """Show ``ad_ids`` (ranked, best first) to a user at ``ts`` and sample the outcome.

        Position k is examined with probability 1 / (1 + k) ** position_decay; each click is
        followed by a pv of the ad and Poisson(expected_further_views) further views, and a
        conversion by a buy of the ad's category and brand. The user's interest state moves
        with those views and carries over to the next call.
        """
        rng = rng or self._loop_rng
        ad = self.ad_index(ad_ids)
        u = np.repeat(self.user_index(user_id), ad.size)
        exam = 1.0 / (1.0 + np.arange(ad.size)) ** position_decay
        pids = np.full(ad.size, pid, dtype=np.int64)
        pc = exam * self.p_click(u, self._state_z[u], self._state_cate[u], ad, pids)
        pb = self.p_buy(u, ad)
        mu = self.expected_further_views(u, ad)
        click = rng.random(ad.size) < pc
        buy = click & (rng.random(ad.size) < pb)
        further = np.where(click, rng.poisson(mu), 0)
        events = self._click_events(int(u[0]), int(ts), ad[click], further[click], buy[click], rng)
        return Response(self.catalog.ad_ids[ad], pc, pb, mu, click, buy, further, events)

    def _click_events(
        self,
        u: int,
        ts: int,
        ads: np.ndarray,
        further: np.ndarray,
        buy: np.ndarray,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        cat = self.catalog
        t, items, tags, times = ts, [], [], []
        for ad, n_further, bought in zip(ads.tolist(), further.tolist(), buy.tolist(), strict=True):
            t += 1 + int(rng.integers(0, 3))
            seq = [ad]
            for _ in range(n_further):
                self._view(u, seq[-1])
                seq.append(int(self.organic_items(np.array([u]), self._state_cate[[u]], rng)[0]))
            self._view(u, seq[-1])
            for k, item in enumerate(seq):
                items.append(item)
                tags.append(PV)
                times.append(t + k * 30)
            if bought:
                items.append(ad)
                tags.append(BUY)
                times.append(t + 20 + int(rng.integers(0, 460)))
            t += len(seq) * 30
        items_a = np.asarray(items, dtype=np.int64)
        order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
        return {
            "time_stamp": np.asarray(times, dtype=np.int64)[order],
            "btag": np.asarray(tags, dtype=np.int8)[order],
            "cate": cat.cate_ids[cat.item_cate[items_a]][order] if items else items_a,
            "brand": cat.item_brand[items_a][order] if items else items_a,
        }

    def _view(self, u: int, item: int) -> None:
        a = self.config.interest_decay
        self._state_z[u] = (1 - a) * self._state_z[u] + a * self.catalog.item_vec[item]
        self._state_cate[u] = self.catalog.item_cate[item]

    def reset_state(self) -> None:
        """Forget closed-loop interest states (back to each user's taste)."""
        self._state_z = self.users.taste.copy()
        self._state_cate[:] = -1


def _concat(parts: list[ChunkLogs]) -> ChunkLogs:
    """Chunks hold consecutive user ranges: concatenated, they stay sorted by (user, time)."""
    beh = {k: np.concatenate([p.behaviors[k] for p in parts]) for k in parts[0].behaviors}
    shown = [p.impressions for p in parts if p.impressions["user"].size] or [parts[0].impressions]
    imp = {k: np.concatenate([d[k] for d in shown]) for k in shown[0]}
    return ChunkLogs(beh, imp, sum(p.n_sessions for p in parts))


def _ordinal(users: np.ndarray) -> np.ndarray:
    """Each session's rank among its user's sessions (plans are sorted by user, then time)."""
    first = np.r_[True, users[1:] != users[:-1]]
    starts = np.flatnonzero(first)
    return np.arange(users.size) - np.repeat(starts, np.diff(np.r_[starts, users.size]))
