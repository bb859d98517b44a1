"""The synthetic Taobao world: a generative model with known ground truth (README: "Generate").

numpy only. The world has three parts:

* a catalog of items, the first ``n_ads`` of which are ads (category, brand, campaign, customer,
  price, long-tail popularity, latent vector, quality, attractiveness and "curiosity": the
  expected number of further views a click on the item triggers);
* users with a latent taste vector, profile fields correlated with it, activity and price level;
* sessions, simulated step by step for a whole chunk of users at once. Each step is one page
  view; the user's interest state is an exponentially weighted mean of the latent vectors of
  the items viewed so far in the session, so the most recent views weigh most and the ORDER of
  the behavior sequence carries signal. On impression days a page may show one ad, chosen by a
  logging policy with known propensities; a click leads to a pv of the ad and to a
  Poisson(curiosity x user exploration) number of extra views, which are pages that can show
  ads again. A conversion is a ``buy`` of the ad's category and brand within 24 hours.

Sessions live in 3-hour slots of the UTC+8 day (at most one per slot), start in the first
30 minutes of their slot and last at most ``max_session_minutes`` (+ up to 8 minutes for a
trailing buy), so consecutive sessions are more than 70 minutes apart (60 at the largest cap),
while gaps inside a session are capped at 20 minutes: a 30-minute-gap sessionizer recovers the
sessions exactly (delayed conversions are the one exception: a lone ``buy`` hours after its
click, which may form a session of its own).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

T0 = 1_494_000_000  # 2017-05-06 00:00:00 UTC+8, the first impression day of the public data
FIRST_DAY = "2017-05-06"
DAY_S = 86_400
SLOT_S = 3 * 3600
N_SLOTS = DAY_S // SLOT_S
SLOT_WEIGHTS = np.array([0.35, 0.1, 0.6, 1.0, 1.1, 1.0, 1.5, 1.7])  # diurnal shape, UTC+8
MAX_START_OFFSET_S = 1800
MAX_GAP_S = 1200  # largest gap between two behaviors of one session
PIDS = ("430548_1007", "430539_1007")
PID_SHARES = (0.62, 0.38)  # 16.47M vs 10.09M impressions in the public raw_sample
BTAGS = ("pv", "cart", "fav", "buy")
PV, CART, FAV, BUY = 0, 1, 2, 3
N_FAVCATS = 16  # size of each user's sampled favourite-category list
N_RELATED = 5  # nearest categories kept per category

# Weights of the click and conversion models; the intercepts live in WorldConfig.
CLICK_W = {"taste": 1.0, "interest": 2.0, "same_cate": 0.8, "attract": 0.5, "user": 1.0}
PID_BIAS = np.array([0.0, 0.08])
BUY_W = {"taste": 1.2, "quality": 0.9, "price_gap2": 0.35, "price_gap": 0.25, "user": 1.0}


@dataclass(frozen=True)
class WorldConfig:
    """Generation parameters; sizes left as None are derived from ``users`` (see ``sizes``)."""

    seed: int = 0
    users: int = 5000
    days: int = 8  # impression days from 2017-05-06 (UTC+8); the last one is the test day
    history_days: int = 3  # behavior-only days before the first impression day
    chunk_users: int = 2000  # users simulated (and written) per chunk; part of the seed
    ads: int | None = None
    items: int | None = None  # all catalog items, ads included
    cates: int | None = None
    brands: int | None = None
    dim: int = 8
    sessions_per_day: float = 1.3
    session_views: float = 8.0  # mean organic page views per session
    page_ad_rate: float = 0.35  # share of pages (on impression days) that show an ad
    max_session_minutes: int = 70
    mean_gap_s: float = 40.0
    interest_decay: float = 0.5  # weight of the newest view in the interest state
    ctr_bias: float = -4.55
    cvr_bias: float = -3.0
    further_views_mean: float = 2.5  # mean expected further views per click
    delayed_buy_share: float = 0.3  # conversions logged 1-22 h after the click
    cart_rate: float = 0.022
    fav_rate: float = 0.013
    organic_buy_rate: float = 0.006
    no_profile_share: float = 0.07
    ad_brand_null: float = 0.291
    item_brand_null: float = 0.05
    pvalue_null: float = 0.54
    city_null: float = 0.32
    policy_mix: tuple[float, float, float] = (0.3, 0.4, 0.3)  # global, page cate, user taste

    def validate(self) -> None:
        """Raise ValueError with a one-line message on the first invalid parameter."""
        positive = {"users": self.users, "days": self.days, "chunk_users": self.chunk_users}
        positive |= {"dim": self.dim, "max_session_minutes": self.max_session_minutes}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.history_days < 0:
            raise ValueError(f"history_days must be >= 0, got {self.history_days}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.max_session_minutes > 80:
            raise ValueError(
                "max_session_minutes must be <= 80 (sessions must stay > 30 min apart)"
            )
        for name in ("ads", "items", "cates", "brands"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        sizes = self.sizes()
        if sizes["ads"] < sizes["cates"] or sizes["items"] < sizes["ads"]:
            raise ValueError("need cates <= ads <= items (every category has an ad)")
        if abs(sum(self.policy_mix) - 1.0) > 1e-9 or min(self.policy_mix) < 0:
            raise ValueError("policy_mix must be 3 non-negative weights summing to 1")

    def sizes(self) -> dict[str, int]:
        ads = self.ads or int(np.clip(round(2.5 * self.users), 500, 900_000))
        cates = self.cates or int(np.clip(round(5 * math.sqrt(ads)), 30, 6769))
        items = self.items or 3 * ads
        brands = self.brands or max(cates, ads // 2)
        return {"ads": ads, "items": max(items, ads), "cates": min(cates, ads), "brands": brands}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["policy_mix"] = list(self.policy_mix)
        out["derived_sizes"] = self.sizes()
        return out


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _unique_ids(rng: np.random.Generator, n: int, span: int) -> np.ndarray:
    """Increasing unique positive ids spread over about [1, span] (like sampled raw ids)."""
    gaps = rng.integers(1, max(2, int(2 * span / max(n, 1))), size=n)
    return np.cumsum(gaps).astype(np.int64)


class Segments:
    """Weighted sampling inside groups: items of a category, ads of a category, or all ads."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        counts = np.bincount(group, minlength=n_groups)
        self.start = np.concatenate([[0], np.cumsum(counts)])
        self.cum = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        self.total = self.cum[self.start[1:]] - self.cum[self.start[:-1]]

    def sample(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.start[groups], self.start[groups + 1]
        target = self.cum[lo] + rng.random(groups.size) * self.total[groups]
        pos = np.searchsorted(self.cum, target, side="right") - 1
        return self.order[np.clip(pos, lo, hi - 1)]


@dataclass
class Catalog:
    """Items (ads first) and categories. Raw ids are what the CSVs show; arrays are indexed."""

    cate_ids: np.ndarray
    cate_vec: np.ndarray
    cate_pop: np.ndarray
    related: np.ndarray  # [C, N_RELATED] nearest categories in latent space
    item_cate: np.ndarray
    item_brand: np.ndarray  # raw brand id, -1 = null
    item_vec: np.ndarray
    item_pop: np.ndarray
    item_logprice: np.ndarray
    price: np.ndarray  # rounded, as written to ad_feature.csv
    quality: np.ndarray
    attract: np.ndarray
    curiosity: np.ndarray  # expected further views after a click (before user exploration)
    ad_ids: np.ndarray  # adgroup_id of items[:n_ads]
    ad_campaign: np.ndarray
    ad_customer: np.ndarray
    ad_weight: np.ndarray  # logging-policy weight
    items_by_cate: Segments = field(repr=False)
    ads_by_cate: Segments = field(repr=False)
    ads_all: Segments = field(repr=False)
    cates_all: Segments = field(repr=False)

    @property
    def n_ads(self) -> int:
        return int(self.ad_ids.size)


@dataclass
class Users:
    ids: np.ndarray
    taste: np.ndarray
    favcats: np.ndarray  # [N, N_FAVCATS] categories sampled from the user's taste
    price_pref: np.ndarray  # preferred log price
    click_bias: np.ndarray
    buy_bias: np.ndarray
    explore: np.ndarray  # multiplies the ads' curiosity
    activity: np.ndarray  # mean sessions per day
    session_len: np.ndarray  # mean organic views per session
    profile: dict[str, np.ndarray]  # user_profile.csv columns, -1 = null
    has_profile: np.ndarray


def _price_round(logprice: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Prices like the public data: mostly whole yuan (170.0), some 1-2 decimals (3.9, 32.99)."""
    p = np.exp(logprice)
    r = rng.random(p.size)
    whole = np.maximum(np.round(p), 1.0)
    one = np.maximum(np.round(p, 1), 0.1)
    two = np.maximum(np.round(p) - 0.01, 0.01)
    return np.where(r < 0.6, whole, np.where(r < 0.85, one, two))


def _nearest_cates(vec: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((vec.shape[0], k), dtype=np.int64)
    for lo in range(0, vec.shape[0], 512):
        sim = vec[lo : lo + 512] @ vec.T
        sim[np.arange(sim.shape[0]), np.arange(lo, lo + sim.shape[0])] = -np.inf
        out[lo : lo + 512] = np.argsort(-sim, axis=1)[:, :k]
    return out


def build_catalog(cfg: WorldConfig) -> Catalog:
    rng = _rng(cfg.seed, 0)
    s = cfg.sizes()
    n_c, n_a, n_i, k = s["cates"], s["ads"], s["items"], cfg.dim
    cate_ids = np.sort(rng.choice(np.arange(1, 12_000), size=n_c, replace=False))
    cate_vec = _normalize(rng.normal(size=(n_c, k)))
    cate_pop = rng.permutation(1.0 / np.arange(1, n_c + 1) ** 0.9)
    cate_logprice = rng.normal(4.0, 1.0, n_c)
    cate_curiosity = rng.normal(0.0, 0.5, n_c)
    # every category gets at least one ad; the rest follow category popularity
    item_cate = rng.choice(n_c, size=n_i, p=cate_pop / cate_pop.sum())
    item_cate[:n_c] = rng.permutation(n_c)
    item_vec = _normalize(cate_vec[item_cate] + 0.3 * rng.normal(size=(n_i, k)))
    item_pop = rng.lognormal(0.0, 1.5, n_i)
    item_logprice = cate_logprice[item_cate] + rng.normal(0.0, 0.6, n_i)
    quality = rng.normal(size=n_i)
    attract = -0.3 * quality + math.sqrt(1 - 0.09) * rng.normal(size=n_i)
    log_cur = math.log(cfg.further_views_mean) + cate_curiosity[item_cate]
    curiosity = np.clip(np.exp(log_cur + rng.normal(0.0, 0.6, n_i) - 0.3), 0.1, 40.0)
    item_brand = _assign_brands(rng, item_cate, cate_pop, s["brands"])
    null = rng.random(n_i) < np.where(np.arange(n_i) < n_a, cfg.ad_brand_null, cfg.item_brand_null)
    item_brand[null] = -1
    ad_ids = _unique_ids(rng, n_a, 846_811)
    n_camp = max(1, n_a // 2)
    camp_ids = _unique_ids(rng, n_camp, 423_436)
    cust_of_camp = rng.integers(0, max(1, int(n_camp / 1.65)), n_camp)
    cust_ids = _unique_ids(rng, max(1, int(n_camp / 1.65)), 255_875)
    camp = rng.integers(0, n_camp, n_a)
    ad_weight = np.sqrt(item_pop[:n_a]) * rng.lognormal(0.0, 0.5, n_a)
    return Catalog(
        cate_ids=cate_ids,
        cate_vec=cate_vec,
        cate_pop=cate_pop,
        related=_nearest_cates(cate_vec, min(N_RELATED, max(1, n_c - 1))),
        item_cate=item_cate,
        item_brand=item_brand,
        item_vec=item_vec,
        item_pop=item_pop,
        item_logprice=item_logprice,
        price=_price_round(item_logprice, rng),
        quality=quality,
        attract=attract,
        curiosity=curiosity,
        ad_ids=ad_ids,
        ad_campaign=camp_ids[camp],
        ad_customer=cust_ids[cust_of_camp[camp]],
        ad_weight=ad_weight,
        items_by_cate=Segments(item_cate, item_pop, n_c),
        ads_by_cate=Segments(item_cate[:n_a], ad_weight, n_c),
        ads_all=Segments(np.zeros(n_a, dtype=np.int64), ad_weight, 1),
        cates_all=Segments(np.zeros(n_c, dtype=np.int64), cate_pop, 1),
    )


def _assign_brands(
    rng: np.random.Generator, item_cate: np.ndarray, cate_pop: np.ndarray, n_brands: int
) -> np.ndarray:
    """Each brand lives in one category; popular categories hold more brands; skewed use."""
    n_c = cate_pop.size
    share = cate_pop**0.7 / (cate_pop**0.7).sum()
    per_cate = np.maximum(1, np.floor(share * max(n_brands - n_c, 0)).astype(np.int64) + 1)
    offset = np.concatenate([[0], np.cumsum(per_cate)])
    brand_ids = _unique_ids(rng, int(offset[-1]), 460_000)
    brand_ids = rng.permutation(brand_ids)
    pick = np.floor(per_cate[item_cate] * rng.random(item_cate.size) ** 2).astype(np.int64)
    return brand_ids[offset[item_cate] + pick]


def _sample_rows(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws with replacement from each row of a row-stochastic matrix."""
    rows, cols = probs.shape
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    offset = np.arange(rows)[:, None]
    flat = (cum + offset).ravel()  # row r lives in (r, r + 1]: one sorted array for all rows
    u = rng.random((rows, n)) + offset
    idx = np.searchsorted(flat, u.ravel(), side="left").reshape(rows, n) - offset * cols
    return np.clip(idx, 0, cols - 1)


def _favourite_cates(
    taste: np.ndarray, cat: Catalog, rng: np.random.Generator, block: int = 256
) -> np.ndarray:
    out = np.empty((taste.shape[0], N_FAVCATS), dtype=np.int64)
    log_pop = 0.5 * np.log(cat.cate_pop)
    for lo in range(0, taste.shape[0], block):
        logits = 4.0 * taste[lo : lo + block] @ cat.cate_vec.T + log_pop
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[lo : lo + block] = _sample_rows(p, N_FAVCATS, rng)
    return out


def _quantile_levels(score: np.ndarray, shares: list[float], first: int) -> np.ndarray:
    cuts = np.quantile(score, np.cumsum(shares)[:-1]) if score.size else []
    return np.digitize(score, cuts).astype(np.int64) + first


def build_users(cfg: WorldConfig, cat: Catalog) -> Users:
    rng = _rng(cfg.seed, 1)
    n, k = cfg.users, cfg.dim
    pop = cat.cate_pop / cat.cate_pop.sum()
    c1, c2 = rng.choice(pop.size, size=n, p=pop), rng.choice(pop.size, size=n, p=pop)
    taste = _normalize(cat.cate_vec[c1] + 0.6 * cat.cate_vec[c2] + 0.4 * rng.normal(size=(n, k)))
    price_pref = rng.normal(4.0, 0.8, n)
    activity = cfg.sessions_per_day * rng.lognormal(-0.18, 0.6, n)
    users = Users(
        ids=_unique_ids(rng, n, 1_141_729),
        taste=taste,
        favcats=_favourite_cates(taste, cat, rng),
        price_pref=price_pref,
        click_bias=rng.normal(0.0, 0.4, n),
        buy_bias=rng.normal(0.0, 0.4, n),
        explore=rng.lognormal(-0.045, 0.3, n),
        activity=activity,
        session_len=cfg.session_views * rng.lognormal(-0.08, 0.4, n),
        profile={},
        has_profile=rng.random(n) >= cfg.no_profile_share,
    )
    users.profile = _profiles(cfg, users, rng)
    return users


def _profiles(cfg: WorldConfig, users: Users, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """user_profile.csv fields, correlated with taste, price level and activity (-1 = null)."""
    n, scale = users.ids.size, math.sqrt(cfg.dim)
    t = users.taste * scale
    gender = np.where(t[:, 0] + 0.7 * rng.normal(size=n) > -0.45, 2, 1)
    age = _quantile_levels(
        t[:, 1] + 0.8 * rng.normal(size=n), [0.01, 0.12, 0.28, 0.3, 0.19, 0.1], 0
    )
    group = np.where(gender == 2, 6, 0) + np.minimum(age, 6)
    segid = np.where(rng.random(n) < 0.85, 0, 1 + users.favcats[:, 0] % 96)
    pvalue = _quantile_levels(users.price_pref + 0.3 * rng.normal(size=n), [0.3, 0.6, 0.1], 1)
    shopping = _quantile_levels(users.activity * users.session_len, [0.05, 0.13, 0.82], 1)
    occupation = ((age <= 2) & (rng.random(n) < 0.3)).astype(np.int64)
    city = rng.choice(np.arange(1, 5), size=n, p=[0.1, 0.35, 0.3, 0.25])
    pvalue[rng.random(n) < cfg.pvalue_null] = -1
    city[rng.random(n) < cfg.city_null] = -1
    return {
        "cms_segid": segid,
        "cms_group_id": group,
        "final_gender_code": gender,
        "age_level": age,
        "pvalue_level": pvalue,
        "shopping_level": shopping,
        "occupation": occupation,
        "new_user_class_level": city,
    }


@dataclass
class ChunkLogs:
    """One chunk's logs, sorted by (user, time). Ids are raw ids; -1 = null brand."""

    behaviors: dict[str, np.ndarray]  # user, time_stamp, btag (code), cate, brand
    impressions: dict[str, np.ndarray]  # user, time_stamp, ad (index), pid (code), clk + truth
    n_sessions: int


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


class TaobaoWorld:
    """The generated state (catalog, users) plus the behavior models that act on it.

    ``simulate_chunk`` produces the logged data of one chunk of users; ``respond`` answers a
    ranking policy's choice for one user in closed loop. Both are deterministic for a seed.
    """

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self.config.validate()
        self.catalog = build_catalog(self.config)
        self.users = build_users(self.config, self.catalog)
        self.behavior_start = T0 - self.config.history_days * DAY_S
        self.impression_end = T0 + self.config.days * DAY_S  # exclusive
        self._state_z = self.users.taste.copy()
        self._state_cate = np.full(self.config.users, -1, dtype=np.int64)
        self._loop_rng = _rng(self.config.seed, 3)

    # --- chunking -----------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return -(-self.config.users // self.config.chunk_users)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.config.chunk_users
        return lo, min(lo + self.config.chunk_users, self.config.users)

    def simulate_chunk(self, chunk: int) -> ChunkLogs:
        """Sessions, behaviors and impressions of the users of one chunk."""
        lo, hi = self.chunk_range(chunk)
        rng = _rng(self.config.seed, 2, chunk)
        plan = self._plan_sessions(np.arange(lo, hi), rng)
        return _SessionSimulator(self, plan, rng).run()

    def _plan_sessions(self, uix: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """At most one session per 3-hour slot; slot choice follows a diurnal profile."""
        n_days = self.config.history_days + self.config.days
        lam = np.repeat(self.users.activity[uix][:, None], n_days, axis=1)
        n = np.minimum(rng.poisson(lam), N_SLOTS)
        keys = np.log(SLOT_WEIGHTS) + rng.gumbel(size=(uix.size, n_days, N_SLOTS))
        rank = np.argsort(np.argsort(-keys, axis=2), axis=2)
        b, d, s = np.nonzero(rank < n[:, :, None])
        start = self.behavior_start + d * DAY_S + s * SLOT_S
        start += rng.integers(0, MAX_START_OFFSET_S, b.size)
        users = uix[b]
        budget = rng.geometric(1.0 / np.maximum(self.users.session_len[users], 1.0))
        return {
            "user": users,
            "start": start.astype(np.int64),
            "budget": np.minimum(budget, 100).astype(np.int64),
            "imp_day": d >= self.config.history_days,
        }

    # --- behavior models ----------------------------------------------------------------------
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
            + w["taste"] * _rowdot(self.users.taste[users], v)
            + w["interest"] * _rowdot(interest, v)
            + w["same_cate"] * (cat.item_cate[ad] == last_cate)
            + w["attract"] * cat.attract[ad]
            + w["user"] * self.users.click_bias[users]
            + PID_BIAS[pid]
        )
        return _sigmoid(logit)

    def p_buy(self, users: np.ndarray, ad: np.ndarray) -> np.ndarray:
        """P(buy | click): taste, quality and price against the user's price level. Quality is
        anti-correlated with the ads' appeal, so clicks are a biased sample for conversion."""
        cat, w = self.catalog, BUY_W
        gap = cat.item_logprice[ad] - self.users.price_pref[users]
        logit = (
            self.config.cvr_bias
            + w["taste"] * _rowdot(self.users.taste[users], cat.item_vec[ad])
            + w["quality"] * cat.quality[ad]
            - w["price_gap2"] * gap**2
            - w["price_gap"] * gap
            + w["user"] * self.users.buy_bias[users]
        )
        return _sigmoid(logit)

    def expected_further_views(self, users: np.ndarray, ad: np.ndarray) -> np.ndarray:
        return self.catalog.curiosity[ad] * self.users.explore[users]

    def extras(
        self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, ...]:
        """Organic cart / fav / buy decisions for viewed items (likelier for items to taste)."""
        cfg = self.config
        lift = 2.0 * _sigmoid(2.0 * _rowdot(self.users.taste[users], self.catalog.item_vec[items]))
        r = rng.random((3, users.size))
        rates = np.array([cfg.cart_rate, cfg.fav_rate, cfg.organic_buy_rate])[:, None]
        return tuple(r < rates * lift[None, :])

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


class _SessionSimulator:
    """Steps all sessions of a chunk forward together, one page view per step."""

    def __init__(self, world: TaobaoWorld, plan: dict[str, np.ndarray], rng: np.random.Generator):
        self.w, self.cfg, self.rng = world, world.config, rng
        n = plan["user"].size
        self.user, self.start, self.budget = plan["user"], plan["start"], plan["budget"]
        self.imp_day = plan["imp_day"]
        self.t = self.start.copy()
        self.steps = np.zeros(n, dtype=np.int64)
        self.z = world.users.taste[self.user].copy()
        self.last_cate = np.full(n, -1, dtype=np.int64)
        self.pending = np.full(n, -1, dtype=np.int64)  # clicked ad whose pv comes next
        self.pending_t = np.zeros(n, dtype=np.int64)
        self.beh: list[tuple[np.ndarray, ...]] = []
        self.imp: list[dict[str, np.ndarray]] = []

    def run(self) -> ChunkLogs:
        cap = 60 * self.cfg.max_session_minutes
        act = np.arange(self.user.size)
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
        ad, prop = w.policy_pick(users, page, rng)
        pc = w.p_click(users, self.z[p], page, ad, pid)
        pb = w.p_buy(users, ad)
        mu = w.expected_further_views(users, ad)
        clk = rng.random(m) < pc
        buy = clk & (rng.random(m) < pb)
        further = np.where(clk, rng.poisson(mu), 0)
        t_imp = self.t[p] + 1
        self.pending[p[clk]] = ad[clk]
        self.pending_t[p[clk]] = t_imp[clk]
        self.budget[p[clk]] += further[clk]
        self._emit(users[buy], self._buy_times(t_imp[buy]), BUY, ad[buy])
        self.imp.append(
            {
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
            }
        )

    def _buy_times(self, t_imp: np.ndarray) -> np.ndarray:
        """Most conversions happen minutes after the click inside the session; the rest 1-22 h
        later (kept inside the logged period; otherwise moved into the session)."""
        rng, n = self.rng, t_imp.size
        soon = t_imp + 2 + rng.integers(20, 480, n)
        late = t_imp + rng.integers(3600, 22 * 3600, n)
        delayed = (rng.random(n) < self.cfg.delayed_buy_share) & (late < self.w.impression_end)
        return np.where(delayed, late, soon)

    def _behaviors(self) -> dict[str, np.ndarray]:
        cat = self.w.catalog
        if not self.beh:
            empty = np.zeros(0, dtype=np.int64)
            return {k: empty for k in ("user", "time_stamp", "cate", "brand")} | {
                "btag": np.zeros(0, dtype=np.int8)
            }
        users, times, tags, items = (np.concatenate(x) for x in zip(*self.beh, strict=True))
        order = np.lexsort((times, users))
        items = items[order]
        return {
            "user": self.w.users.ids[users[order]],
            "time_stamp": times[order],
            "btag": tags[order],
            "cate": cat.cate_ids[cat.item_cate[items]],
            "brand": cat.item_brand[items],
        }

    def _impressions(self) -> dict[str, np.ndarray]:
        if not self.imp:
            keys = ("user", "time_stamp", "ad", "pid", "clk")
            return {k: np.zeros(0, dtype=np.int64) for k in keys} | {
                k: np.zeros(0) for k in TRUTH_EXTRA
            }
        cols = {k: np.concatenate([d[k] for d in self.imp]) for k in self.imp[0]}
        order = np.lexsort((cols["pid"], cols["time_stamp"], cols["user"]))
        cols = {k: v[order] for k, v in cols.items()}
        cols["user"] = self.w.users.ids[cols["user"]]
        return cols


TRUTH_EXTRA = (
    "p_click",
    "p_buy_given_click",
    "expected_further_views",
    "propensity",
    "conversion",
    "further_views",
)
