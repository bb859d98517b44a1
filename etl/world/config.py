"""The world's constants and options: ``WorldConfig`` (generation) and ``LoopConfig`` (the
closed loop: slate size, new ads per day). numpy only."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class LoopConfig:
    """The world in the closed loop: what a policy is offered and how the catalog grows.

    A slate holds ``slate`` candidates: the logging policy's own draw first, then ads by the
    logging mix (popular, the page's category, the user's favourite categories) and a
    ``slate_new_share`` of ads that entered the catalog in the last ``new_ad_days`` days. Each
    impression day after day 0, ``new_ad_share`` x (ads so far) new ads enter with no history.
    """

    slate: int = 30
    new_ad_share: float = 0.05
    new_ad_days: int = 3
    slate_new_share: float = 0.1
    record_slates: bool = False  # keep every candidate of every slate (for slates.csv / OPE)

    def validate(self) -> None:
        """Raise ValueError with a one-line message on the first invalid parameter."""
        if not 1 <= self.slate <= 1000:
            raise ValueError(f"slate must be in [1, 1000], got {self.slate}")
        if not 0.0 <= self.new_ad_share <= 1.0:
            raise ValueError(f"new_ad_share must be in [0, 1], got {self.new_ad_share}")
        if self.new_ad_days < 1:
            raise ValueError(f"new_ad_days must be >= 1, got {self.new_ad_days}")
        if not 0.0 <= self.slate_new_share <= 1.0:
            raise ValueError(f"slate_new_share must be in [0, 1], got {self.slate_new_share}")
