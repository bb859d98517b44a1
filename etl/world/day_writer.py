"""Write one simulated day (``TaobaoWorld.simulate_day``) as a taobao_ad input folder.

The four raw files are in the published Tianchi dataset-56 format, so the real ETL reads the
folder unchanged: raw_sample.csv and behavior_log.csv hold the day's rows, ad_feature.csv the
whole catalog of that day (new ads included) and user_profile.csv every user. Side files:
truth.csv (as ``write_world`` writes it), propensity.csv (per impression: the serving policy's
propensity and the chosen slot), slates.csv when slates were recorded (``LoopConfig
.record_slates``: every candidate with the policy's probability and the world's truth) and
day.json (counts). Files are written under temporary names and renamed at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from etl.world.config import FIRST_DAY, PIDS
from etl.world.model import DayLogs, TaobaoWorld
from etl.world.writer import (
    HEADERS,
    Counts,
    ad_bytes,
    behavior_bytes,
    fixed_field,
    format_rows,
    int_field,
    profile_bytes,
    sample_bytes,
    vocab_field,
)

SIDE_HEADERS = {
    "propensity.csv": "user,time_stamp,adgroup_id,pid,propensity,slot",
    "slates.csv": "user,time_stamp,pid,slot,adgroup_id,chosen,probability,p_click,"
    "p_buy_given_click,expected_further_views",
}


def _key(world: TaobaoWorld, imp: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [
        int_field(imp["user"]),
        int_field(imp["time_stamp"]),
        int_field(world.catalog.ad_ids[imp["ad"]]),
        vocab_field(imp["pid"], PIDS),
    ]


def propensity_bytes(world: TaobaoWorld, imp: dict[str, np.ndarray]) -> bytes:
    if not imp["user"].size:
        return b""
    fields = [fixed_field(imp["propensity"], 12), int_field(imp["slot"])]
    return format_rows([*_key(world, imp), *fields])


def slate_bytes(world: TaobaoWorld, imp: dict[str, np.ndarray]) -> bytes:
    """One row per candidate of every recorded slate (probability empty when not given)."""
    ads = imp["slate_ad"]
    n, k = ads.shape
    prob = imp["slate_probability"].ravel()
    known = np.isfinite(prob)
    prob_field = fixed_field(np.where(known, prob, 0.0), 12)
    prob_field[~known] = 0
    slot = np.tile(np.arange(k), n)
    fields = [
        int_field(np.repeat(imp["user"], k)),
        int_field(np.repeat(imp["time_stamp"], k)),
        vocab_field(np.repeat(imp["pid"], k), PIDS),
        int_field(slot),
        int_field(world.catalog.ad_ids[ads.ravel()]),
        int_field((slot == np.repeat(imp["slot"], k)).astype(np.int64)),
        prob_field,
        fixed_field(imp["slate_p_click"].ravel(), 8),
        fixed_field(imp["slate_p_buy_given_click"].ravel(), 8),
        fixed_field(imp["slate_expected_further_views"].ravel(), 4),
    ]
    return format_rows(fields)


def day_date(day: int) -> str:
    return (date.fromisoformat(FIRST_DAY) + timedelta(days=day)).isoformat()


def write_day(world: TaobaoWorld, day: DayLogs, out_dir: str | Path) -> dict:
    """Write ``day``'s logs to ``out_dir`` (created); returns the day.json summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    imp = day.logs.impressions
    raw, truth = sample_bytes(world, imp)
    body = {
        "raw_sample.csv": raw,
        "behavior_log.csv": behavior_bytes(day.logs.behaviors),
        "ad_feature.csv": ad_bytes(world),
        "user_profile.csv": profile_bytes(world),
        "truth.csv": truth,
        "propensity.csv": propensity_bytes(world, imp),
    }
    if "slate_ad" in imp:
        body["slates.csv"] = slate_bytes(world, imp)
    headers = HEADERS | SIDE_HEADERS
    tmp = {name: out / f".{name}.part" for name in body}
    try:
        for name, text in body.items():
            tmp[name].write_bytes((headers[name] + "\n").encode("ascii") + text)
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    for name, path in tmp.items():
        os.replace(path, out / name)
    summary = day_summary(world, day)
    (out / "day.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def day_summary(world: TaobaoWorld, day: DayLogs) -> dict:
    counts = Counts()
    counts.add(day.logs)
    return {
        "day": day.day,
        "date": day_date(day.day),
        "start_ts": day.start,
        "counts": counts.c | {"further_views": counts.further_views},
        "ads": day.n_ads,
        "new_ads": day.new_ads,
        "users": world.config.users,
        "config": world.config.to_dict(),
        "loop": asdict(world.loop),
    }
