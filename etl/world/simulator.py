"""The session simulator: steps all planned sessions of a run forward together, one page view
per step, and asks a slate policy which ad each ad slot shows (etl/world/slate.py).

Each step is one page view; the user's interest state is an exponentially weighted mean of the
latent vectors of the items viewed so far in the session, so the most recent views weigh most.
On impression days a page shows an ad with probability ``page_ad_rate``: the policy picks one of
the slate's candidates, and the world answers: a click leads to a pv of the ad and to a
Poisson(curiosity x user exploration) number of further views, which are pages that can show
ads again (a policy that causes more searching creates more impressions); a conversion is a
``buy`` of the ad's category and brand, minutes later or (a share) 1-22 hours later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etl.world.behavior import BehaviorModel
from etl.world.config import BUY, CART, FAV, MAX_GAP_S, PID_SHARES, PV
from etl.world.slate import Decision, SlatePolicy, SlateRequest, SlateSetup

TRUTH_EXTRA = (
    "p_click",
    "p_buy_given_click",
    "expected_further_views",
    "propensity",
    "conversion",
    "further_views",
)
SLATE_COLUMNS = ("slate_ad", "slate_probability", "slate_p_click", "slate_p_buy_given_click")
SLATE_COLUMNS += ("slate_expected_further_views",)


@dataclass
class ChunkLogs:
    """One run's logs, sorted by (user, time). Ids are raw ids; -1 = null brand.

    ``impressions`` holds per impression: user (raw id), time_stamp, ad (catalog index), pid
    (code), clk, the truth columns, slot (chosen index into the slate) and, when slates are
    recorded, the ``[n, K]`` slate columns (ad index, the policy's probabilities, truth)."""

    behaviors: dict[str, np.ndarray]  # user, time_stamp, btag (code), cate, brand
    impressions: dict[str, np.ndarray]
    n_sessions: int


class SessionSimulator:
    """Steps all sessions of a run (one chunk of users, one or more days) forward together."""

    def __init__(
        self,
        model: BehaviorModel,
        plan: dict[str, np.ndarray],
        rng: np.random.Generator,
        *,
        end: int,
        policy: SlatePolicy,
        setup: SlateSetup,
    ) -> None:
        self.w, self.cfg, self.rng = model, model.config, rng
        self.end, self.policy, self.setup = end, policy, setup
        n = plan["user"].size
        self.user, self.start, self.budget = plan["user"], plan["start"], plan["budget"]
        self.imp_day = plan["imp_day"]
        self.plan_wave = plan.get("wave")
        self.t = self.start.copy()
        self.steps = np.zeros(n, dtype=np.int64)
        self.z = model.users.taste[self.user].copy()
        self.last_cate = np.full(n, -1, dtype=np.int64)
        self.pending = np.full(n, -1, dtype=np.int64)  # clicked ad whose pv comes next
        self.pending_t = np.zeros(n, dtype=np.int64)
        self.beh: list[tuple[np.ndarray, ...]] = []
        self.imp: list[dict[str, np.ndarray]] = []
        self._seen: tuple[int, tuple[np.ndarray, ...] | None] = (0, None)  # behaviors() cache

    def run(self) -> ChunkLogs:
        """Step the sessions wave by wave (the plan's optional ``wave``: sessions of one wave
        step together; a wave starts when the previous one has ended)."""
        cap = 60 * self.cfg.max_session_minutes
        waves = self.plan_wave
        for wave in np.unique(waves) if waves is not None else [None]:
            act = np.arange(self.user.size) if wave is None else np.flatnonzero(waves == wave)
            while act.size:
                self._step(act)
                pend = self.pending[act] >= 0
                keep = ((self.budget[act] > 0) & (self.t[act] - self.start[act] < cap)) | pend
                act = act[keep]
        return ChunkLogs(self._behaviors(), self._impressions(), int(self.user.size))

    def _emit(self, users: np.ndarray, times: np.ndarray, tag: int, items: np.ndarray) -> None:
        self.beh.append((users, times, np.full(users.size, tag, dtype=np.int8), items))

    def _step(self, a: np.ndarray) -> None:
        rng, w = self.rng, self.w
        clicked = self.pending[a] >= 0
        gap = np.minimum(3 + rng.exponential(self.cfg.mean_gap_s, a.size), MAX_GAP_S)
        t = np.where(clicked, self.pending_t[a] + rng.integers(0, 3, a.size), self.t[a] + gap)
        t = np.where(self.steps[a] == 0, self.start[a], t).astype(np.int64)
        alive = clicked | (t - self.start[a] <= 60 * self.cfg.max_session_minutes)
        self.budget[a[~alive]] = 0  # the session's time is up: it ends without this view
        a, clicked, t = a[alive], clicked[alive], t[alive]
        users = self.user[a]
        item = np.where(clicked, self.pending[a], w.organic_items(users, self.last_cate[a], rng))
        self.t[a] = t
        self.steps[a] += 1
        self.budget[a] -= ~clicked
        self.pending[a] = -1
        self._emit(users, t, PV, item)
        decay = self.cfg.interest_decay
        self.z[a] = (1 - decay) * self.z[a] + decay * w.catalog.item_vec[item]
        self.last_cate[a] = w.catalog.item_cate[item]
        org = ~clicked
        for tag, hit in zip((CART, FAV, BUY), w.extras(users[org], item[org], rng), strict=True):
            delay = rng.integers(3, 300 if tag == BUY else 60, int(hit.sum()))
            self._emit(users[org][hit], t[org][hit] + delay, tag, item[org][hit])
        show = self.imp_day[a] & (rng.random(a.size) < self.cfg.page_ad_rate)
        if show.any():
            self._impress(a[show])

    def _impress(self, p: np.ndarray) -> None:
        rng, w, m = self.rng, self.w, p.size
        users, page = self.user[p], self.last_cate[p]
        pid = (rng.random(m) >= PID_SHARES[0]).astype(np.int8)
        first = w.policy_pick(users, page, rng)
        t_imp = self.t[p] + 1
        z = self.z[p]
        request = SlateRequest(
            w, self.setup, users, t_imp, pid, page, z, first, self.behaviors_before
        )
        decision = self.policy(request).checked(m, self.setup.k)
        ad, prop = request.ads_at(decision.slot), decision.propensity
        pc = w.p_click(users, z, page, ad, pid)
        pb = w.p_buy(users, ad)
        mu = w.expected_further_views(users, ad)
        clk = rng.random(m) < pc
        buy = clk & (rng.random(m) < pb)
        further = np.where(clk, rng.poisson(mu), 0)
        self.pending[p[clk]] = ad[clk]
        self.pending_t[p[clk]] = t_imp[clk]
        self.budget[p[clk]] += further[clk]
        self._emit(users[buy], self._buy_times(t_imp[buy]), BUY, ad[buy])
        row = {
            "user": users,
            "time_stamp": t_imp,
            "ad": ad,
            "pid": pid,
            "clk": clk.astype(np.int8),
            "p_click": pc,
            "p_buy_given_click": pb,
            "expected_further_views": mu,
            "propensity": prop,
            "conversion": buy.astype(np.int8),
            "further_views": further.astype(np.int64),
            "slot": decision.slot,
        }
        if self.setup.record:
            row |= _slate_columns(request, decision)
        self.imp.append(row)

    def _buy_times(self, t_imp: np.ndarray) -> np.ndarray:
        """Most conversions happen minutes after the click inside the session; the rest 1-22 h
        later (kept inside the run's period; otherwise moved into the session)."""
        rng, n = self.rng, t_imp.size
        soon = t_imp + 2 + rng.integers(20, 480, n)
        late = t_imp + rng.integers(3600, 22 * 3600, n)
        delayed = (rng.random(n) < self.cfg.delayed_buy_share) & (late < self.end)
        return np.where(delayed, late, soon)

    def behaviors_before(self, users: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
        """Behaviors of ``users`` (world indices) logged so far in this run strictly before
        ``times``: one block per request, in time order (see SlateRequest.behaviors)."""
        n_seen, cached = self._seen
        parts = ([cached] if cached is not None else []) + self.beh[n_seen:]
        if not parts:
            return {"request": np.zeros(0, dtype=np.int64)} | _behavior_rows(
                self.w, *_empty_behaviors()
            )
        u, t, tag, item = (np.concatenate(x) for x in zip(*parts, strict=True))
        order = np.lexsort((t, u))
        u, t, tag, item = u[order], t[order], tag[order], item[order]
        self._seen = (len(self.beh), (u, t, tag, item))
        key = (u.astype(np.int64) << 32) | t
        lo = np.searchsorted(key, users.astype(np.int64) << 32, side="left")
        hi = np.searchsorted(key, (users.astype(np.int64) << 32) | times, side="left")
        counts = hi - lo
        request = np.repeat(np.arange(users.size), counts)
        rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows += np.repeat(lo, counts)
        return {"request": request} | _behavior_rows(
            self.w, u[rows], t[rows], tag[rows], item[rows]
        )

    def _behaviors(self) -> dict[str, np.ndarray]:
        if not self.beh:
            return _behavior_rows(self.w, *_empty_behaviors())
        users, times, tags, items = (np.concatenate(x) for x in zip(*self.beh, strict=True))
        order = np.lexsort((times, users))
        return _behavior_rows(self.w, users[order], times[order], tags[order], items[order])

    def _impressions(self) -> dict[str, np.ndarray]:
        if not self.imp:
            keys = ("user", "time_stamp", "ad", "pid", "clk", "slot")
            return {k: np.zeros(0, dtype=np.int64) for k in keys} | {
                k: np.zeros(0) for k in TRUTH_EXTRA
            }
        cols = {k: np.concatenate([d[k] for d in self.imp]) for k in self.imp[0]}
        order = np.lexsort((cols["pid"], cols["time_stamp"], cols["user"]))
        cols = {k: v[order] for k, v in cols.items()}
        cols["user"] = self.w.users.ids[cols["user"]]
        return cols


def _empty_behaviors() -> tuple[np.ndarray, ...]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0, dtype=np.int8), empty


def _behavior_rows(
    model: BehaviorModel,
    users: np.ndarray,
    times: np.ndarray,
    tags: np.ndarray,
    items: np.ndarray,
) -> dict[str, np.ndarray]:
    cat = model.catalog
    return {
        "user": model.users.ids[users],
        "time_stamp": times,
        "btag": tags,
        "cate": cat.cate_ids[cat.item_cate[items]],
        "brand": cat.item_brand[items],
    }


def _slate_columns(request: SlateRequest, decision: Decision) -> dict[str, np.ndarray]:
    truth = request.truth
    probs = decision.probabilities
    if probs is None:
        probs = np.full((request.size, request.k), np.nan)
    return {
        "slate_ad": request.ad_index,
        "slate_probability": probs,
        "slate_p_click": truth.p_click,
        "slate_p_buy_given_click": truth.p_buy_given_click,
        "slate_expected_further_views": truth.expected_further_views,
    }
