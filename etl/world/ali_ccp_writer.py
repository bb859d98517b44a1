"""Write a TaobaoWorld's impressions in the raw Ali-CCP format (Tianchi dataset 408), with truth.

The same generated world as ``write_world`` (etl/world/writer.py), logged the way Ali-CCP
ships its data, so every model, rnn_mtl included, can be compared with the oracle on that format:

- ``sample_skeleton_{train,val,test}.csv``: ``sample_id,click,buy,common_feature_index,
  feature_num,feature_list``, one line per impression, split by impression day (UTC+8; the last
  ``test_days`` days test, the ``valid_days`` before valid, as the ETL's defaults split);
- ``common_features_{train,val,test}.csv``: ``common_feature_index,feature_num,feature_list``,
  one line per (user, impression time): the user context of the impressions at that second;
- ``truth_ali_ccp.csv``: ``file,sample_id,p_click,p_buy_given_click,expected_further_views``
  (etl/ali_ccp_oracle.py joins it to the lake's samples) and ``world.json``.

A feature_list is items ``field\\x02feature_id\\x03value`` joined by ``\\x01``; feature ids are
unique across fields (``FIELD_OFFSET`` + the world's raw id), values 1.0 unless said otherwise.
Skeleton (the ad): 205 ad, 206 category, 207 shop (the ad's customer), 210 intention node (the
ad's campaign), 216 brand (absent when null), 301 position (the pid: 1 or 2), and the crosses
508 = 109_14 x 206 and 702 = 127_14 x 216, present when the ad's category (brand) is in the
user's history, valued log(1 + count). Common features (the user): 101 user, 121..129 the
profile (absent when null), 109_14 and 127_14 the categories and brands of the user's behaviors
in the 14 days strictly before the impression, each distinct id once with its count as the
value, most recent first (so the ETL's first ``max_len`` values are the latest ones). The
world's behaviors carry no shop or intention node: 110_14, 150_14, 509 and 853 are absent.

Lines are built in Python per impression (a 6,000-user world takes seconds, not minutes); files
are written under temporary names and renamed at the end, as write_world does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from etl.world.model import DAY_S, T0, TaobaoWorld, WorldConfig

log = logging.getLogger(__name__)

ITEM, FIELD, VALUE = "\x01", "\x02", "\x03"
HISTORY_DAYS = 14  # the "_14" of 109_14 and 127_14
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test"}  # split -> file name token
SKELETON_HEADER = "sample_id,click,buy,common_feature_index,feature_num,feature_list"
COMMON_HEADER = "common_feature_index,feature_num,feature_list"
TRUTH_FILE = "truth_ali_ccp.csv"
TRUTH_HEADER = "file,sample_id,p_click,p_buy_given_click,expected_further_views"
PROFILE_FIELDS = {  # Ali-CCP field -> user_profile.csv column of the world
    "121": "cms_segid",
    "122": "cms_group_id",
    "124": "final_gender_code",
    "125": "age_level",
    "126": "pvalue_level",
    "127": "shopping_level",
    "128": "occupation",
    "129": "new_user_class_level",
}
FIELDS = ("101", *PROFILE_FIELDS, "109_14", "127_14", "205", "206", "207", "210", "216")
FIELD_OFFSET = {f: (i + 1) * 10**12 for i, f in enumerate((*FIELDS, "301", "508", "702"))}


def skeleton_name(split: str) -> str:
    return f"sample_skeleton_{SPLIT_FILES[split]}.csv"


def common_name(split: str) -> str:
    return f"common_features_{SPLIT_FILES[split]}.csv"


def _item(field: str, raw: int, value: float = 1.0) -> str:
    text = f"{value:.1f}" if float(value).is_integer() else f"{value:.5f}"
    return f"{field}{FIELD}{FIELD_OFFSET[field] + int(raw)}{VALUE}{text}"


def split_of_day(day: int, days: int, valid_days: int, test_days: int) -> str:
    if day >= days - test_days:
        return "test"
    return "valid" if day >= days - test_days - valid_days else "train"


def recent_counts(values: np.ndarray) -> list[tuple[int, int]]:
    """(id, count) of the distinct non-null (>= 0) ids of a chronological window, most recent
    first."""
    out: dict[int, int] = {}
    for v in values[::-1].tolist():
        if v >= 0:
            out[v] = out.get(v, 0) + 1
    return list(out.items())


class UserLookup:
    """Profile row of a raw user id."""

    def __init__(self, world: TaobaoWorld) -> None:
        users = world.users
        self.order = np.argsort(users.ids, kind="stable")
        self.ids = users.ids[self.order]
        self.users = users

    def profile(self, user: int) -> dict[str, int]:
        row = self.order[np.searchsorted(self.ids, user)]
        if not self.users.has_profile[row]:
            return {}
        return {f: int(self.users.profile[c][row]) for f, c in PROFILE_FIELDS.items()}


def chunk_lines(
    world: TaobaoWorld, logs, lookup: UserLookup, splits: tuple[int, int], first_sample: int
) -> Iterator[tuple[str, str, str | None, str]]:
    """(split, skeleton line, common line or None when the context was written, truth line)
    per impression of one chunk, in the logs' (user, time) order."""
    beh, imp, cat = logs.behaviors, logs.impressions, world.catalog
    days, (valid_days, test_days) = world.config.days, splits
    b_user, b_ts = beh["user"], beh["time_stamp"]
    seen: set[tuple[int, int]] = set()
    for k in range(imp["user"].size):
        user, ts, ad = int(imp["user"][k]), int(imp["time_stamp"][k]), int(imp["ad"][k])
        lo = np.searchsorted(b_user, user, "left")
        hi = np.searchsorted(b_user, user, "right")
        start = lo + np.searchsorted(b_ts[lo:hi], ts - HISTORY_DAYS * DAY_S, "left")
        end = lo + np.searchsorted(b_ts[lo:hi], ts, "left")  # strictly before the impression
        cates = recent_counts(beh["cate"][start:end])
        brands = recent_counts(beh["brand"][start:end])
        split = split_of_day((ts - T0) // DAY_S, days, valid_days, test_days)
        index = f"{user:08x}{ts:08x}"
        common = None
        if (user, ts) not in seen:
            seen.add((user, ts))
            items = [_item("101", user)]
            items += [_item(f, v) for f, v in lookup.profile(user).items() if v >= 0]
            items += [_item("109_14", c, n) for c, n in cates]
            items += [_item("127_14", b, n) for b, n in brands]
            common = f"{index},{len(items)},{ITEM.join(items)}"
        cate = int(cat.cate_ids[cat.item_cate[ad]])
        brand = int(cat.item_brand[ad])
        items = [
            _item("205", cat.ad_ids[ad]),
            _item("206", cate),
            _item("207", cat.ad_customer[ad]),
            _item("210", cat.ad_campaign[ad]),
        ]
        if brand >= 0:
            items.append(_item("216", brand))
        items.append(_item("301", int(imp["pid"][k]) + 1))
        for field, key, history in (("508", cate, cates), ("702", brand, brands)):
            count = dict(history).get(key, 0) if key >= 0 else 0
            if count:
                items.append(_item(field, key, math.log1p(count)))
        sample = first_sample + k
        click, buy = int(imp["clk"][k]), int(imp["conversion"][k])
        skeleton = f"{sample},{click},{buy},{index},{len(items)},{ITEM.join(items)}"
        truth = (
            f"{skeleton_name(split)},{sample},{imp['p_click'][k]:.8f},"
            f"{imp['p_buy_given_click'][k]:.8f},{imp['expected_further_views'][k]:.4f}"
        )
        yield split, skeleton, common, truth


def write_ali_ccp_world(
    config: WorldConfig, out_dir: str | Path, valid_days: int = 1, test_days: int = 1
) -> dict:
    """Generate the world and write its impressions as raw Ali-CCP files (module docstring)."""
    if test_days < 1 or valid_days < 0 or valid_days + test_days >= config.days:
        raise ValueError(
            f"ali_ccp format: need 1 <= test_days and valid_days + test_days < days "
            f"({valid_days} + {test_days} vs {config.days})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = TaobaoWorld(config)
    lookup = UserLookup(world)
    names = [n for s in SPLIT_FILES for n in (skeleton_name(s), common_name(s))] + [TRUTH_FILE]
    tmp = {n: out / f".{n}.part" for n in names}
    files = {n: open(tmp[n], "w", encoding="ascii", newline="\n") for n in names}  # noqa: SIM115
    counts = {s: {"samples": 0, "clicks": 0, "buys": 0, "contexts": 0} for s in SPLIT_FILES}
    try:
        for s in SPLIT_FILES:
            files[skeleton_name(s)].write(SKELETON_HEADER + "\n")
            files[common_name(s)].write(COMMON_HEADER + "\n")
        files[TRUTH_FILE].write(TRUTH_HEADER + "\n")
        sample = 1
        for chunk in range(world.n_chunks):
            logs = world.simulate_chunk(chunk)
            for split, skeleton, common, truth in chunk_lines(
                world, logs, lookup, (valid_days, test_days), sample
            ):
                files[skeleton_name(split)].write(skeleton + "\n")
                files[TRUTH_FILE].write(truth + "\n")
                c = counts[split]
                c["samples"] += 1
                c["clicks"] += int(skeleton.split(",", 2)[1])
                c["buys"] += int(skeleton.split(",", 3)[2])
                if common is not None:
                    files[common_name(split)].write(common + "\n")
                    c["contexts"] += 1
            sample += logs.impressions["user"].size
            log.info("chunk %d/%d written", chunk + 1, world.n_chunks)
    except BaseException:
        for n in names:
            files[n].close()
            tmp[n].unlink(missing_ok=True)
        raise
    for n in names:
        files[n].close()
        os.replace(tmp[n], out / n)
    summary = {
        "generator": "etl.world (isrec synthetic Taobao world)",
        "format": "ali-ccp-raw",
        "config": config.to_dict(),
        "splits": {"valid_days": valid_days, "test_days": test_days},
        "counts": counts,
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
