"""Incremental daily runs (etl/incremental.py): days added one at a time give the tables of one
full run over all days, decoded (ids mapped back to raw values through each lake's vocab);
a rerun of the same day writes nothing; known ids never change; a bad option writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.config import EtlConfig
from etl.delta_log import latest_version
from etl.features import FIXED_VOCAB_SIZES
from etl.incremental import day_start, lake_before_increment
from etl.lake import read_recorded
from etl.pipeline import run_etl
from etl.sources.base import InputError
from etl.spec import SPEC_FILE, FeatureSpec
from etl.tables import AD_TABLE, EVENTS, IMPRESSIONS, SAMPLES, SESSIONS, VOCAB
from etl.world import WorldConfig, write_world

DAYS = ("2017-05-06", "2017-05-07", "2017-05-08", "2017-05-09")  # the world's impression days
FIRST_FULL = 2  # the first run: a full ETL over the days up to DAYS[1]
TZ = 8
CUT_FILES = ("raw_sample.csv", "behavior_log.csv")  # cut by time_stamp; the rest copied
ROW_TABLES = (EVENTS, SESSIONS, IMPRESSIONS, AD_TABLE)  # raw values: compared as they are
OPTIONS = {"max_len": 8, "test_days": 0, "valid_days": 1}  # the closed loop's splits
PAD, UNKNOWN = "<pad>", "<unknown>"


def cut_world(world: Path, out: Path, last_day: str) -> Path:
    """The world's input up to ``last_day`` (UTC+8) inclusive: what a daily feed has by then."""
    out.mkdir(parents=True)
    end = day_start(last_day, TZ) + 86_400
    for name in CUT_FILES:
        frame = pd.read_csv(world / name, dtype=str, keep_default_na=False)
        frame[frame["time_stamp"].astype(np.int64) < end].to_csv(out / name, index=False)
    for name in ("ad_feature.csv", "user_profile.csv"):
        shutil.copyfile(world / name, out / name)
    return out


def etl(spark, raw: Path, lake: Path, incremental: bool, **options):
    cfg = EtlConfig(input=str(raw), output=str(lake), incremental=incremental, **OPTIONS)
    for name, value in options.items():
        setattr(cfg, name, value)
    return run_etl(spark, cfg)


def versions(lake: Path) -> dict[str, int]:
    return {p.name: latest_version(p)[0] for p in lake.iterdir() if (p / "_delta_log").is_dir()}


def decoded(spark, lake: Path) -> dict[str, pd.DataFrame]:
    """Every table of the lake's recorded versions as sorted rows; samples' learned ids as
    their raw values (the vocab as (vocab, raw, count), without its ids)."""
    spec = FeatureSpec.load(lake)
    out = {t: rows(read_recorded(spark, lake, t, spec).toPandas()) for t in ROW_TABLES}
    vocab = read_recorded(spark, lake, VOCAB, spec).toPandas()
    out[VOCAB] = rows(vocab.drop(columns="id"))
    lookup = {
        name: dict(zip(part["id"], part["raw"], strict=True))
        for name, part in vocab.groupby("vocab")
    }
    samples = read_recorded(spark, lake, SAMPLES, spec).toPandas()
    for f in spec.fields:
        if f.vocab is None or f.vocab in FIXED_VOCAB_SIZES:
            continue
        ids = lookup.get(f.vocab, {}) | {0: PAD, 1: UNKNOWN}
        if f.kind == "sequence":
            samples[f.name] = [tuple(ids[int(i)] for i in seq) for seq in samples[f.name]]
        else:
            samples[f.name] = [ids[int(i)] for i in samples[f.name]]
    out[SAMPLES] = rows(samples)
    return out


def rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order (arrays as tuples), columns sorted by name."""
    frame = frame.copy()
    for c in frame.columns:
        if frame[c].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            frame[c] = frame[c].map(tuple)
    frame = frame[sorted(frame.columns)]
    keys = frame.astype(str).apply(lambda r: "|".join(r), axis=1)
    return frame.iloc[np.argsort(keys.to_numpy(), kind="stable")].reset_index(drop=True)


@pytest.fixture(scope="module")
def lakes(spark, tmp_path_factory):
    """(full lake over all days, incremental lake, {day: its cumulative input}, vocab and spec
    of the incremental lake after its first full run, the versions before the rerun)."""
    root = tmp_path_factory.mktemp("incremental")
    write_world(WorldConfig(users=80, days=len(DAYS), history_days=1, seed=5), root / "world")
    inputs = {d: cut_world(root / "world", root / f"upto_{d}", d) for d in DAYS}
    full, inc = root / "full", root / "inc"
    JOBS["full"], _ = jobs_of(spark, "full", etl, spark, inputs[DAYS[-1]], full, False)
    etl(spark, inputs[DAYS[FIRST_FULL - 1]], inc, incremental=False)
    first_vocab = read_recorded(spark, inc, VOCAB).toPandas()
    first_spec = FeatureSpec.load(inc)
    for day in DAYS[FIRST_FULL:]:
        JOBS[day], summary = jobs_of(spark, day, etl, spark, inputs[day], inc, True)
        assert summary.days == [day]
    return full, inc, inputs, first_vocab, first_spec


JOBS: dict[str, int] = {}  # Spark jobs of each run of the ``lakes`` fixture: "full", day
MAX_FULL_JOBS = 30  # issue 16's budget for a run, whatever the size
# What an added day takes (47 measured): 11 Delta overwrites at 3 jobs each (the snapshot's
# state, the write, the files it replaces), the rest the run's own actions; context reads: none.
MAX_INCREMENTAL_JOBS = 47


def jobs_of(spark, group: str, fn, *args):
    """(the Spark jobs ``fn(*args)`` ran, counted through a job group: deterministic, unlike
    time; its result)."""
    sc = spark.sparkContext
    group = f"test-incremental-etl-{group}"
    sc.setJobGroup(group, group)
    try:
        result = fn(*args)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return len(sc.statusTracker().getJobIdsForGroup(group)), result


def test_full_and_incremental_runs_stay_within_the_job_budget(lakes):
    print(f"Spark jobs per run: {JOBS}")
    assert 0 < JOBS["full"] <= MAX_FULL_JOBS, JOBS
    for day in DAYS[FIRST_FULL:]:
        assert 0 < JOBS[day] <= MAX_INCREMENTAL_JOBS, JOBS


def test_days_one_at_a_time_equal_one_full_run_decoded(spark, lakes):
    full, inc, *_ = lakes
    full_spec, inc_spec = FeatureSpec.load(full), FeatureSpec.load(inc)
    assert (
        inc_spec.splits
        == full_spec.splits
        == {
            "train": list(DAYS[:-1]),
            "valid": [DAYS[-1]],
            "test": [],
        }
    )
    assert inc_spec.fields == full_spec.fields  # the same fields and vocabulary sizes
    assert inc_spec.vocabulary_sizes == full_spec.vocabulary_sizes
    assert inc_spec.last_day == full_spec.last_day == DAYS[-1]
    want, got = decoded(spark, full), decoded(spark, inc)
    for table, frame in want.items():
        assert len(frame) > 0, table
        pd.testing.assert_frame_equal(got[table], frame, check_dtype=False, obj=table)
    samples = want[SAMPLES]
    assert (samples["ad"] != UNKNOWN).any() and (samples["split"] == "valid").any()


def test_increments_rewrite_only_the_affected_days(lakes):
    _, inc, *_ = lakes
    log = inc / SAMPLES / "_delta_log"
    last = sorted(log.glob("*.json"))[-1].read_text()
    removed = {line.split("day=")[1][:10] for line in last.splitlines() if '"remove"' in line}
    added = {line.split("day=")[1][:10] for line in last.splitlines() if '"add"' in line}
    # one commit: the previous valid day (now train) rewritten, the new day added
    assert removed == {DAYS[-2]} and added == set(DAYS[-2:])
    assert FeatureSpec.load(inc).tables[SAMPLES] == latest_version(inc / SAMPLES)[0]


def test_known_ids_never_change_and_the_spec_records_the_vocab(spark, lakes):
    _, inc, _, first_vocab, first_spec = lakes
    after = read_recorded(spark, inc, VOCAB).toPandas()
    merged = first_vocab.merge(after, on=["vocab", "raw"], suffixes=("_before", "_after"))
    assert len(merged) == len(first_vocab)  # nothing dropped
    assert (merged["id_before"] == merged["id_after"]).all()
    assert (merged["count_after"] >= merged["count_before"]).all()
    new = after.merge(first_vocab[["vocab", "raw"]], how="left", indicator=True)
    new = new[new["_merge"] == "left_only"]
    assert len(new) > 0  # the days added values ...
    tops = first_vocab.groupby("vocab")["id"].max()
    assert (new["id"] > new["vocab"].map(tops).fillna(1)).all()  # ... with ids after the max
    spec = FeatureSpec.load(inc)
    assert spec.vocab_version > first_spec.vocab_version == 1
    assert spec.vocabulary_sizes == {
        k: int(v) + 1 for k, v in after.groupby("vocab")["id"].max().items()
    }


def test_rerunning_the_same_day_writes_nothing(spark, lakes):
    _, inc, inputs, *_ = lakes
    before, spec_text = versions(inc), (inc / SPEC_FILE).read_text()
    summary = etl(spark, inputs[DAYS[-1]], inc, incremental=True)
    assert summary.days == [] and summary.stats["new_days"] == 0
    assert versions(inc) == before
    assert (inc / SPEC_FILE).read_text() == spec_text


def test_bad_incremental_options_are_refused_before_any_write(spark, lakes, tmp_path):
    _, inc, inputs, *_ = lakes
    before, spec_text = versions(inc), (inc / SPEC_FILE).read_text()
    raw = inputs[DAYS[-1]]
    probes = [
        ({"max_len": 9}, "--max-len 9 differs from the lake's 8"),
        ({"valid_days": 2}, "--valid-days 2 differs"),
        ({"min_count": 2}, "--incremental needs --min-count 1"),
        ({"source": "ali_ccp"}, "ali_ccp source has no days"),
    ]
    for options, words in probes:
        with pytest.raises(InputError, match=words):
            etl(spark, raw, inc, incremental=True, **options)
        assert versions(inc) == before, options
        assert (inc / SPEC_FILE).read_text() == spec_text
    with pytest.raises(InputError, match="no lake at"):
        etl(spark, raw, tmp_path / "empty", incremental=True)
    assert not (tmp_path / "empty").exists()


def test_a_spec_from_before_incremental_runs_loads_and_is_refused(lakes, tmp_path):
    _, inc, *_ = lakes
    raw = json.loads((inc / SPEC_FILE).read_text())
    for key in ("last_day", "vocab_version", "vocabulary_sizes", "options"):
        del raw[key]
    old = tmp_path / "old_lake"
    old.mkdir()
    (old / SPEC_FILE).write_text(json.dumps(raw))
    spec = FeatureSpec.load(old)
    assert spec.last_day is None and spec.vocabulary_sizes == {} and spec.fields
    cfg = EtlConfig(input=str(tmp_path), output=str(old), incremental=True, **OPTIONS)
    with pytest.raises(InputError, match="predates incremental runs"):
        lake_before_increment(cfg)
