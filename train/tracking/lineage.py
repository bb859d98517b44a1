"""Data lineage of a run: which Delta tables (path and version) it read, and a few real rows.

A run records every table it read as params and tags (``data.<table>.path`` / ``.version``,
``isrec.data.<table>.path`` / ``.version``: the record of truth, which promotion compares) and as
MLflow dataset inputs (``<table>@v<version>``, a Delta source) whose profile holds the path,
Delta version, row and file counts and whose schema is the table's (the UI's dataset drawer
shows both), plus the lake's feature spec as ``data/feature_spec.json``. ``read_sample_rows``
reads a few rows of the samples table at the version trained on, without Spark, through
``etl.delta_log`` (the project's one Delta-log reader): the logged model's input example.
Versions come from the run (the samples version it trained on) or else from the lake's feature
spec, never from a table's latest commit, which may belong to an unfinished ETL run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.data.dataset import Dataset
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from etl import storage
from etl.delta_log import SnapshotError, files_at
from etl.spec import FeatureSpec
from etl.tables import SAMPLES
from train.tracking.store import TAG

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableRead:
    name: str
    path: str
    version: int


def lineage_tables(
    lake: str | Path, versions: Mapping[str, int] | None, spec: FeatureSpec
) -> list[TableRead]:
    """Tables read: ``versions`` maps table -> Delta version; None falls back to the versions
    recorded in the feature spec. Paths are the tables' folders in ``lake``."""
    entries = dict(versions) if versions is not None else dict(spec.tables)
    return [
        TableRead(name, absolute(storage.join(lake, name)), int(version))
        for name, version in sorted(entries.items())
    ]


def log_lineage(lake: str | Path, reads: list[TableRead], spec: FeatureSpec) -> list[Dataset]:
    """Lineage params, tags, the spec and the dataset inputs; returns the datasets."""
    params = {"data.lake": absolute(lake), "data.source": spec.source}
    params |= {"data.max_len": spec.max_len, "data.fields": ",".join(f.name for f in spec.fields)}
    tags = {}
    for r in reads:
        params |= {f"data.{r.name}.path": r.path, f"data.{r.name}.version": r.version}
        tags |= {f"{TAG}data.{r.name}.path": r.path, f"{TAG}data.{r.name}.version": str(r.version)}
    mlflow.log_params(params)
    mlflow.set_tags(tags)
    mlflow.log_dict(json.loads(spec.to_json()), "data/feature_spec.json")
    try:
        return log_inputs(reads)
    except Exception as exc:  # lineage params/tags above are the record of truth
        log.warning("dataset inputs not logged: %s", exc)
        return []


def log_inputs(reads: list[TableRead]) -> list[Dataset]:
    """Each table read as an MLflow dataset input (``delta_dataset``); returns the datasets."""
    datasets = [delta_dataset(r) for r in reads]
    for r, dataset in zip(reads, datasets, strict=True):
        tags = {f"{TAG}table": r.name, f"{TAG}delta_version": str(r.version)}
        mlflow.log_input(dataset, context="training", tags=tags)
    return datasets


def delta_dataset(read: TableRead) -> MetaDataset:
    """A Delta table at a version as an MLflow dataset: profile (path, version, rows, files)
    and schema from the version's parquet footers (no Spark)."""
    digest = hashlib.sha1(f"{read.path}@{read.version}".encode()).hexdigest()[:16]
    source = DeltaDatasetSource(path=read.path, delta_table_version=read.version)
    profile: dict[str, Any] = {"path": read.path, "delta_version": read.version}
    schema = None
    try:
        files = files_at(read.path, read.version)
        rows, schema = _footers(files)
        profile |= {"num_rows": rows, "num_files": len(files)}
    except (OSError, ValueError, KeyError, SnapshotError) as exc:
        log.warning("no profile for %s@v%d: %s", read.path, read.version, exc)
    # the name carries the version: DeltaDatasetSource.to_dict drops a version of 0
    return ProfiledDataset(source, f"{read.name}@v{read.version}", digest, schema, profile)


class ProfiledDataset(MetaDataset):
    """A MetaDataset with a profile (MetaDataset has none)."""

    def __init__(self, source, name, digest, schema, profile: dict[str, Any]) -> None:  # noqa: ANN001
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def _footers(files: list[str]) -> tuple[int, Schema | None]:
    """Rows of the files and the first file's schema as an MLflow Schema."""
    rows, schema = 0, None
    for file in files:
        fs, inner = storage.filesystem(file)
        meta = pq.read_metadata(inner, filesystem=fs)
        rows += meta.num_rows
        if schema is None:
            arrow = meta.schema.to_arrow_schema()
            schema = Schema([ColSpec(_mlflow_type(f.type), f.name) for f in arrow])
    return rows, schema


def _mlflow_type(t: pa.DataType) -> DataType | Array:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return Array(_mlflow_type(t.value_type))
    if pa.types.is_boolean(t):
        return DataType.boolean
    if pa.types.is_integer(t):
        return DataType.integer if t.bit_width <= 32 else DataType.long
    if pa.types.is_floating(t):
        return DataType.float if t.bit_width <= 32 else DataType.double
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return DataType.binary
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return DataType.datetime
    return DataType.string


def absolute(path: str | Path) -> str:
    """An object-store URI as given, a local path resolved."""
    return str(path) if storage.is_uri(path) else str(Path(path).resolve())


def read_sample_rows(
    table: str | Path, spec: FeatureSpec, version: int | None = None, n: int = 5
) -> pd.DataFrame:
    """A few real rows of the samples table (model inputs only), without Spark."""
    cols = [f.name for f in spec.fields] + ([spec.length_field] if spec.sequence else [])
    for file in files_at(table, version):
        fs, inner = storage.filesystem(file)
        frame = pq.read_table(inner, columns=cols, filesystem=fs).to_pandas()
        if len(frame):
            return frame.head(n)
    raise FileNotFoundError(f"no rows in Delta table {table} (version {version})")


def samples_read(reads: list[TableRead]) -> TableRead | None:
    """The samples table among the tables read, if it is one of them."""
    return next((r for r in reads if r.name == SAMPLES), None)


def example_rows(reads: list[TableRead], spec: FeatureSpec) -> pd.DataFrame | None:
    """A few rows of the samples table read (None, with a warning, when unreadable)."""
    samples = samples_read(reads)
    if samples is None:
        return None
    try:
        return read_sample_rows(samples.path, spec, samples.version)
    except (OSError, ValueError, KeyError, SnapshotError) as exc:
        log.warning("no input example from %s: %s", samples.path, exc)
        return None
