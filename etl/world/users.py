"""Users: a latent taste vector, profile fields correlated with it, activity and price level.

Users never change: they keep their taste from one simulated day to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from etl.world.catalog import Catalog
from etl.world.config import N_FAVCATS, WorldConfig
from etl.world.numeric import normalize, sample_rows, stream, unique_ids


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


def _favourite_cates(
    taste: np.ndarray, cat: Catalog, rng: np.random.Generator, block: int = 256
) -> np.ndarray:
    out = np.empty((taste.shape[0], N_FAVCATS), dtype=np.int64)
    log_pop = 0.5 * np.log(cat.cate_pop)
    for lo in range(0, taste.shape[0], block):
        logits = 4.0 * taste[lo : lo + block] @ cat.cate_vec.T + log_pop
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[lo : lo + block] = sample_rows(p, N_FAVCATS, rng)
    return out


def _quantile_levels(score: np.ndarray, shares: list[float], first: int) -> np.ndarray:
    cuts = np.quantile(score, np.cumsum(shares)[:-1]) if score.size else []
    return np.digitize(score, cuts).astype(np.int64) + first


def build_users(cfg: WorldConfig, cat: Catalog) -> Users:
    rng = stream(cfg.seed, 1)
    n, k = cfg.users, cfg.dim
    pop = cat.cate_pop / cat.cate_pop.sum()
    c1, c2 = rng.choice(pop.size, size=n, p=pop), rng.choice(pop.size, size=n, p=pop)
    taste = normalize(cat.cate_vec[c1] + 0.6 * cat.cate_vec[c2] + 0.4 * rng.normal(size=(n, k)))
    price_pref = rng.normal(4.0, 0.8, n)
    activity = cfg.sessions_per_day * rng.lognormal(-0.18, 0.6, n)
    users = Users(
        ids=unique_ids(rng, n, 1_141_729),
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
