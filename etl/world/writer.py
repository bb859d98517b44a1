"""Stream a TaobaoWorld to disk in the exact raw formats of Tianchi dataset 56.

Files are written chunk by chunk (bounded memory) under temporary names and renamed at the end,
so a crash never leaves a complete-looking but truncated dataset. CSV text is built by numpy
as fixed-width byte matrices that are then compacted: per-row Python formatting (or pandas
``to_csv``) is several times slower on large worlds.

Null conventions follow the public files: ``ad_feature.csv`` writes a null brand as ``NULL``;
``user_profile.csv`` and ``behavior_log.csv`` leave null fields empty.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from etl.formats import TAOBAO_PROFILE_COLUMNS
from etl.world.model import (
    BTAGS,
    DAY_S,
    FIRST_DAY,
    PIDS,
    T0,
    ChunkLogs,
    TaobaoWorld,
    WorldConfig,
)

log = logging.getLogger(__name__)

HEADERS = {
    "raw_sample.csv": "user,time_stamp,adgroup_id,pid,nonclk,clk",
    "behavior_log.csv": "user,time_stamp,btag,cate,brand",
    "ad_feature.csv": "adgroup_id,cate_id,campaign_id,customer,brand,price",
    # the trailing space of the last name is in the public file
    "user_profile.csv": "userid,cms_segid,cms_group_id,final_gender_code,age_level,"
    "pvalue_level,shopping_level,occupation,new_user_class_level ",
    "truth.csv": "user,time_stamp,adgroup_id,pid,p_click,p_buy_given_click,"
    "expected_further_views,propensity,conversion,further_views",
}
PROFILE_COLUMNS = TAOBAO_PROFILE_COLUMNS
AD_BRAND_NULL = "NULL"
WRITE_ROWS = 500_000  # rows formatted at once (bounds the formatting buffers)

_POW10 = 10 ** np.arange(19, dtype=np.int64)

# CSV text is built as one fixed-width uint8 matrix per block of rows (a column slot per field,
# 0 = no byte) that is then compacted row-major: no per-row Python work at all.


def n_digits(values: np.ndarray) -> np.ndarray:
    return np.searchsorted(_POW10[1:], values, side="right") + 1


def int_field(
    values: np.ndarray, null: np.ndarray | None = None, min_digits: int | np.ndarray = 1
) -> np.ndarray:
    """Decimal digits of non-negative ints, zero-padded to ``min_digits``; null rows empty."""
    v = np.asarray(values, dtype=np.int64)
    width = int(max(np.max(min_digits), n_digits(v).max() if v.size else 1))
    out = np.zeros((v.size, width), dtype=np.uint8)
    for k in range(width):
        power = width - 1 - k
        digit = (v // _POW10[power]) % 10 + 48
        out[:, k] = np.where((v >= _POW10[power]) | (power < min_digits), digit, 0)
    if null is not None:
        out[null] = 0
    return out


def vocab_field(codes: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
    table = np.zeros((len(vocab), max(len(s) for s in vocab)), dtype=np.uint8)
    for i, s in enumerate(vocab):
        table[i, : len(s)] = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
    return table[codes]


def literal(text: bytes, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (n, len(text)))


def fixed_field(x: np.ndarray, decimals: int) -> np.ndarray:
    """Non-negative floats with a fixed number of decimals, e.g. 0.051234."""
    scaled = np.round(np.asarray(x, dtype=np.float64) * 10**decimals).astype(np.int64)
    whole, frac = np.divmod(scaled, 10**decimals)
    dot = literal(b".", whole.size)
    return np.hstack([int_field(whole), dot, int_field(frac, min_digits=decimals)])


def price_field(price: np.ndarray) -> np.ndarray:
    """Prices as the public file prints them: 170.0, 3.9, 32.99."""
    cents = np.round(np.asarray(price) * 100).astype(np.int64)
    whole, frac = np.divmod(cents, 100)
    one = frac % 10 == 0
    frac_field = int_field(np.where(one, frac // 10, frac), min_digits=np.where(one, 1, 2))
    return np.hstack([int_field(whole), literal(b".", whole.size), frac_field])


def format_rows(fields: Sequence[np.ndarray]) -> bytes:
    """CSV lines (comma-separated fields, newline-terminated) as one bytes object."""
    n = fields[0].shape[0]
    parts: list[np.ndarray] = []
    for i, f in enumerate(fields):
        parts += [f, literal(b"," if i < len(fields) - 1 else b"\n", n)]
    table = np.hstack(parts)
    return table[table != 0].tobytes()


def _blocks(n: int) -> range:
    return range(0, n, WRITE_ROWS)


def behavior_bytes(beh: dict[str, np.ndarray]) -> bytes:
    out = []
    for lo in _blocks(beh["user"].size):
        b = {k: v[lo : lo + WRITE_ROWS] for k, v in beh.items()}
        out.append(
            format_rows(
                [
                    int_field(b["user"]),
                    int_field(b["time_stamp"]),
                    vocab_field(b["btag"], BTAGS),
                    int_field(b["cate"]),
                    int_field(np.maximum(b["brand"], 0), null=b["brand"] < 0),
                ]
            )
        )
    return b"".join(out)


def sample_bytes(world: TaobaoWorld, imp: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """raw_sample.csv and truth.csv rows (same order, same keys)."""
    raw, truth = [], []
    for lo in _blocks(imp["user"].size):
        d = {k: v[lo : lo + WRITE_ROWS] for k, v in imp.items()}
        key = [
            int_field(d["user"]),
            int_field(d["time_stamp"]),
            int_field(world.catalog.ad_ids[d["ad"]]),
            vocab_field(d["pid"], PIDS),
        ]
        raw.append(format_rows([*key, int_field(1 - d["clk"]), int_field(d["clk"])]))
        truth.append(
            format_rows(
                [
                    *key,
                    fixed_field(d["p_click"], 8),
                    fixed_field(d["p_buy_given_click"], 8),
                    fixed_field(d["expected_further_views"], 4),
                    fixed_field(d["propensity"], 12),
                    int_field(d["conversion"]),
                    int_field(d["further_views"]),
                ]
            )
        )
    return b"".join(raw), b"".join(truth)


def ad_bytes(world: TaobaoWorld) -> bytes:
    cat, n = world.catalog, world.catalog.n_ads
    brand = cat.item_brand[:n]
    null = brand < 0
    brand_field = int_field(np.maximum(brand, 0), null=null)
    token = np.frombuffer(AD_BRAND_NULL.encode(), dtype=np.uint8)
    if brand_field.shape[1] < token.size:
        brand_field = np.pad(brand_field, ((0, 0), (0, token.size - brand_field.shape[1])))
    brand_field[null, : token.size] = token
    return format_rows(
        [
            int_field(cat.ad_ids),
            int_field(cat.cate_ids[cat.item_cate[:n]]),
            int_field(cat.ad_campaign),
            int_field(cat.ad_customer),
            brand_field,
            price_field(cat.price[:n]),
        ]
    )


def profile_bytes(world: TaobaoWorld) -> bytes:
    users = world.users
    keep = users.has_profile
    cols = [int_field(users.ids[keep])]
    for name in PROFILE_COLUMNS:
        v = users.profile[name][keep]
        cols.append(int_field(np.maximum(v, 0), null=v < 0))
    return format_rows(cols) if keep.any() else b""


class Counts:
    """Running totals of logged rows (world.json's and day.json's counts)."""

    def __init__(self) -> None:
        self.c = {"behaviors": 0, "impressions": 0, "clicks": 0, "conversions": 0, "sessions": 0}
        self.c |= {f"btag_{b}": 0 for b in BTAGS} | {f"pid_{p}": 0 for p in PIDS}
        self.c["users_with_impressions"] = 0
        self.sums = {"p_click": 0.0, "expected_further_views_clicked": 0.0}
        self.further_views = 0

    def add(self, logs: ChunkLogs) -> None:
        beh, imp, c = logs.behaviors, logs.impressions, self.c
        c["behaviors"] += beh["user"].size
        c["impressions"] += imp["user"].size
        c["clicks"] += int(imp["clk"].sum())
        c["conversions"] += int(imp["conversion"].sum())
        c["sessions"] += logs.n_sessions
        c["users_with_impressions"] += np.unique(imp["user"]).size
        for i, b in enumerate(BTAGS):
            c[f"btag_{b}"] += int((beh["btag"] == i).sum())
        for i, p in enumerate(PIDS):
            c[f"pid_{p}"] += int((imp["pid"] == i).sum())
        self.further_views += int(imp["further_views"].sum())
        self.sums["p_click"] += float(imp["p_click"].sum())
        clicked = imp["clk"] == 1
        self.sums["expected_further_views_clicked"] += float(
            imp["expected_further_views"][clicked].sum()
        )


def _summary(world: TaobaoWorld, counts: Counts) -> dict:
    c, cfg = counts.c, world.config
    users = world.users
    rates = {
        "ctr": c["clicks"] / max(c["impressions"], 1),
        "mean_p_click": counts.sums["p_click"] / max(c["impressions"], 1),
        "conversions_per_click": c["conversions"] / max(c["clicks"], 1),
        "impressions_per_user": c["impressions"] / cfg.users,
        "behaviors_per_user": c["behaviors"] / cfg.users,
        "mean_expected_further_views_per_click": counts.sums["expected_further_views_clicked"]
        / max(c["clicks"], 1),
        "ad_brand_null": float((world.catalog.item_brand[: world.catalog.n_ads] < 0).mean()),
    }
    return {
        "generator": "etl.world (isrec synthetic Taobao world)",
        "format": "tianchi-56",
        "config": cfg.to_dict(),
        "time": {
            "timezone": "UTC+8",
            "first_impression_day": FIRST_DAY,
            "impression_days": cfg.days,
            "history_days": cfg.history_days,
            "behavior_start_ts": world.behavior_start,
            "impression_start_ts": T0,
            "impression_end_ts": T0 + cfg.days * DAY_S,
        },
        "counts": c
        | {
            "users": cfg.users,
            "user_profiles": int(users.has_profile.sum()),
            "ads": world.catalog.n_ads,
            "cates": int(world.catalog.cate_ids.size),
        },
        "rates": rates,
        "nulls": {"ad_feature.brand": AD_BRAND_NULL, "other files": "empty field"},
        "truth_columns": {
            "p_click": "true P(click | impression)",
            "p_buy_given_click": "true P(conversion | click)",
            "expected_further_views": "E[extra pv views in the session | click]",
            "propensity": "logging policy's probability of showing this ad on this page",
            "conversion": "1 if clicked and the user bought (logged as a buy of the ad's "
            "cate/brand within 24 h; the ETL's rule may also attribute organic buys)",
            "further_views": "sampled extra views after a click (0 without a click; the session "
            "time cap can cut a few)",
        },
    }


def write_world(
    config: WorldConfig,
    out_dir: str | Path,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Generate the world and write the four raw CSVs, truth.csv and world.json to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    world = TaobaoWorld(config)
    log.info(
        "world built: %d users, %d ads, %d items, %d categories in %.1fs",
        config.users,
        world.catalog.n_ads,
        world.catalog.item_cate.size,
        world.catalog.cate_ids.size,
        time.perf_counter() - t_start,
    )
    names = list(HEADERS)
    tmp = {n: out / f".{n}.part" for n in names}
    files = {n: open(tmp[n], "wb", buffering=1 << 20) for n in names}  # noqa: SIM115
    try:
        for n in names:
            files[n].write((HEADERS[n] + "\n").encode("ascii"))
        files["ad_feature.csv"].write(ad_bytes(world))
        files["user_profile.csv"].write(profile_bytes(world))
        counts = Counts()
        for chunk in range(world.n_chunks):
            logs = world.simulate_chunk(chunk)
            counts.add(logs)
            files["behavior_log.csv"].write(behavior_bytes(logs.behaviors))
            raw, truth = sample_bytes(world, logs.impressions)
            files["raw_sample.csv"].write(raw)
            files["truth.csv"].write(truth)
            _log_progress(chunk, world.n_chunks, counts.c, time.perf_counter() - t_start)
            if progress is not None:
                progress(chunk + 1, world.n_chunks, dict(counts.c))
    except BaseException:
        for n in names:
            files[n].close()
            tmp[n].unlink(missing_ok=True)
        raise
    for f in files.values():
        f.close()
    for n in names:
        os.replace(tmp[n], out / n)
    summary = _summary(world, counts)
    (out / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s in %.1fs: %s", out, time.perf_counter() - t_start, _short(summary))
    return summary


def _log_progress(chunk: int, n_chunks: int, c: dict, elapsed: float) -> None:
    rows = c["behaviors"] + c["impressions"]
    log.info(
        "chunk %d/%d: %d behaviors, %d impressions, %d clicks (%.0f rows/s)",
        chunk + 1,
        n_chunks,
        c["behaviors"],
        c["impressions"],
        c["clicks"],
        rows / max(elapsed, 1e-9),
    )


def _short(summary: dict) -> str:
    c, r = summary["counts"], summary["rates"]
    return (
        f"{c['behaviors']} behaviors, {c['impressions']} impressions, CTR {r['ctr']:.4f}, "
        f"{c['conversions']} conversions ({r['conversions_per_click']:.4f} per click)"
    )
