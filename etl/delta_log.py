"""The project's one reader of Delta logs, without Spark or a JVM.

Training workers, tracking, lineage and the lake's Spark readers resolve versions here:

- ``delta_log(table)``: commit and checkpoint files by version, from one listing of
  ``<table>/_delta_log``;
- ``latest_version(table)``: the highest committed version and its commit file;
- ``files_at(table, version)``: the data files of a version (last checkpoint + later commits),
  optionally of one partition; a version the log does not hold is a ``SnapshotError``;
- ``replay(table, version)``: a version's active add actions (with their stats), metaData and
  protocol, which the incremental ETL reads its context through (etl/lake.py, ``read_files``);
- ``recorded_version(spec, table)``: the version of a table the lake's feature spec records;
- ``snapshot_files(lake, split, spec)``: the files of one split of that version.

Atomic runs. The ETL commits each table in turn and writes the feature spec last, whole or not
at all: the spec is the run's commit marker. Readers read the versions the spec records (Delta
time travel: an overwrite keeps the older version's files until a VACUUM), never a table's
latest commit, so the commits of a run that failed or was killed before its spec are invisible:
readers see the previous complete run exactly, and the next complete run moves them all at once.

Locations are local folders or object-store URIs (etl/storage.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq

from etl import storage
from etl.spec import FeatureSpec
from etl.tables import DELTA_LOG_DIR, SAMPLES

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.parquet$")  # single-part checkpoints
SPLIT_COLUMN = "split"  # the samples partition column a snapshot is cut by
DAY_COLUMN = "day"  # the partition column within a split (impression day, yyyy-mm-dd)


class SnapshotError(RuntimeError):
    """The lake has no usable snapshot (no table, no recorded version, version not in the log)."""


def delta_log(table: str | Path) -> tuple[dict[int, str], dict[int, str]]:
    """(version -> commit file, version -> checkpoint file) of a Delta table, from one listing
    of its ``_delta_log`` (file names only); both empty when there is no log."""
    commits, checkpoints = {}, {}
    for entry in storage.list_dir(storage.join(table, DELTA_LOG_DIR)):
        if m := _COMMIT.match(_name(entry)):
            commits[int(m.group(1))] = entry
        elif m := _CHECKPOINT.match(_name(entry)):
            checkpoints[int(m.group(1))] = entry
    return commits, checkpoints


def latest_version(table: str | Path) -> tuple[int, str]:
    """Highest committed version of a Delta table and its commit file."""
    commits, _ = delta_log(table)
    if not commits:
        raise SnapshotError(f"no Delta table at {table} (no {DELTA_LOG_DIR} commits): run the ETL")
    return max(commits.items())


def files_at(
    table: str | Path, version: int | None = None, partition: dict[str, str] | None = None
) -> list[str]:
    """Data files of a Delta table at ``version`` (latest when None), read from its log; only
    those whose partition values include ``partition`` when given."""
    wanted = (partition or {}).items()
    return [
        storage.join(table, unquote(path))
        for path, values in _adds_at(table, version).items()
        if all(values.get(k) == v for k, v in wanted)
    ]


def _adds_at(table: str | Path, version: int | None) -> dict[str, dict[str, str]]:
    """Active files of a version -> their partition values."""
    return {path: _values(add) for path, add in replay(table, version).adds.items()}


@dataclass
class Replayed:
    """A version's state from its log: active add actions by path, its metaData and protocol."""

    version: int
    adds: dict[str, dict] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)

    def rows(self, partition: str | None = None, since: str | None = None) -> int | None:
        """Rows of the active files (their stats' numRecords), only those whose ``partition``
        value is >= ``since`` when given; None when a file has no stats."""
        total = 0
        for add in self.adds.values():
            if partition and since and str(_values(add).get(partition)) < since:
                continue
            stats = json.loads(add.get("stats") or "{}")
            if "numRecords" not in stats:
                return None
            total += int(stats["numRecords"])
        return total


def replay(table: str | Path, version: int | None) -> Replayed:
    """A version's state: last checkpoint at or before it, then every later commit up to it
    (all of which the log must hold)."""
    commits, checkpoints = delta_log(table)
    if not commits and not checkpoints:
        raise SnapshotError(f"no Delta table at {table} (no {DELTA_LOG_DIR} commits): run the ETL")
    target = max(commits | checkpoints) if version is None else int(version)
    start = max((v for v in checkpoints if v <= target), default=-1)
    gaps = [v for v in range(start + 1, target + 1) if v not in commits]
    if not 0 <= target <= max(commits | checkpoints) or gaps:
        held = f"{min(commits | checkpoints)}..{max(commits | checkpoints)}"
        raise SnapshotError(
            f"Delta version {target} of {table} is not in its log (it holds versions {held}"
            f"{f', without commit {gaps[0]}' if gaps else ''}): rerun the ETL"
        )
    state = Replayed(target)
    if start >= 0:
        fs, inner = storage.filesystem(checkpoints[start])
        columns = ["add", "metaData", "protocol"]
        for row in pq.read_table(inner, columns=columns, filesystem=fs).to_pylist():
            _apply(state, {k: v for k, v in row.items() if v})
    for v in range(start + 1, target + 1):
        for line in storage.read_text(commits[v]).splitlines():
            _apply(state, json.loads(line) if line.strip() else {})
    return state


def _apply(state: Replayed, action: dict) -> None:
    if "add" in action:
        state.adds[action["add"]["path"]] = action["add"]
    elif "remove" in action:
        state.adds.pop(action["remove"]["path"], None)
    elif "metaData" in action:
        state.metadata = action["metaData"]
    elif "protocol" in action:
        state.protocol = action["protocol"]


def _values(add: dict) -> dict[str, str]:
    """An add action's partition values (a JSON object in commits, a map in checkpoints)."""
    return dict(add.get("partitionValues") or {})


def recorded_version(spec: FeatureSpec, table: str) -> int:
    """The Delta version of ``table`` the feature spec records: what every reader reads."""
    recorded = spec.tables.get(table)
    if recorded is None:
        raise SnapshotError(f"the feature spec records no version of {table!r}: rerun the ETL")
    return int(recorded)


def snapshot_splits(
    lake: str | Path,
    spec: FeatureSpec | None = None,
    table: str = SAMPLES,
    last_train_days: int = 0,
) -> dict[str, list[str]]:
    """split -> sorted file URIs (file:///..., s3://...) of that split in the version of
    ``table`` the lake's feature spec records (one log replay for every split);
    ``last_train_days`` > 0 keeps only the train files of the latest that many train days."""
    spec = spec if spec is not None else FeatureSpec.load(lake)
    by_split = _split_uris(lake, spec, table, last_train_days)
    _check_present([f for uris in by_split.values() for f in uris], spec, lake, table)
    return by_split


def snapshot_files(
    lake: str | Path, split: str, spec: FeatureSpec | None = None, table: str = SAMPLES
) -> list[str]:
    """Sorted file URIs of ``split`` in the version of ``table`` the feature spec records."""
    spec = spec if spec is not None else FeatureSpec.load(lake)
    files = _split_uris(lake, spec, table).get(split)
    if not files:
        raise SnapshotError(
            f"Delta version {spec.tables[table]} of {storage.join(lake, table)} has no files of "
            f"{SPLIT_COLUMN}={split}"
        )
    _check_present(files, spec, lake, table)
    return files


def _split_uris(
    lake: str | Path, spec: FeatureSpec, table: str, last_train_days: int = 0
) -> dict[str, list[str]]:
    table_dir = storage.join(lake, table)
    adds = _adds_at(table_dir, recorded_version(spec, table))
    if last_train_days > 0:
        train = {
            path: v.get(DAY_COLUMN, "")
            for path, v in adds.items()
            if v.get(SPLIT_COLUMN) == "train"
        }
        old = set(sorted(set(train.values()))[:-last_train_days])
        adds = {path: v for path, v in adds.items() if train.get(path) not in old}
    by_split: dict[str, list[str]] = {}
    for path, values in adds.items():
        uri = storage.arrow_uri(storage.join(table_dir, unquote(path)))
        by_split.setdefault(values.get(SPLIT_COLUMN, ""), []).append(uri)
    return {split: sorted(uris) for split, uris in sorted(by_split.items())}


def _check_present(files: list[str], spec: FeatureSpec, lake: str | Path, table: str) -> None:
    """Local files of the version must exist (a VACUUM removes an old version's files)."""
    missing = [f for f in files if f.startswith("file://") and not storage.is_file(f)]
    if missing:
        raise SnapshotError(
            f"Delta version {spec.tables[table]} of {storage.join(lake, table)} lists missing "
            f"file {missing[0]} (vacuumed?): rerun the ETL"
        )


def _name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]
