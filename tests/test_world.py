"""The synthetic Taobao world: exact raw formats, determinism, and the planted signals."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from etl.world import (
    HEADERS,
    PIDS,
    T0,
    Decision,
    LoggingPolicy,
    LoopConfig,
    SlateRequest,
    TaobaoWorld,
    WorldConfig,
    write_day,
    write_world,
)

ROOT = Path(__file__).resolve().parent.parent
UTC8 = timezone(timedelta(hours=8))
RAW_FILES = ("raw_sample.csv", "behavior_log.csv", "ad_feature.csv", "user_profile.csv")
TINY = WorldConfig(users=120, days=3, history_days=1, seed=11, chunk_users=50)
MODERATE = WorldConfig(users=1500, days=4, history_days=2, seed=5)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def _ints(rows: list[list[str]], col: int) -> np.ndarray:
    return np.array([int(r[col]) for r in rows], dtype=np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_world(TINY, out)
    return out


@pytest.fixture(scope="module")
def moderate(tmp_path_factory) -> dict:
    """A ~25k-impression world, parsed once into numpy arrays."""
    out = tmp_path_factory.mktemp("moderate")
    summary = write_world(MODERATE, out)
    raw, truth = _rows(out / "raw_sample.csv"), _rows(out / "truth.csv")
    beh, ads = _rows(out / "behavior_log.csv"), _rows(out / "ad_feature.csv")
    ad_row = {int(r[0]): r for r in ads}
    return {
        "dir": out,
        "summary": summary,
        "raw": raw,
        "truth": truth,
        "user": _ints(raw, 0),
        "ts": _ints(raw, 1),
        "ad_cate": np.array([int(ad_row[int(r[2])][1]) for r in raw]),
        "ad_brand": np.array([ad_row[int(r[2])][4] for r in raw]),
        "clk": _ints(raw, 5),
        "p_click": np.array([float(r[4]) for r in truth]),
        "efv": np.array([float(r[6]) for r in truth]),
        "conversion": _ints(truth, 8),
        "b_user": _ints(beh, 0),
        "b_ts": _ints(beh, 1),
        "b_tag": np.array([r[2] for r in beh]),
        "b_cate": _ints(beh, 3),
        "b_brand": np.array([r[4] for r in beh]),
    }


def test_exact_headers(tiny: Path) -> None:
    expected = {
        "raw_sample.csv": b"user,time_stamp,adgroup_id,pid,nonclk,clk\n",
        "behavior_log.csv": b"user,time_stamp,btag,cate,brand\n",
        "ad_feature.csv": b"adgroup_id,cate_id,campaign_id,customer,brand,price\n",
        "user_profile.csv": b"userid,cms_segid,cms_group_id,final_gender_code,age_level,"
        b"pvalue_level,shopping_level,occupation,new_user_class_level \n",
        "truth.csv": b"user,time_stamp,adgroup_id,pid,p_click,p_buy_given_click,"
        b"expected_further_views,propensity,conversion,further_views\n",
    }
    for name, header in expected.items():
        with open(tiny / name, "rb") as f:
            assert f.readline() == header, name
        assert (HEADERS[name] + "\n").encode() == header


def test_field_values(tiny: Path) -> None:
    beh, raw = _rows(tiny / "behavior_log.csv"), _rows(tiny / "raw_sample.csv")
    assert {r[2] for r in beh} == {"pv", "cart", "fav", "buy"}
    assert {r[3] for r in raw} == set(PIDS) == {"430548_1007", "430539_1007"}
    assert all(int(r[4]) + int(r[5]) == 1 for r in raw)
    assert all(len(r) == 5 for r in beh) and all(len(r) == 6 for r in raw)
    prices = [r[5] for r in _rows(tiny / "ad_feature.csv")]
    assert all("." in p and float(p) > 0 for p in prices)


def test_null_rates(moderate: dict) -> None:
    out = moderate["dir"]
    ads = _rows(out / "ad_feature.csv")
    assert 0.25 < np.mean([r[4] == "NULL" for r in ads]) < 0.33
    assert all(r[4] == "NULL" or r[4].isdigit() for r in ads)
    profiles = _rows(out / "user_profile.csv")
    assert 0.48 < np.mean([r[5] == "" for r in profiles]) < 0.6  # pvalue_level
    assert 0.26 < np.mean([r[8] == "" for r in profiles]) < 0.38  # new_user_class_level
    assert all(all(r[i] != "" for i in (1, 2, 3, 4, 6, 7)) for r in profiles)
    with_profile = {int(r[0]) for r in profiles}
    users = set(moderate["user"].tolist()) | set(moderate["b_user"].tolist())
    assert 0.03 < len(users - with_profile) / len(users) < 0.12  # some users have no profile
    assert 0.0 < np.mean(moderate["b_brand"] == "") < 0.3


def test_deterministic_for_seed(tiny: Path, tmp_path: Path) -> None:
    write_world(TINY, tmp_path / "again")
    for name in (*RAW_FILES, "truth.csv", "world.json"):
        assert (tiny / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = WorldConfig(**{**TINY.__dict__, "seed": TINY.seed + 1})
    write_world(other, tmp_path / "other")
    raw = "raw_sample.csv"
    assert (tiny / raw).read_bytes() != (tmp_path / "other" / raw).read_bytes()


def test_truth_joins_raw_sample_one_to_one(moderate: dict) -> None:
    raw, truth = moderate["raw"], moderate["truth"]
    assert len(raw) == len(truth) > 10_000
    keys = [tuple(r[:4]) for r in raw]
    assert len(set(keys)) == len(keys)
    assert keys == [tuple(r[:4]) for r in truth]
    counts = moderate["summary"]["counts"]
    assert counts["impressions"] == len(raw) and counts["clicks"] == moderate["clk"].sum()
    p = moderate["p_click"]
    assert ((p > 0) & (p < 1)).all()


def test_timestamps_in_utc8_days(tiny: Path) -> None:
    cfg = TINY
    imp_ts = _ints(_rows(tiny / "raw_sample.csv"), 1)
    beh_ts = _ints(_rows(tiny / "behavior_log.csv"), 1)
    assert imp_ts.min() >= T0 and imp_ts.max() < T0 + cfg.days * 86_400
    assert beh_ts.min() >= T0 - cfg.history_days * 86_400
    assert beh_ts.max() < T0 + cfg.days * 86_400
    days = {datetime.fromtimestamp(int(t), UTC8).date().isoformat() for t in imp_ts}
    assert days == {"2017-05-06", "2017-05-07", "2017-05-08"}
    first = datetime.fromtimestamp(int(beh_ts.min()), UTC8).date().isoformat()
    assert first == "2017-05-05"
    meta = json.loads((tiny / "world.json").read_text())
    assert meta["time"]["impression_start_ts"] == T0 == 1_494_000_000


def test_rates_and_clicks_follow_p_click(moderate: dict) -> None:
    clk, p = moderate["clk"], moderate["p_click"]
    assert 0.03 < clk.mean() < 0.08
    assert abs(clk.mean() - p.mean()) < 0.01
    assert roc_auc_score(clk, p) > 0.7
    conv = moderate["conversion"]
    assert conv[clk == 0].sum() == 0 and conv.sum() >= 20


def _sessions(moderate: dict) -> np.ndarray:
    user, ts = moderate["b_user"], moderate["b_ts"]
    assert (np.diff(user) >= 0).all()
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > 1800)]
    return np.cumsum(new)


def test_sessions_recoverable_with_30_minute_gap(moderate: dict) -> None:
    n_found = _sessions(moderate)[-1]
    c = moderate["summary"]["counts"]
    # a conversion logged hours after its click may stand alone: at most one extra session each
    assert c["sessions"] <= n_found <= c["sessions"] + c["conversions"]


def _last_pv_index(moderate: dict) -> tuple[np.ndarray, np.ndarray]:
    """Index (into pv rows) of the last pv strictly before each impression, and the pv mask."""
    pv = moderate["b_tag"] == "pv"
    keys = (moderate["b_user"][pv] << 32) | moderate["b_ts"][pv]
    imp_keys = (moderate["user"] << 32) | moderate["ts"]
    return np.searchsorted(keys, imp_keys, side="left") - 1, pv


def test_high_curiosity_clicks_lead_to_more_views(moderate: dict) -> None:
    sid = _sessions(moderate)
    last, pv = _last_pv_index(moderate)
    pv_sid, pv_ts = sid[pv], moderate["b_ts"][pv]
    clicked = np.flatnonzero(moderate["clk"] == 1)
    later = []
    for i in clicked:
        s = pv_sid[last[i]]
        j = np.searchsorted(pv_sid, s, side="right")
        later.append(int((pv_ts[last[i] + 1 : j] >= moderate["ts"][i]).sum()))
    later = np.array(later)
    efv = moderate["efv"][clicked]
    lo, hi = np.quantile(efv, [0.25, 0.75])
    assert later.min() >= 1  # the click itself is a pv of the ad in the same session
    assert later[efv >= hi].mean() > later[efv <= lo].mean() + 2.0


def test_recent_views_matter_more_than_older_ones(moderate: dict) -> None:
    """Order carries signal: an ad in the category viewed last is clicked more often than one
    whose category was viewed a few steps earlier (and not among the last three)."""
    last, pv = _last_pv_index(moderate)
    users, cates = moderate["b_user"][pv], moderate["b_cate"][pv]
    ok = last >= 6
    idx = np.flatnonzero(ok)
    lag = {k: cates[last[idx] - k] for k in range(7)}
    same_user = users[last[idx] - 6] == moderate["user"][idx]
    ad_cate, clk = moderate["ad_cate"][idx], moderate["clk"][idx]
    recent = same_user & (lag[0] == ad_cate)
    older = same_user & (lag[0] != ad_cate) & (lag[1] != ad_cate) & (lag[2] != ad_cate)
    older &= (lag[4] == ad_cate) | (lag[5] == ad_cate) | (lag[6] == ad_cate)
    assert recent.sum() > 300 and older.sum() > 100
    assert clk[recent].mean() > 1.5 * clk[older].mean()


def test_conversions_are_buys_within_24h(moderate: dict) -> None:
    m = moderate
    buy = m["b_tag"] == "buy"
    b_user, b_ts, b_cate, b_brand = (
        m["b_user"][buy],
        m["b_ts"][buy],
        m["b_cate"][buy],
        m["b_brand"][buy],
    )
    converted = np.flatnonzero(m["conversion"] == 1)
    assert converted.size >= 20
    for i in converted:
        brand = m["ad_brand"][i]
        hit = (b_user == m["user"][i]) & (b_cate == m["ad_cate"][i])
        hit &= (b_ts >= m["ts"][i]) & (b_ts <= m["ts"][i] + 86_400)
        hit &= b_brand == ("" if brand == "NULL" else brand)
        assert hit.any(), i


def test_closed_loop_respond() -> None:
    world = TaobaoWorld(WorldConfig(users=200, seed=3))
    user = int(world.users.ids[7])
    ads, prop = world.candidates(user, 20, rng=np.random.default_rng(0))
    assert ads.shape == prop.shape == (20,) and ((prop > 0) & (prop <= 1)).all()
    r1 = world.respond(user, T0 + 3600, ads, rng=np.random.default_rng(1))
    world.reset_state()
    r2 = world.respond(user, T0 + 3600, ads, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(r1.click, r2.click)
    np.testing.assert_allclose(r1.p_click, r2.p_click)
    assert ((r1.p_click > 0) & (r1.p_click < 1)).all()
    assert (r1.buy <= r1.click).all() and (r1.further_views[~r1.click] == 0).all()
    # many rounds: clicks match the stated probabilities; clicks log pv events
    rng = np.random.default_rng(2)
    p, c, n_pv = [], [], 0
    for k in range(300):
        res = world.respond(user, T0 + 60 * k, ads, rng=rng)
        p.append(res.p_click)
        c.append(res.click)
        n_pv += int((res.events["btag"] == 0).sum())
    p, c = np.concatenate(p), np.concatenate(c)
    assert abs(c.mean() - p.mean()) < 4 * np.sqrt(p.mean() / p.size) + 1e-3
    assert n_pv >= c.sum()


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "w"
    args = ["--out", str(out), "--users", "40", "--days", "2", "--seed", "1"]
    ok = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "generate.py"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((out / "world.json").read_text())
    lines = (out / "raw_sample.csv").read_text().count("\n") - 1
    assert meta["counts"]["impressions"] == lines > 0
    assert set(RAW_FILES) <= {p.name for p in out.iterdir()}


def test_cli_bad_input(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "jobs" / "generate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad_args = [
        ["--users", "-5", "--out", str(tmp_path / "w")],
        ["--users", "many", "--out", str(tmp_path / "w")],
        ["--days", "0", "--out", str(tmp_path / "w")],
        ["--out", str(blocker / "sub")],  # not a writable directory
    ]
    for bad in bad_args:
        with pytest.raises(SystemExit) as exc:
            cli.main(bad)
        assert exc.value.code == 2, bad
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error" in err, err
    assert not (tmp_path / "w").exists()


def test_world_does_not_import_spark_or_torch() -> None:
    code = "import sys, etl.world; print('torch' in sys.modules or 'pyspark' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "False", res.stderr


# --- the world in the loop: slate policies, one day at a time, new ads ----------------------

# sha256 of TINY's five CSVs as the generator wrote them before the policy callback existed
# (commit 842d3ba): the built-in logging policy, now a callback, must keep writing them.
TINY_DIGEST = "9cc15522a2482a57fa9f5f5ab0fa53a2549575ec9e4f87ed80a9d0bc9c28499e"
LOOP = WorldConfig(users=150, seed=7, chunk_users=100, ads=300, items=900, cates=30)


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for name in (*RAW_FILES[:1], "behavior_log.csv", "ad_feature.csv", "user_profile.csv"):
        h.update((out / name).read_bytes())
    h.update((out / "truth.csv").read_bytes())
    return h.hexdigest()


def _same_logs(a, b) -> None:
    for part in ("behaviors", "impressions"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.keys() == y.keys(), part
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{part}.{key}")


class SlotZero:
    """Shows column 0 after building the whole slate, its propensities and truth."""

    def __call__(self, request: SlateRequest) -> Decision:
        assert request.ad_ids.shape == (request.size, request.k)
        assert request.truth.p_click.shape == request.ad_ids.shape
        prop = request.logging_propensity
        np.testing.assert_allclose(prop[:, 0], request.first_propensity)
        return Decision(np.zeros(request.size, dtype=np.int64), prop[:, 0])


class UniformSlot:
    def __call__(self, request: SlateRequest) -> Decision:
        k = request.k
        probs = np.full((request.size, k), 1.0 / k)
        return Decision(request.rng.integers(0, k, request.size), probs[:, 0], probs)


class BestTruth:
    """Greedy on the world's true pCTCVR (the oracle's rule)."""

    def __call__(self, request: SlateRequest) -> Decision:
        slot = np.argmax(request.truth.p_ctcvr, axis=1)
        return Decision(slot, np.ones(request.size))


def test_logging_callback_writes_todays_world(tiny: Path) -> None:
    assert _digest(tiny) == TINY_DIGEST
    world = TaobaoWorld(TINY)
    for chunk in range(world.n_chunks):
        default = world.simulate_chunk(chunk)
        _same_logs(default, world.simulate_chunk(chunk, policy=SlotZero()))
        _same_logs(default, world.simulate_chunk(chunk, policy=LoggingPolicy()))


def test_fixed_policy_reproducible_for_a_seed() -> None:
    runs = []
    for seed in (LOOP.seed, LOOP.seed, LOOP.seed + 1):
        world = TaobaoWorld(WorldConfig(**{**LOOP.__dict__, "seed": seed}))
        runs.append([world.simulate_day(d, UniformSlot()).logs for d in range(2)])
    for a, b in zip(runs[0], runs[1], strict=True):
        _same_logs(a, b)
    assert not np.array_equal(runs[0][0].impressions["slot"], runs[2][0].impressions["slot"])
    slots = np.concatenate([r.impressions["slot"] for r in runs[0]])
    assert slots.min() == 0 and slots.max() == LoopConfig().slate - 1


def test_policy_changes_what_the_world_answers() -> None:
    """The same day under the logging policy and under the truth-greedy oracle: same session
    plan, but the oracle's picks buy more, and their truth is the slate's best."""
    logging = TaobaoWorld(LOOP).simulate_day(0).logs.impressions
    world = TaobaoWorld(LOOP, LoopConfig(record_slates=True))
    best = world.simulate_day(0, BestTruth()).logs.impressions
    rows = np.arange(best["user"].size)
    np.testing.assert_allclose(best["p_click"], best["slate_p_click"][rows, best["slot"]])
    ctcvr = best["slate_p_click"] * best["slate_p_buy_given_click"]
    np.testing.assert_allclose(best["p_click"] * best["p_buy_given_click"], ctcvr.max(axis=1))
    assert (best["p_click"] * best["p_buy_given_click"]).mean() > 2 * (
        logging["p_click"] * logging["p_buy_given_click"]
    ).mean()
    assert (best["propensity"] == 1).all() and (logging["propensity"] < 1).all()


def test_new_ads_enter_at_the_configured_share(tmp_path: Path) -> None:
    world = TaobaoWorld(LOOP, LoopConfig(new_ad_share=0.1, record_slates=True))
    n_ads = [world.catalog.n_ads]
    for day in range(4):
        logs = world.simulate_day(day, UniformSlot())
        n_ads.append(logs.n_ads)
        assert logs.new_ads == (0 if day == 0 else round(0.1 * n_ads[-2]))
    assert n_ads == [300, 300, 330, 363, 399]
    ids = world.catalog.ad_ids
    assert (np.diff(ids) > 0).all()  # new adgroup ids are new and keep the table sorted
    assert (world.catalog.ad_birth_day[300:330] == 1).all()
    new = world.catalog.new_ads(3, LoopConfig().new_ad_days)
    assert new.size == 99  # days 1-3
    slates = logs.logs.impressions["slate_ad"]
    assert np.isin(slates[:, -3:], new).all()  # slate_new_share: the last 3 of 30 slots
    assert 0.1 < np.isin(slates[:, :-3], new).mean() < 0.4  # the rest: drawn by weight
    write_day(world, logs, tmp_path / "day3")
    ads = _rows(tmp_path / "day3" / "ad_feature.csv")
    assert len(ads) == 399 and {int(r[0]) for r in ads} == set(ids.tolist())
    frozen = TaobaoWorld(LOOP, LoopConfig(new_ad_share=0.0))
    assert frozen.simulate_day(2).n_ads == 300
    with pytest.raises(ValueError, match="before"):
        world.simulate_day(1)


def test_request_behaviors_are_the_users_history_so_far() -> None:
    seen = []

    class Recorder(UniformSlot):
        def __call__(self, request: SlateRequest) -> Decision:
            seen.append((request.user_ids, request.time, request.behaviors()))
            return super().__call__(request)

    beh = TaobaoWorld(LOOP).simulate_day(0, Recorder()).logs.behaviors
    assert len(seen) > 20
    checked = 0
    for users, times, got in seen[::5]:
        for i in range(users.size):
            mine = got["request"] == i
            want = (beh["user"] == users[i]) & (beh["time_stamp"] < times[i])
            assert (got["user"][mine] == users[i]).all()
            np.testing.assert_array_equal(got["time_stamp"][mine], beh["time_stamp"][want])
            np.testing.assert_array_equal(got["btag"][mine], beh["btag"][want])
            np.testing.assert_array_equal(got["cate"][mine], beh["cate"][want])
            checked += int(want.sum())
    assert checked > 100


def test_write_day_reads_as_taobao_ad(tmp_path: Path) -> None:
    world = TaobaoWorld(LOOP, LoopConfig(record_slates=True))
    logs = world.simulate_day(0, UniformSlot())
    summary = write_day(world, logs, tmp_path)
    raw, prop = _rows(tmp_path / "raw_sample.csv"), _rows(tmp_path / "propensity.csv")
    slates = _rows(tmp_path / "slates.csv")
    assert summary["counts"]["impressions"] == len(raw) == len(prop) > 100
    assert [r[:4] for r in raw] == [r[:4] for r in prop]
    assert {r[3] for r in raw} <= set(PIDS)
    day = {datetime.fromtimestamp(int(r[1]), UTC8).date().isoformat() for r in raw}
    assert day == {"2017-05-06"} and summary["date"] == "2017-05-06"
    k = LoopConfig().slate
    assert len(slates) == k * len(raw)
    chosen = [r for r in slates if r[5] == "1"]
    assert [(r[0], r[1], r[2], r[4]) for r in chosen] == [(r[0], r[1], r[3], r[2]) for r in raw]
    assert all(abs(float(r[6]) - 1 / k) < 1e-9 for r in slates[:50])
    beh_ts = _ints(_rows(tmp_path / "behavior_log.csv"), 1)
    assert beh_ts.min() >= T0 and beh_ts.max() < T0 + 86_400


def test_bad_decisions_fail_clearly() -> None:
    world = TaobaoWorld(LOOP)

    def out_of_range(request: SlateRequest) -> Decision:
        return Decision(np.full(request.size, request.k), np.ones(request.size))

    with pytest.raises(ValueError, match="out of range"):
        world.simulate_day(0, out_of_range)
    with pytest.raises(ValueError, match="slate"):
        TaobaoWorld(LOOP, LoopConfig(slate=0))


def test_a_user_mask_simulates_those_users_only() -> None:
    """The closed loop's held-out users: a day of the masked users has no one else, the
    complement none of them, and a mask gives the same day again."""
    world = TaobaoWorld(LOOP)
    ids = world.users.ids
    held = np.zeros(ids.size, dtype=bool)
    held[-ids.size // 4 :] = True
    days = [world.simulate_day(0, UniformSlot(), users=mask).logs for mask in (held, ~held, held)]
    for logs, mask in zip(days, (held, ~held), strict=False):
        for table in (logs.impressions, logs.behaviors):
            assert table["user"].size and np.isin(table["user"], ids[mask]).all()
    _same_logs(days[0], days[2])
