"""The world written as raw Ali-CCP (etl/world/ali_ccp_writer.py): histories strictly before the
impression and within 14 days, files the ali_ccp source reads without quarantine, and an
truth that joins every test sample (etl/ali_ccp_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from etl.sources.ali_ccp import HISTORY_FIELDS as HISTORIES
from etl.world.ali_ccp_writer import (
    DAY_S,
    FIELD,
    FIELD_OFFSET,
    HISTORY_DAYS,
    ITEM,
    VALUE,
    UserLookup,
    chunk_lines,
    write_ali_ccp_world,
)
from etl.world.model import TaobaoWorld, WorldConfig

# behaviors from 16 days before the last impression day: the 14-day window cuts some off
CONFIG = WorldConfig(users=150, days=4, seed=5, chunk_users=150, history_days=12)


def items(line: str) -> list[tuple[str, int, float]]:
    out = []
    for item in line.rsplit(",", 1)[1].split(ITEM):
        field, rest = item.split(FIELD)
        fid, value = rest.split(VALUE)
        out.append((field, int(fid) - FIELD_OFFSET[field], float(value)))
    return out


def test_histories_are_the_14_days_strictly_before_each_impression():
    world = TaobaoWorld(CONFIG)
    logs = world.simulate_chunk(0)
    beh, imp = logs.behaviors, logs.impressions
    contexts = {}
    for _split, _skeleton, common, _truth in chunk_lines(world, logs, UserLookup(world), (1, 1), 1):
        if common is not None:
            contexts[common.split(",", 1)[0]] = items(common)
    assert len(contexts) > 500
    checked = 0
    for k in range(0, imp["user"].size, 7):
        user, ts = int(imp["user"][k]), int(imp["time_stamp"][k])
        got = contexts[f"{user:08x}{ts:08x}"]
        window = (beh["user"] == user) & (beh["time_stamp"] < ts)
        window &= beh["time_stamp"] >= ts - HISTORY_DAYS * DAY_S
        cates = beh["cate"][window][::-1]  # most recent first
        expected = {}
        for c in cates.tolist():
            expected[c] = expected.get(c, 0) + 1
        assert [(c, n) for f, c, n in got if f == "109_14"] == list(expected.items())
        checked += bool(expected)
    assert checked > 50


def test_written_world_reads_as_ali_ccp_and_the_truth_joins_every_sample(spark, tmp_path):
    from etl.ali_ccp_oracle import ali_ccp_truth, with_truth
    from etl.sources import check_reconciliation, load_source
    from etl.sources.base import SourceConfig

    summary = write_ali_ccp_world(CONFIG, tmp_path)
    counts = summary["counts"]
    assert all(counts[s]["samples"] > 100 for s in ("train", "valid", "test"))
    data = load_source(spark, "ali_ccp", str(tmp_path), SourceConfig())
    check_reconciliation(data.reports, 0.0)  # nothing quarantined
    assert all(r.flags.get("missing_common_features", 0) == 0 for r in data.reports)
    wide = data.wide_samples
    assert [c for c in wide.columns if c.startswith("s_")] == [f"s_{f}" for f in HISTORIES]
    test = wide.where("split = 'test'")
    oracle = with_truth(test, ali_ccp_truth(spark, tmp_path)).toPandas()
    assert len(oracle) == counts["test"]["samples"] == test.count()
    assert oracle["click"].sum() == counts["test"]["clicks"]
    assert roc_auc_score(oracle["click"], oracle["pctr"]) > 0.6
    assert np.allclose(oracle["pctcvr"], oracle["pctr"] * oracle["pcvr"])
    histories = test.selectExpr("size(s_109_14) AS n").toPandas()["n"]
    assert (histories > 0).mean() > 0.9 and histories.max() > 10


def test_bad_split_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="test_days"):
        write_ali_ccp_world(CONFIG, tmp_path, valid_days=2, test_days=2)
