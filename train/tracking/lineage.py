"""Data lineage of a run: which Delta tables (path and version) it read, and a few real rows.

A run records every table it read as params and tags (``data.<table>.path`` / ``.version``,
``isrec.data.<table>.path`` / ``.version``: the record of truth, which promotion compares) and as
MLflow dataset inputs (``<table>@v<version>``, a Delta source), plus the lake's feature spec as
``data/feature_spec.json``. ``read_sample_rows`` reads a few rows of the samples table at the
version trained on, without Spark, through ``etl.delta_log`` (the project's one Delta-log reader):
the logged model's input example.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from etl import storage
from etl.delta_log import files_at
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


def log_lineage(lake: str | Path, reads: list[TableRead], spec: FeatureSpec) -> None:
    params = {"data.lake": absolute(lake), "data.source": spec.source}
    params |= {"data.max_len": spec.max_len, "data.fields": ",".join(f.name for f in spec.fields)}
    tags = {}
    for r in reads:
        params |= {f"data.{r.name}.path": r.path, f"data.{r.name}.version": r.version}
        tags |= {f"{TAG}data.{r.name}.path": r.path, f"{TAG}data.{r.name}.version": str(r.version)}
    mlflow.log_params(params)
    mlflow.set_tags(tags)
    mlflow.log_dict(json.loads(spec.to_json()), "data/feature_spec.json")
    with contextlib.suppress(Exception):  # lineage params/tags above are the record of truth
        log_inputs(reads)


def log_inputs(reads: list[TableRead]) -> None:
    """Each table read as an MLflow dataset input (a Delta source at its version)."""
    for r in reads:
        digest = hashlib.sha1(f"{r.path}@{r.version}".encode()).hexdigest()[:16]
        source = DeltaDatasetSource(path=r.path, delta_table_version=r.version)
        # the name carries the version: DeltaDatasetSource.to_dict drops a version of 0
        dataset = MetaDataset(source=source, name=f"{r.name}@v{r.version}", digest=digest)
        tags = {f"{TAG}table": r.name, f"{TAG}delta_version": str(r.version)}
        mlflow.log_input(dataset, context="training", tags=tags)


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
    except (OSError, ValueError, KeyError) as exc:
        log.warning("no input example from %s: %s", samples.path, exc)
        return None
