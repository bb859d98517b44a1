"""train/data.py on real Delta tables (local Spark) and plain multi-row-group parquet files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from etl.delta_log import SnapshotError, latest_version, snapshot_files
from etl.spec import FeatureSpec
from tests.helpers_samples import MAX_LEN, shared_lake, write_parquet_files, write_samples
from train.data import make_loader, plan_shards, steps_per_epoch
from train.train_config import LOADERS as BACKENDS


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> tuple[Path, FeatureSpec]:
    return shared_lake(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def multi_rg_files(tmp_path_factory) -> list[str]:
    """3 files, 9 row groups of uneven sizes (25,25,25,25 | 25,25,20 | 25,5)."""
    return write_parquet_files(tmp_path_factory.mktemp("multi_rg"), [100, 70, 30], 25)


def shard_ids(spec, plan, backend, shard, **kw) -> list[int]:
    loader = make_loader(
        spec, plan, backend, batch_size=16, shard=shard, num_shards=plan.num_shards, **kw
    )
    return [int(i) for batch in loader for i in batch["impression_id"]]


def table_ids(files: list[str]) -> set[int]:
    paths = [f.removeprefix("file://") for f in files]
    return set(
        ds.dataset(paths, format="parquet").to_table(columns=["impression_id"])[0].to_pylist()
    )


# --- snapshot ---------------------------------------------------------------------------------
def test_snapshot_reads_the_version_the_spec_records(spark, tmp_path):
    lake = tmp_path / "lake"
    write_samples(spark, lake, rows_per_day=20, seed=1, files=2)
    spec = write_samples(spark, lake, rows_per_day=15, seed=2, id_offset=100_000, files=2)
    assert spec.tables["samples"] == 1 == latest_version(lake / "samples")[0]

    files = snapshot_files(lake, "train")
    seen = table_ids(files)
    assert seen == set(range(100_000, 100_000 + 2 * 15))  # only version 1's train rows
    # a raw directory scan of the table folder sees both versions' files
    raw = ds.dataset(
        lake / "samples", format="parquet", partitioning="hive", exclude_invalid_files=True,
        ignore_prefixes=["_", "."],
    ).to_table(columns=["impression_id", "split"])  # fmt: skip
    raw_train = {
        i for i, s in zip(*(c.to_pylist() for c in raw.columns), strict=True) if s == "train"
    }
    assert any(i < 100_000 for i in raw_train) and seen < raw_train
    # the loader over the snapshot yields exactly the new rows
    assert set(shard_ids(spec, plan_shards(files, 1), "petastorm", 0)) == seen

    # a commit the spec does not record (an unfinished ETL run) is invisible
    write_samples(spark, lake, rows_per_day=10, seed=3, id_offset=200_000, files=2, save_spec=False)
    assert latest_version(lake / "samples")[0] == 2
    assert snapshot_files(lake, "train") == files
    # a spec of an older version reads that version (time travel)
    old_spec = FeatureSpec.load(lake)
    old_spec.tables["samples"] = 0
    assert table_ids(snapshot_files(lake, "train", old_spec)) == set(range(2 * 20))
    old_spec.tables["samples"] = 7
    with pytest.raises(SnapshotError, match="version 7 of .* is not in its log"):
        snapshot_files(lake, "train", old_spec)
    del old_spec.tables["samples"]
    with pytest.raises(SnapshotError, match="records no version of 'samples'"):
        snapshot_files(lake, "train", old_spec)


def test_snapshot_errors(lake, tmp_path):
    path, spec = lake
    with pytest.raises(SnapshotError, match="has no files of split=nope"):
        snapshot_files(path, "nope")
    with pytest.raises(SnapshotError, match="no Delta table"):
        snapshot_files(tmp_path, "train", spec)
    files = snapshot_files(path, "train")
    assert files == sorted(files) and all(f.startswith("file:///") for f in files)
    assert len(files) >= 4 and all(os.path.isfile(f[len("file://") :]) for f in files)


# --- shard coverage ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 16])
def test_shards_cover_the_table_once(multi_rg_files, backend, num_shards):
    spec = _spec()
    plan = plan_shards(multi_rg_files, num_shards)
    assert plan.mode == ("row_stride" if num_shards > 9 else "row_group")
    shards = [shard_ids(spec, plan, backend, k, seed=5) for k in range(num_shards)]
    union = [i for ids in shards for i in ids]
    assert len(union) == len(set(union)) == 200  # no overlap, nothing lost
    assert set(union) == table_ids(multi_rg_files)
    assert [len(ids) for ids in shards] == plan.rows  # footer counts match what is read
    assert all(rows > 0 for rows in plan.rows)  # every shard gets data


def test_backends_give_each_shard_the_same_rows(multi_rg_files, lake):
    spec = _spec()
    for files in (multi_rg_files, snapshot_files(lake[0], "train")):
        for n in (2, 3):
            plan = plan_shards(files, n)
            for k in range(n):
                a = shard_ids(spec, plan, "petastorm", k, shuffle=False)
                b = shard_ids(spec, plan, "pyarrow", k, shuffle=False)
                assert a == b  # same rule, same order without shuffling


@pytest.mark.parametrize("backend", BACKENDS)
def test_delta_shards_cover_each_split(lake, backend):
    path, spec = lake
    for split in ("train", "valid", "test"):
        files = snapshot_files(path, split)
        plan = plan_shards(files, 2)
        shards = [shard_ids(spec, plan, backend, k) for k in range(2)]
        assert not set(shards[0]) & set(shards[1])
        assert set(shards[0]) | set(shards[1]) == table_ids(files)


def test_steps_per_epoch_is_the_min_over_shards(multi_rg_files):
    plan = plan_shards(multi_rg_files, 3)
    assert plan.rows == [70, 75, 55]  # row groups 0,3,6 | 1,4,7 | 2,5,8
    assert steps_per_epoch(plan, 16) == 3  # floor(55 / 16): full batches on every rank
    assert steps_per_epoch(plan, 64) == 1  # a shard below one batch: ceil(55 / 64)
    loader = make_loader(_spec(), plan, "pyarrow", 16, shard=0, num_shards=3, max_steps=3)
    batches = list(loader)
    assert len(loader) == 3 and [len(b["click"]) for b in batches] == [16, 16, 16]


# --- batch contract and shuffle ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_contract(lake, backend):
    path, spec = lake
    loader = make_loader(spec, snapshot_files(path, "train"), backend, 64, shard=1, num_shards=2)
    batches = list(loader)
    assert [len(b["click"]) for b in batches[:-1]] == [64] * (len(batches) - 1)
    assert sum(len(b["click"]) for b in batches) == loader.num_rows == loader.plan.rows[1]
    batch = batches[0]
    assert set(batch) == set(spec.columns())
    for f in spec.fields:
        want = {"sparse": (torch.int64, (64,)), "dense": (torch.float32, (64,))}.get(
            f.kind, (torch.int64, (64, MAX_LEN))
        )
        assert (batch[f.name].dtype, tuple(batch[f.name].shape)) == want, f.name
    for name in ("hist_len", "impression_id", "user_key"):
        assert batch[name].dtype == torch.int64 and batch[name].shape == (64,)
    for name in spec.labels:
        assert batch[name].dtype == torch.float32 and batch[name].shape == (64,)
    # right-padded histories: hist_len valid entries, zeros after
    valid = (batch["hist_cate"] != 0).sum(dim=1)
    assert torch.equal(valid, batch["hist_len"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffle_is_reproducible_for_seed_and_epoch(lake, backend):
    path, spec = lake
    files = snapshot_files(path, "train")
    plan = plan_shards(files, 1)

    def order(seed: int, epoch: int) -> list[int]:
        return shard_ids(spec, plan, backend, 0, seed=seed, epoch=epoch, shuffle_buffer=100)

    first = order(7, 0)
    assert first == order(7, 0)  # same (seed, epoch): same batches
    assert first != order(7, 1) and first != order(8, 0)
    assert sorted(first) == sorted(order(7, 1)) == sorted(table_ids(files))
    assert first != sorted(first)  # rows are mixed, not file order


def test_rebatch_cuts_full_batches_and_keeps_every_row():
    from train.data import rebatch

    chunks = ({"x": np.arange(i * 10, i * 10 + 10)} for i in range(20))
    out = list(rebatch(chunks, 8, np.random.default_rng(0), buffer_rows=30))
    assert sorted(np.concatenate([b["x"] for b in out]).tolist()) == list(range(200))
    assert [len(b["x"]) for b in out[:-1]] == [8] * (len(out) - 1)


def _spec() -> FeatureSpec:
    from tests.helpers_samples import make_spec

    return make_spec(0)


def test_label_priors_are_the_base_rates(tmp_path):
    """ctr over rows, cvr per click, mean views, summed over every file (train.data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from train.data import label_priors

    files = []
    for i, (click, conv, views) in enumerate(
        [([1, 0, 0, 0], [1, 0, 0, 0], [3, 0, 1, 0]), ([1, 1, 0, 0], [0, 0, 0, 0], [0, 4, 0, 0])]
    ):
        table = pa.table({"click": click, "conversion": conv, "n_future_views": views})
        pq.write_table(table, tmp_path / f"part-{i}.parquet")
        files.append(str(tmp_path / f"part-{i}.parquet"))
    priors = label_priors(files)
    assert priors == {"ctr": 3 / 8, "cvr": 1 / 3, "views": 1.0}
