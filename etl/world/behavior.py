"""The behavior models of the world: what a user views next, which ad the logging policy shows,
and the true click, purchase and further-view probabilities (numpy only, vectorized)."""

from __future__ import annotations

import numpy as np

from etl.world.catalog import Catalog
from etl.world.config import BUY_W, CLICK_W, N_FAVCATS, PID_BIAS, WorldConfig
from etl.world.numeric import rowdot, sigmoid
from etl.world.users import Users


class BehaviorModel:
    """Config, catalog and users plus the models that act on them. Arrays are world indices:
    users into ``users``, items and ads into ``catalog`` (an ad's index is its item index)."""

    def __init__(self, config: WorldConfig, catalog: Catalog, users: Users) -> None:
        self.config, self.catalog, self.users = config, catalog, users

    def organic_items(
        self, users: np.ndarray, last_cate: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Next viewed item: stay in the category, move to a related one, follow taste, or
        browse popular categories; then an item of that category by popularity."""
        cat, m = self.catalog, users.size
        r = rng.random(m)
        started = last_cate >= 0
        last = np.where(started, last_cate, 0)
        related = cat.related[last, rng.integers(0, cat.related.shape[1], m)]
        fav = self.users.favcats[users, rng.integers(0, N_FAVCATS, m)]
        popular = cat.cates_all.sample(np.zeros(m, dtype=np.int64), rng)
        use_fav = np.where(started, (r >= 0.7) & (r < 0.9), r < 0.7)
        cate = np.where(use_fav, fav, popular)
        cate = np.where(started & (r < 0.7), related, cate)
        cate = np.where(started & (r < 0.55), last, cate)
        return cat.items_by_cate.sample(cate, rng)

    def policy_pick(
        self, users: np.ndarray, page_cate: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logging policy: an ad by weight from all ads, from the page's category or from one
        of the user's favourite categories. Returns (ad index, propensity of that ad)."""
        cat, m = self.catalog, users.size
        g, pg, _ = self.config.policy_mix
        r = rng.random(m)
        fav = self.users.favcats[users, rng.integers(0, N_FAVCATS, m)]
        in_cate = cat.ads_by_cate.sample(np.where(r < g + pg, page_cate, fav), rng)
        anywhere = cat.ads_all.sample(np.zeros(m, dtype=np.int64), rng)
        ad = np.where(r < g, anywhere, in_cate)
        return ad, self.propensity(users, page_cate, ad)

    def propensity(self, users: np.ndarray, page_cate: np.ndarray, ad: np.ndarray) -> np.ndarray:
        cat = self.catalog
        g, pg, tg = self.config.policy_mix
        w = cat.ad_weight[ad]
        cate = cat.item_cate[ad]
        in_cate = w / cat.ads_by_cate.total[cate]
        fav_share = (self.users.favcats[users] == cate[:, None]).mean(axis=1)
        return g * w / cat.ads_all.total[0] + (pg * (cate == page_cate) + tg * fav_share) * in_cate

    def p_click(
        self,
        users: np.ndarray,
        interest: np.ndarray,
        last_cate: np.ndarray,
        ad: np.ndarray,
        pid: np.ndarray,
    ) -> np.ndarray:
        """P(click | impression): taste, the session's interest state (recent views weigh
        most), whether the ad is in the category just viewed, ad appeal, slot and user."""
        cat, w = self.catalog, CLICK_W
        v = cat.item_vec[ad]
        logit = (
            self.config.ctr_bias
            + w["taste"] * rowdot(self.users.taste[users], v)
            + w["interest"] * rowdot(interest, v)
            + w["same_cate"] * (cat.item_cate[ad] == last_cate)
            + w["attract"] * cat.attract[ad]
            + w["user"] * self.users.click_bias[users]
            + PID_BIAS[pid]
        )
        return sigmoid(logit)

    def p_buy(self, users: np.ndarray, ad: np.ndarray) -> np.ndarray:
        """P(buy | click): taste, quality and price against the user's price level. Quality is
        anti-correlated with the ads' appeal, so clicks are a biased sample for conversion."""
        cat, w = self.catalog, BUY_W
        gap = cat.item_logprice[ad] - self.users.price_pref[users]
        logit = (
            self.config.cvr_bias
            + w["taste"] * rowdot(self.users.taste[users], cat.item_vec[ad])
            + w["quality"] * cat.quality[ad]
            - w["price_gap2"] * gap**2
            - w["price_gap"] * gap
            + w["user"] * self.users.buy_bias[users]
        )
        return sigmoid(logit)

    def expected_further_views(self, users: np.ndarray, ad: np.ndarray) -> np.ndarray:
        return self.catalog.curiosity[ad] * self.users.explore[users]

    def extras(
        self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, ...]:
        """Organic cart / fav / buy decisions for viewed items (likelier for items to taste)."""
        cfg = self.config
        lift = 2.0 * sigmoid(2.0 * rowdot(self.users.taste[users], self.catalog.item_vec[items]))
        r = rng.random((3, users.size))
        rates = np.array([cfg.cart_rate, cfg.fav_rate, cfg.organic_buy_rate])[:, None]
        return tuple(r < rates * lift[None, :])
