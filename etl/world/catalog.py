"""The catalog: items (ads first) and categories, and its growth by new ads (the long tail).

Items have a category, brand, price, long-tail popularity, latent vector, quality,
attractiveness and "curiosity" (expected further views after a click); the first ``n_ads``
items are ads (adgroup, campaign, customer, logging-policy weight). New ads are inserted at
the end of the ad block, so an ad's index never changes while the catalog grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from etl.world.config import N_RELATED, WorldConfig
from etl.world.numeric import Segments, normalize, stream, unique_ids

# item arrays (length n_items, ads first) and ad arrays (length n_ads)
ITEM_FIELDS = (
    "item_cate",
    "item_brand",
    "item_vec",
    "item_pop",
    "item_logprice",
    "price",
    "quality",
    "attract",
    "curiosity",
)
AD_FIELDS = ("ad_ids", "ad_campaign", "ad_customer", "ad_weight", "ad_birth_day")


@dataclass
class Catalog:
    """Items (ads first) and categories. Raw ids are what the CSVs show; arrays are indexed."""

    cate_ids: np.ndarray
    cate_vec: np.ndarray
    cate_pop: np.ndarray
    cate_logprice: np.ndarray
    cate_curiosity: np.ndarray
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
    ad_ids: np.ndarray  # adgroup_id of items[:n_ads], increasing
    ad_campaign: np.ndarray
    ad_customer: np.ndarray
    ad_weight: np.ndarray  # logging-policy weight
    ad_birth_day: np.ndarray  # impression day the ad entered the catalog (0: from the start)
    items_by_cate: Segments = field(init=False, repr=False)
    ads_by_cate: Segments = field(init=False, repr=False)
    ads_all: Segments = field(init=False, repr=False)
    cates_all: Segments = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n_c, n_a = self.cate_ids.size, self.ad_ids.size
        self.items_by_cate = Segments(self.item_cate, self.item_pop, n_c)
        self.ads_by_cate = Segments(self.item_cate[:n_a], self.ad_weight, n_c)
        self.ads_all = Segments(np.zeros(n_a, dtype=np.int64), self.ad_weight, 1)
        self.cates_all = Segments(np.zeros(n_c, dtype=np.int64), self.cate_pop, 1)

    @property
    def n_ads(self) -> int:
        return int(self.ad_ids.size)

    def new_ads(self, day: int, window: int) -> np.ndarray:
        """Indices of the ads that entered in the ``window`` days up to ``day`` (not day 0's)."""
        born = self.ad_birth_day
        return np.flatnonzero((born > 0) & (born <= day) & (born > day - window))


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


def _curiosity(
    cfg: WorldConfig, cate_curiosity: np.ndarray, cate: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    log_cur = math.log(cfg.further_views_mean) + cate_curiosity[cate]
    return np.clip(np.exp(log_cur + rng.normal(0.0, 0.6, cate.size) - 0.3), 0.1, 40.0)


def build_catalog(cfg: WorldConfig) -> Catalog:
    rng = stream(cfg.seed, 0)
    s = cfg.sizes()
    n_c, n_a, n_i, k = s["cates"], s["ads"], s["items"], cfg.dim
    cate_ids = np.sort(rng.choice(np.arange(1, 12_000), size=n_c, replace=False))
    cate_vec = normalize(rng.normal(size=(n_c, k)))
    cate_pop = rng.permutation(1.0 / np.arange(1, n_c + 1) ** 0.9)
    cate_logprice = rng.normal(4.0, 1.0, n_c)
    cate_curiosity = rng.normal(0.0, 0.5, n_c)
    # every category gets at least one ad; the rest follow category popularity
    item_cate = rng.choice(n_c, size=n_i, p=cate_pop / cate_pop.sum())
    item_cate[:n_c] = rng.permutation(n_c)
    item_vec = normalize(cate_vec[item_cate] + 0.3 * rng.normal(size=(n_i, k)))
    item_pop = rng.lognormal(0.0, 1.5, n_i)
    item_logprice = cate_logprice[item_cate] + rng.normal(0.0, 0.6, n_i)
    quality = rng.normal(size=n_i)
    attract = -0.3 * quality + math.sqrt(1 - 0.09) * rng.normal(size=n_i)
    curiosity = _curiosity(cfg, cate_curiosity, item_cate, rng)
    item_brand = _assign_brands(rng, item_cate, cate_pop, s["brands"])
    null = rng.random(n_i) < np.where(np.arange(n_i) < n_a, cfg.ad_brand_null, cfg.item_brand_null)
    item_brand[null] = -1
    ad_ids = unique_ids(rng, n_a, 846_811)
    n_camp = max(1, n_a // 2)
    camp_ids = unique_ids(rng, n_camp, 423_436)
    cust_of_camp = rng.integers(0, max(1, int(n_camp / 1.65)), n_camp)
    cust_ids = unique_ids(rng, max(1, int(n_camp / 1.65)), 255_875)
    camp = rng.integers(0, n_camp, n_a)
    ad_weight = np.sqrt(item_pop[:n_a]) * rng.lognormal(0.0, 0.5, n_a)
    return Catalog(
        cate_ids=cate_ids,
        cate_vec=cate_vec,
        cate_pop=cate_pop,
        cate_logprice=cate_logprice,
        cate_curiosity=cate_curiosity,
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
        ad_birth_day=np.zeros(n_a, dtype=np.int64),
    )


def _assign_brands(
    rng: np.random.Generator, item_cate: np.ndarray, cate_pop: np.ndarray, n_brands: int
) -> np.ndarray:
    """Each brand lives in one category; popular categories hold more brands; skewed use."""
    n_c = cate_pop.size
    share = cate_pop**0.7 / (cate_pop**0.7).sum()
    per_cate = np.maximum(1, np.floor(share * max(n_brands - n_c, 0)).astype(np.int64) + 1)
    offset = np.concatenate([[0], np.cumsum(per_cate)])
    brand_ids = unique_ids(rng, int(offset[-1]), 460_000)
    brand_ids = rng.permutation(brand_ids)
    pick = np.floor(per_cate[item_cate] * rng.random(item_cate.size) ** 2).astype(np.int64)
    return brand_ids[offset[item_cate] + pick]


def grow_catalog(cat: Catalog, cfg: WorldConfig, day: int, n_new: int) -> Catalog:
    """The catalog with ``n_new`` ads entering on impression day ``day`` (seeded by the day):
    drawn like the first ads (category by popularity, long-tail popularity, price, quality,
    curiosity), with a brand of their category and an existing campaign; no history."""
    if n_new <= 0:
        return cat
    rng = stream(cfg.seed, 7, day)
    cate = rng.choice(cat.cate_ids.size, size=n_new, p=cat.cate_pop / cat.cate_pop.sum())
    logprice = cat.cate_logprice[cate] + rng.normal(0.0, 0.6, n_new)
    quality = rng.normal(size=n_new)
    brand = cat.item_brand[cat.items_by_cate.sample(cate, rng)]
    brand[rng.random(n_new) < cfg.ad_brand_null] = -1
    pop = rng.lognormal(0.0, 1.5, n_new)
    new_items = {
        "item_cate": cate,
        "item_brand": brand,
        "item_vec": normalize(cat.cate_vec[cate] + 0.3 * rng.normal(size=(n_new, cfg.dim))),
        "item_pop": pop,
        "item_logprice": logprice,
        "price": _price_round(logprice, rng),
        "quality": quality,
        "attract": -0.3 * quality + math.sqrt(1 - 0.09) * rng.normal(size=n_new),
        "curiosity": _curiosity(cfg, cat.cate_curiosity, cate, rng),
    }
    gap = max(1, int(cat.ad_ids[-1] // max(cat.n_ads, 1)))
    sibling = rng.integers(0, cat.n_ads, n_new)  # the new ad joins this ad's campaign
    new_ads = {
        "ad_ids": unique_ids(rng, n_new, gap * n_new, start=int(cat.ad_ids[-1])),
        "ad_campaign": cat.ad_campaign[sibling],
        "ad_customer": cat.ad_customer[sibling],
        "ad_weight": np.sqrt(pop) * rng.lognormal(0.0, 0.5, n_new),
        "ad_birth_day": np.full(n_new, day, dtype=np.int64),
    }
    n_a = cat.n_ads
    items = {
        f: np.concatenate([getattr(cat, f)[:n_a], v, getattr(cat, f)[n_a:]])
        for f, v in new_items.items()
    }
    ads = {f: np.concatenate([getattr(cat, f), v]) for f, v in new_ads.items()}
    return replace(cat, **items, **ads)
