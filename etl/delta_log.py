"""The project's one reader of Delta logs and symlink manifests, without Spark or a JVM.

Training workers, tracking and lineage read the lake through this module:

- ``delta_log(table)``: commit and checkpoint files by version, from one listing of
  ``<table>/_delta_log``;
- ``latest_version(table)``: the highest committed version and its commit file;
- ``files_at(table, version)``: the data files of a version (last checkpoint + later commits);
- ``snapshot_files(lake, split, spec)``: the files of one split in the current version, read
  from the symlink manifests the ETL generates after each samples write
  (``samples/_symlink_format_manifest/split=<s>/day=<d>/manifest``). It refuses a manifest
  older than the latest commit and a feature spec whose recorded version of the table is not the
  latest commit, so a reader never mixes two ETL runs.

Locations are local folders or object-store URIs (etl/storage.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq

from etl import storage
from etl.spec import FeatureSpec
from etl.tables import DELTA_LOG_DIR, MANIFEST_DIR, SAMPLES

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.parquet$")  # single-part checkpoints


class SnapshotError(RuntimeError):
    """The lake has no usable snapshot (missing or stale manifest, spec/table mismatch)."""


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


def files_at(table: str | Path, version: int | None = None) -> list[str]:
    """Data files of a Delta table at ``version`` (latest when None), read from its log."""
    commits, checkpoints = delta_log(table)
    last = max(commits) if commits else -1
    target = last if version is None else version
    start = max((v for v in checkpoints if v <= target), default=-1)
    active: dict[str, None] = {}
    if start >= 0:
        fs, inner = storage.filesystem(checkpoints[start])
        adds = pq.read_table(inner, columns=["add"], filesystem=fs).to_pandas()["add"].dropna()
        active = dict.fromkeys(a["path"] for a in adds)
    for v in sorted(c for c in commits if start < c <= target):
        for line in storage.read_text(commits[v]).splitlines():
            action = json.loads(line)
            if "add" in action:
                active[action["add"]["path"]] = None
            elif "remove" in action:
                active.pop(action["remove"]["path"], None)
    return [storage.join(table, unquote(p)) for p in active]


def snapshot_files(
    lake: str | Path, split: str, spec: FeatureSpec | None = None, table: str = SAMPLES
) -> list[str]:
    """Sorted file URIs (file:///..., s3://...) of ``split`` in the current version of ``table``."""
    table_dir = storage.join(lake, table)
    version, commit = latest_version(table_dir)
    spec = spec if spec is not None else FeatureSpec.load(lake)
    _check_spec_version(spec, table, version, table_dir)
    split_dir = storage.join(table_dir, MANIFEST_DIR, f"split={split}")
    listed = storage.list_files(split_dir, recursive=True)
    manifests = {m: mtime for m, mtime in sorted(listed.items()) if _name(m) == "manifest"}
    if not manifests:
        raise SnapshotError(
            f"no symlink manifest for split={split} under {storage.join(table_dir, MANIFEST_DIR)}: "
            'run DeltaTable.forPath(spark, path).generate("symlink_format_manifest")'
        )
    committed = storage.mtime_ns(commit)
    stale = [m for m, mtime in manifests.items() if mtime < committed]
    if stale:
        raise SnapshotError(
            f"symlink manifest {stale[0]} is older than Delta version {version} of {table_dir}: "
            "regenerate the manifest after the write"
        )
    files = sorted({storage.arrow_uri(_decode(line)) for m in manifests for line in _lines(m)})
    missing = [f for f in files if f.startswith("file://") and not storage.is_file(f)]
    if missing:
        raise SnapshotError(f"manifest of {table_dir} lists missing file {missing[0]}")
    return files


def _check_spec_version(spec: FeatureSpec, table: str, version: int, table_dir: str) -> None:
    recorded = spec.tables.get(table)
    if recorded is None:
        raise SnapshotError(f"the feature spec records no version of {table!r}: rerun the ETL")
    if recorded != version:
        raise SnapshotError(
            f"{table_dir} is at Delta version {version} but the feature spec records version "
            f"{recorded}: rerun the ETL so that table, manifest and spec agree"
        )


def _name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def _lines(location: str) -> list[str]:
    return [line.strip() for line in storage.read_text(location).splitlines() if line.strip()]


def _decode(uri: str) -> str:
    """Manifest entries are escaped Hadoop URIs (file:/x%20y, s3a://b/x%20y): unescape."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path)
    return f"{parsed.scheme}://{parsed.netloc}{unquote(parsed.path)}"
