"""Training data: the snapshot file list of a Delta version, shard plans and torch batch loaders.

Snapshot. ``etl.delta_log.snapshot_files(lake, split)`` lists the files of the samples version
the lake's feature spec records from the Delta log (last checkpoint + later commits), so a
worker never scans the table folder (which still holds the files of other versions, including
those of an unfinished later ETL run) and needs no JVM.

Sharding. Files are taken in sorted order, files with no rows are dropped (Petastorm stops
early on empty files), and their row groups are numbered in (file, row group) order. Row group
``i`` belongs to shard ``i % num_shards``: this is Petastorm's own ``cur_shard``/``shard_count``
rule, and the pyarrow backend applies the same one, so both backends give each shard the same
rows, the shards are disjoint and their union is the table. When that would leave a shard
without rows (fewer row groups than shards), the plan falls back to row striding: every shard
scans all row groups and keeps the rows whose ``impression_id`` has rank ``r`` (among all ids,
sorted) with ``r % num_shards == shard``, so shard sizes differ by at most one row.

Equal step counts for DDP. ``ShardPlan.rows`` holds every shard's row count (parquet footers;
the id column in striding mode). Every rank computes the same plan from the same file list, so
``steps_per_epoch`` needs no collective: the MIN over shards of floor(rows / batch_size), so that
every step is a full batch on every rank (or, for a shard smaller than one batch, the MIN of
ceil(rows / batch_size)). The rows beyond that are skipped for the epoch; which ones changes
every epoch, as the row-group order and the shuffle buffer are reseeded per epoch. We chose MIN
over DDP's ``join()`` because the loop runs other collectives per epoch (loss all-reduce,
validation gather) and MIN keeps every step a full synchronous DDP step. Evaluation reads every
row of every shard (no DDP forward, so uneven shards are fine there).

Memory. A loader holds at most the shuffle buffer plus one row group and ``PREFETCH`` row
groups read ahead; striding mode also holds the sorted ``impression_id`` column (8 bytes a row),
which only happens for tables with fewer row groups than shards, i.e. small ones.

Batches. Each loader streams row groups (never the whole shard), re-batches them to
``batch_size`` through an in-memory shuffle buffer of ``shuffle_buffer`` rows, seeded by
(seed, epoch, shard), and yields ``dict[str, Tensor]``: sparse, sequence (B, L), length and key
columns as int64, dense and label columns as float32. The order is reproducible for a
(seed, epoch): both backends read row groups in one background thread, in a fixed order.

Petastorm runs with ``reader_pool_type="dummy"`` inside our own prefetch thread. Its thread pool
is not safe to use here: in 0.13.1 ``ThreadPool.get_results`` tests ``all_workers_done()`` and
then ``ventilator.completed()`` without a lock, so when the ventilator hands out the last row
groups between the two checks the reader ends early. Measured on an 8-file table: 20 of 40
epochs came back short with 1 thread and 7 of 40 returned no rows at all with 2 threads (the
pool also returns row groups in completion order, which breaks reproducibility).
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow_hotfix  # noqa: F401  (CVE-2023-47248 for pyarrow < 14.0.1)
import torch

from etl import storage
from etl.delta_log import SnapshotError
from etl.spec import FeatureSpec
from train.train_config import LOADERS

warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow(\..*)?")

log = logging.getLogger(__name__)
# Petastorm logs at INFO that our plain-parquet snapshots carry no Unischema: expected here.
logging.getLogger("petastorm").setLevel(logging.WARNING)

Backend = Literal["petastorm", "pyarrow"]
KEY_COLUMN = "impression_id"
PREFETCH = 2  # row groups read ahead of the consumer by the loader thread

Batch = dict[str, torch.Tensor]
Chunk = dict[str, np.ndarray]


def _open_parquet(uri: str) -> pq.ParquetFile:
    filesystem, path = storage.filesystem(uri)
    return pq.ParquetFile(filesystem.open_input_file(path))


# --- shard plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowGroup:
    file: str  # URI
    index: int  # row group index inside the file
    num_rows: int


@dataclass
class ShardPlan:
    """Which rows each of ``num_shards`` shards reads; identical on every rank."""

    files: list[str]  # non-empty files in reading order (Petastorm numbers row groups in it)
    row_groups: list[RowGroup]
    num_shards: int
    mode: Literal["row_group", "row_stride"]
    rows: list[int]  # rows per shard
    stride_ids: list[np.ndarray] = field(default_factory=list)  # row_stride: sorted ids per shard

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def shard_row_groups(self, shard: int) -> list[RowGroup]:
        if self.mode == "row_stride":
            return list(self.row_groups)
        return [g for i, g in enumerate(self.row_groups) if i % self.num_shards == shard]


def read_row_groups(files: list[str]) -> list[RowGroup]:
    """Row groups of ``files`` (footers only) in (file, index) order; empty files are dropped."""
    groups = []
    for uri in files:
        meta = _open_parquet(uri).metadata
        if meta.num_rows == 0:
            continue
        groups += [RowGroup(uri, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return groups


def plan_shards(files: list[str], num_shards: int) -> ShardPlan:
    """Row-group sharding (Petastorm's rule), or row striding when a shard would be empty."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    groups = read_row_groups(files)
    non_empty = list(dict.fromkeys(g.file for g in groups))
    rows = [sum(g.num_rows for g in groups[k::num_shards]) for k in range(num_shards)]
    if min(rows) > 0:
        return ShardPlan(non_empty, groups, num_shards, "row_group", rows)
    ids = _sorted_ids(non_empty)
    stride = [ids[k::num_shards] for k in range(num_shards)]
    log.info("%d row groups for %d shards: striding rows by impression_id", len(groups), num_shards)
    return ShardPlan(non_empty, groups, num_shards, "row_stride", [len(s) for s in stride], stride)


def _sorted_ids(files: list[str]) -> np.ndarray:
    parts = [_open_parquet(f).read(columns=[KEY_COLUMN]).column(0).to_numpy() for f in files]
    ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if len(ids) and (np.diff(ids) == 0).any():
        raise SnapshotError(f"duplicate {KEY_COLUMN} values in the snapshot: cannot stride rows")
    return ids


def steps_per_epoch(plan: ShardPlan, batch_size: int) -> int:
    """Steps every rank runs: full batches only when every shard has one (see module doc)."""
    full = min(r // batch_size for r in plan.rows)
    return full if full > 0 else min(-(-r // batch_size) for r in plan.rows)


def label_priors(files: list[str]) -> dict[str, float]:
    """Base rates of the rows of ``files``: ctr, cvr (conversions per click) and views (mean
    n_future_views); what a model's output offsets start from (BaseModel.set_priors)."""
    sums = np.zeros(4)  # rows, clicks, conversions, views
    for uri in files:
        table = _open_parquet(uri).read(columns=["click", "conversion", "n_future_views"])
        sums += [table.num_rows, *(pc.sum(table[c]).as_py() or 0 for c in table.column_names)]
    rows, clicks = max(sums[0], 1.0), max(sums[1], 1.0)
    return {"ctr": sums[1] / rows, "cvr": sums[2] / clicks, "views": sums[3] / rows}


# --- loaders ------------------------------------------------------------------------------------
def batch_columns(spec: FeatureSpec) -> dict[str, torch.dtype]:
    """Every column of the batch contract and its torch dtype."""
    dtypes = {f.name: torch.float32 if f.kind == "dense" else torch.int64 for f in spec.fields}
    dtypes.update({name: torch.float32 for name in spec.labels})
    dtypes.update({name: torch.int64 for name in spec.key_fields})
    if spec.sequence:
        dtypes[spec.length_field] = torch.int64
    return dtypes


@dataclass
class ShardLoader:
    """Iterable of torch batches for one shard of one epoch; see ``make_loader``."""

    spec: FeatureSpec
    plan: ShardPlan
    backend: Backend
    batch_size: int
    shard: int
    seed: int
    epoch: int
    shuffle: bool
    shuffle_buffer: int
    max_steps: int | None

    @property
    def num_rows(self) -> int:
        return self.plan.rows[self.shard]

    def __len__(self) -> int:
        steps = -(-self.num_rows // self.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def __iter__(self) -> Iterator[Batch]:
        dtypes = batch_columns(self.spec)
        columns = list(dtypes)
        reader = _petastorm_chunks if self.backend == "petastorm" else _pyarrow_chunks
        raw = reader(self, columns)
        chunks = raw
        if self.plan.mode == "row_stride":
            chunks = _keep_ids(raw, self.plan.stride_ids[self.shard])
        rng = np.random.default_rng([self.seed, self.epoch, self.shard]) if self.shuffle else None
        buffer = max(self.shuffle_buffer, self.batch_size) if self.shuffle else self.batch_size
        batches = rebatch(chunks, self.batch_size, rng, buffer)
        try:
            for step, chunk in enumerate(batches):
                if self.max_steps is not None and step >= self.max_steps:
                    break
                yield to_tensors(chunk, dtypes, self.spec.max_len)
        finally:  # stop the reader threads now, also when the caller stops early
            batches.close()
            raw.close()

    @property
    def reader_seed(self) -> int:
        """Seed of the row-group order for this (seed, epoch); never 0 (Petastorm: random)."""
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        return int(state) or 1


def make_loader(
    spec: FeatureSpec,
    files: list[str] | ShardPlan,
    backend: Backend = "petastorm",
    batch_size: int = 1024,
    shard: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 100_000,
    max_steps: int | None = None,
) -> ShardLoader:
    """Batches of shard ``shard`` of ``num_shards`` over the snapshot ``files`` (or a plan).

    ``shuffle``: row groups in a (seed, epoch) order and rows through the shuffle buffer;
    otherwise file order. ``max_steps``: stop after this many batches (the agreed DDP count).
    """
    if backend not in LOADERS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {list(LOADERS)}")
    plan = files if isinstance(files, ShardPlan) else plan_shards(files, num_shards)
    if plan.num_shards != num_shards or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards} does not fit a {plan.num_shards} plan")
    return ShardLoader(
        spec,
        plan,
        backend,
        batch_size,
        shard,
        seed,
        epoch,
        shuffle,
        shuffle_buffer,
        max_steps,
    )


def _petastorm_chunks(loader: ShardLoader, columns: list[str]) -> Iterator[Chunk]:
    from petastorm import make_batch_reader

    plan = loader.plan
    sharded = plan.mode == "row_group" and plan.num_shards > 1

    def read() -> Iterator[Chunk]:
        reader = make_batch_reader(
            plan.files,
            schema_fields=columns,
            reader_pool_type="dummy",  # see the module doc: the thread pool loses row groups
            num_epochs=1,
            shuffle_row_groups=loader.shuffle,
            seed=loader.reader_seed if loader.shuffle else None,  # a seed reorders shards too
            cur_shard=loader.shard if sharded else None,
            shard_count=plan.num_shards if sharded else None,
            filesystem=_petastorm_filesystem(plan.files),
        )
        try:  # not `with reader`: its __exit__ prints "Cache cleanup complete." to stdout
            for row_group in reader:
                yield {name: getattr(row_group, name) for name in columns}
        finally:
            reader.stop()
            reader.join()

    return _prefetch(read, depth=PREFETCH)


def _petastorm_filesystem(files: list[str]):
    """Object-store snapshots: s3fs on our endpoint (etl/storage.py) in pyarrow's legacy
    S3FSWrapper. Petastorm 0.13 builds a legacy ParquetDataset, which pyarrow 12 only does for a
    legacy filesystem: with Petastorm's own (bare s3fs) one it fails on 'validate_schema'.
    Local files: None (Petastorm's own resolver)."""
    if not files or files[0].startswith("file://"):
        return None
    from pyarrow.filesystem import S3FSWrapper

    with warnings.catch_warnings():  # pyarrow.filesystem is deprecated; Petastorm needs it
        warnings.simplefilter("ignore", FutureWarning)
        return S3FSWrapper(storage.s3fs_filesystem())


def _pyarrow_chunks(loader: ShardLoader, columns: list[str]) -> Iterator[Chunk]:
    groups = loader.plan.shard_row_groups(loader.shard)
    if loader.shuffle:
        order = np.random.default_rng(loader.reader_seed).permutation(len(groups))
        groups = [groups[i] for i in order]
    return _prefetch(lambda: (_read_row_group(g, columns) for g in groups), depth=PREFETCH)


def _read_row_group(group: RowGroup, columns: list[str]) -> Chunk:
    table = _open_parquet(group.file).read_row_group(group.index, columns=columns)
    return {name: _column_to_numpy(table.column(name)) for name in columns}


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != width).any():
            raise SnapshotError("sequence column with rows of different lengths (need max_len)")
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)
    return array.to_numpy(zero_copy_only=False)


def _prefetch(make_iter: Callable[[], Iterator[Chunk]], depth: int) -> Iterator[Chunk]:
    """Run ``make_iter()`` in a background thread, ``depth`` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_iter():
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="pyarrow-prefetch")
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _keep_ids(chunks: Iterator[Chunk], ids: np.ndarray) -> Iterator[Chunk]:
    """Row striding: keep the rows whose impression_id is in the shard's sorted ``ids``."""
    for chunk in chunks:
        keys = chunk[KEY_COLUMN]
        pos = np.searchsorted(ids, keys).clip(0, max(len(ids) - 1, 0))
        mask = ids[pos] == keys if len(ids) else np.zeros(len(keys), dtype=bool)
        if mask.any():
            yield {name: values[mask] for name, values in chunk.items()}


def rebatch(
    chunks: Iterator[Chunk], batch_size: int, rng: np.random.Generator | None, buffer_rows: int
) -> Iterator[Chunk]:
    """Re-cut row-group chunks into ``batch_size`` batches (the last one may be smaller).

    With ``rng`` the rows pass through a shuffle buffer: chunks accumulate until it holds
    ``buffer_rows`` rows, the buffer is permuted, full batches leave and the rest stays.
    """
    pending: list[Chunk] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += _num_rows(chunk)
        if held >= buffer_rows:
            data = _permute(_concat(pending), rng)
            full = held // batch_size * batch_size
            yield from _slices(data, 0, full, batch_size)
            pending, held = [_take(data, slice(full, held))], held - full
    if held:
        data = _permute(_concat(pending), rng)
        yield from _slices(data, 0, held, batch_size)


def _num_rows(chunk: Chunk) -> int:
    return len(next(iter(chunk.values())))


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _permute(data: Chunk, rng: np.random.Generator | None) -> Chunk:
    return data if rng is None else _take(data, rng.permutation(_num_rows(data)))


def _take(data: Chunk, index: slice | np.ndarray) -> Chunk:
    return {name: values[index] for name, values in data.items()}


def _slices(data: Chunk, start: int, stop: int, size: int) -> Iterator[Chunk]:
    for i in range(start, stop, size):
        yield _take(data, slice(i, min(i + size, stop)))


def to_tensors(chunk: Chunk, dtypes: dict[str, torch.dtype], max_len: int) -> Batch:
    """Numpy columns -> the batch contract (sequence columns must be (B, max_len))."""
    batch = {}
    for name, dtype in dtypes.items():
        values = chunk[name]
        if values.dtype == object:  # ragged lists from Petastorm
            raise SnapshotError(f"column {name} has rows of different lengths (need {max_len})")
        if values.ndim == 2 and values.shape[1] != max_len:
            raise SnapshotError(f"column {name} has length {values.shape[1]}, spec says {max_len}")
        numpy_dtype = np.float32 if dtype == torch.float32 else np.int64
        array = np.ascontiguousarray(values, dtype=numpy_dtype)
        if not array.flags.writeable:  # arrow-backed buffers are read-only
            array = array.copy()
        batch[name] = torch.from_numpy(array)
    return batch
