"""The peers benchmark's export (tests/benchmarks/peers.py) holds exactly the rows of the Delta
samples version the feature spec records: checked against Spark's own Delta reader, after an
overwrite that leaves the older version's files in the table folder, and of the version the spec
records when the table has a later commit (an unfinished ETL run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from helpers_samples import make_spec, write_samples

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import peers  # noqa: E402  (a benchmark script, imported from its folder)


def delta_rows(spark, lake: Path, split: str, version: int) -> dict[str, np.ndarray]:
    """A version's rows of ``split`` through Spark's Delta reader, by impression_id."""
    reader = spark.read.format("delta").option("versionAsOf", version)
    frame = reader.load(str(lake / "samples")).where(f"split = '{split}'").toPandas()
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
        expected = delta_rows(spark, lake, split, 1)
        assert sorted(exported) == sorted(spec.columns())
        assert meta["rows"][split] == len(expected["impression_id"]) > 0
        assert exported["impression_id"].min() >= 10_000  # none of version 0's rows
        for column in spec.columns():
            np.testing.assert_array_equal(exported[column], expected[column], err_msg=column)
        seqs = [f.name for f in spec.sequence]
        assert all(exported[s].shape == (meta["rows"][split], spec.max_len) for s in seqs)


def test_export_reads_the_version_the_spec_records(spark, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_samples(spark, lake, rows_per_day=20, seed=1)
    write_samples(spark, lake, rows_per_day=20, seed=2, id_offset=10_000, save_spec=False)
    make_spec(0).save(lake)  # the table is at version 1, the spec still records version 0
    meta = peers.export_snapshot(lake, tmp_path / "export")
    assert meta["samples_version"] == 0
    for split in peers.SPLITS:
        exported = dict(np.load(tmp_path / "export" / f"{split}.npz"))
        expected = delta_rows(spark, lake, split, 0)
        assert exported["impression_id"].max() < 10_000  # none of version 1's rows
        np.testing.assert_array_equal(exported["impression_id"], expected["impression_id"])
