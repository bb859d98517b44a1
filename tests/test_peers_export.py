"""The peers benchmark's export (tests/benchmarks/peers.py) holds exactly the rows of the Delta
samples version the feature spec records: checked against Spark's own Delta reader, after an
overwrite that leaves the older version's files in the table folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_samples import make_spec, write_samples

from etl.delta_log import SnapshotError

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import peers  # noqa: E402  (a benchmark script, imported from its folder)


def delta_rows(spark, lake: Path, split: str) -> dict[str, np.ndarray]:
    """The latest version's rows of ``split`` through Spark's Delta reader, by impression_id."""
    frame = (
        spark.read.format("delta").load(str(lake / "samples")).where(f"split = '{split}'")
    ).toPandas()
    frame = frame.sort_values("impression_id")
    return {c: np.array(frame[c].tolist()) for c in frame.columns}


def test_export_equals_the_snapshot(spark, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_samples(spark, lake, rows_per_day=60, seed=1)
    spec = write_samples(spark, lake, rows_per_day=50, seed=2, id_offset=10_000)  # version 1
    meta = peers.export_snapshot(lake, tmp_path / "export")

    assert meta["samples_version"] == spec.tables["samples"] == 1
    assert json.loads((tmp_path / "export" / "export.json").read_text()) == meta
    for split in peers.SPLITS:
        exported = dict(np.load(tmp_path / "export" / f"{split}.npz"))
        expected = delta_rows(spark, lake, split)
        assert sorted(exported) == sorted(spec.columns())
        assert meta["rows"][split] == len(expected["impression_id"]) > 0
        assert exported["impression_id"].min() >= 10_000  # none of version 0's rows
        for column in spec.columns():
            np.testing.assert_array_equal(exported[column], expected[column], err_msg=column)
        seqs = [f.name for f in spec.sequence]
        assert all(exported[s].shape == (meta["rows"][split], spec.max_len) for s in seqs)


def test_export_refuses_a_spec_of_another_version(spark, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_samples(spark, lake, rows_per_day=20, seed=1)
    write_samples(spark, lake, rows_per_day=20, seed=2, save_spec=False)  # table at version 1
    make_spec(0).save(lake)  # the spec still records version 0
    with pytest.raises(SnapshotError, match="version 1 but the feature spec records version 0"):
        peers.export_snapshot(lake, tmp_path / "export")
