"""What is measured per arm and round: the day the world produced, and the model's quality
against the world's truth on one fixed evaluation day per seed."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from etl.online import RankRequest
from etl.world import PIDS, DayLogs, TaobaoWorld
from train.policy import Uniform
from train.sim.ranker import ModelScorer, ModelSlatePolicy, PastEvents, served_request

MIN_IMPRESSIONS = 5  # an ad "has data" from this many impressions on


def day_metrics(day: DayLogs, users: int, ad_impressions: np.ndarray) -> dict[str, float]:
    imp = day.logs.impressions
    n, purchases = int(imp["user"].size), int(imp["conversion"].sum())
    return {
        "impressions": float(n),
        "clicks": float(imp["clk"].sum()),
        "purchases": float(purchases),
        "further_views": float(imp["further_views"].sum()),
        "purchases_per_user_day": purchases / users,
        "purchases_per_impression": purchases / n if n else float("nan"),
        "ads_with_data": float((ad_impressions >= MIN_IMPRESSIONS).sum()),
        "ads": float(day.n_ads),
    }


@dataclass
class EvalSet:
    """Impressions of one day of held-out users (in no arm's logs) under uniform logging,
    with the world's truth, and the users' behaviors before them: the same rows score every
    arm's model of every round."""

    requests: list[RankRequest]
    click: np.ndarray
    purchase: np.ndarray
    p_click: np.ndarray
    p_ctcvr: np.ndarray

    @classmethod
    def build(
        cls, world: TaobaoWorld, day: int, past: PastEvents, profiles: dict, users: np.ndarray
    ) -> EvalSet:
        """Simulate ``day`` for the ``users`` (a boolean mask over the world's users; ``past``
        holds their earlier behaviors) on a copy of ``world`` (the world itself does not move)
        under a uniform choice from each slate."""
        twin = copy.deepcopy(world)
        policy = ModelSlatePolicy(Uniform(), None, past, profiles)
        logs = twin.simulate_day(day, policy, users=users)
        imp, beh = logs.logs.impressions, logs.logs.behaviors
        today = pd.DataFrame({k: beh[k] for k in ("user", "time_stamp", "btag", "cate", "brand")})
        by_user = {int(u): g for u, g in today.groupby("user", sort=False)}
        requests = []
        for user, ts, ad, pid in zip(
            imp["user"], imp["time_stamp"], imp["ad"], imp["pid"], strict=True
        ):
            mine = by_user.get(int(user), today.iloc[:0])
            before = mine[mine["time_stamp"] < ts]
            requests.append(
                served_request(
                    int(user),
                    int(ts),
                    [int(twin.catalog.ad_ids[ad])],
                    PIDS[int(pid)],
                    past,
                    before,
                    profiles,
                )
            )
        return cls(
            requests,
            imp["clk"].astype(np.int64),
            imp["conversion"].astype(np.int64),
            imp["p_click"],
            imp["p_click"] * imp["p_buy_given_click"],
        )

    def quality(self, scorer: ModelScorer, chunk: int = 512) -> dict[str, float]:
        parts = [
            scorer(self.requests[i : i + chunk], 1) for i in range(0, len(self.requests), chunk)
        ]
        pctr = np.concatenate([p["pctr"][:, 0] for p in parts])
        pctcvr = np.concatenate([p["pctcvr"][:, 0] for p in parts])
        out = {
            "ctr_auc": _auc(self.click, pctr),
            "ctcvr_auc": _auc(self.purchase, pctcvr),
            "oracle_ctr_auc": _auc(self.click, self.p_click),
            "oracle_ctcvr_auc": _auc(self.purchase, self.p_ctcvr),
        }
        out["ctr_oracle_gap"] = out["oracle_ctr_auc"] - out["ctr_auc"]
        out["ctcvr_oracle_gap"] = out["oracle_ctcvr_auc"] - out["ctcvr_auc"]
        return out


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")
