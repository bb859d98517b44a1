"""Options and splits are checked before the first write: a bad one is one line (exit 2 for the
job) and leaves a good lake exactly as it was."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_infra import ROOT, generate_world

from etl.config import EtlConfig
from etl.delta_log import latest_version
from etl.pipeline import run_etl
from etl.sources.base import InputError
from etl.spec import FeatureSpec

PROBES = [
    (["--gap-minutes", "-5"], "--gap-minutes must be > 0"),
    (["--max-len", "0"], "--max-len must be >= 1"),
    (["--test-start", "2017/05/08"], "--test-start must be a date YYYY-MM-DD"),
    (["--test-start", "2017-5-8"], "--test-start must be a date YYYY-MM-DD"),
    (["--min-count", "0"], "--min-count must be >= 1"),
    (["--max-quarantine-share", "1.5"], "--max-quarantine-share"),
    (["--tz-offset-hours", "30"], "--tz-offset-hours"),
]


@pytest.mark.parametrize(("args", "words"), PROBES, ids=[p[0][0] + p[0][1] for p in PROBES])
def test_nonsense_options_are_one_line_exit_2_and_write_nothing(tmp_path, args, words):
    lake = tmp_path / "lake"
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "etl.py"), "--input", str(tmp_path), "--output"]
        + [str(lake), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    assert not lake.exists()


def test_bad_splits_fail_before_any_write(spark, tmp_path):
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    generate_world(raw, users=60, seed=3)
    run_etl(spark, EtlConfig(input=str(raw), output=str(lake), max_len=5))
    tables = ("bronze_raw_sample", "events", "sessions", "vocab", "impressions", "samples")
    before = {t: latest_version(lake / t)[0] for t in tables}
    spec_before = (lake / "_feature_spec.json").read_text()
    for test_start, words in (("1999-01-01", "no train days left"), ("2030-01-01", "empty")):
        with pytest.raises((InputError, ValueError), match=words):
            run_etl(spark, EtlConfig(input=str(raw), output=str(lake), test_start=test_start))
        after = {t: latest_version(lake / t)[0] for t in tables}
        assert after == before, test_start
        assert (lake / "_feature_spec.json").read_text() == spec_before
    assert FeatureSpec.load(lake).tables["samples"] == before["samples"]
