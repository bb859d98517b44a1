"""Feature spec: what the samples table holds, written by the ETL and read by every model.

Pure Python (no pyspark import) so that training workers can load it without a JVM.
Fields that share a ``vocab`` share one embedding table (e.g. ``cate`` and ``hist_cate``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from etl import storage

SPEC_FILE = "_feature_spec.json"
FieldKind = Literal["sparse", "dense", "sequence"]


@dataclass(frozen=True)
class FieldSpec:
    name: str  # column name in samples
    kind: FieldKind  # sparse: int id (B,); dense: float (B,); sequence: int ids (B, max_len)
    vocab: str | None = None  # vocabulary name; None for dense
    vocab_size: int = 0  # ids are in [0, vocab_size); 0 = padding, 1 = unknown


@dataclass
class FeatureSpec:
    source: str
    max_len: int
    fields: list[FieldSpec]
    labels: list[str] = field(default_factory=lambda: ["click", "conversion", "n_future_views"])
    length_field: str = "hist_len"  # int column: number of valid sequence entries (<= max_len)
    key_fields: list[str] = field(default_factory=lambda: ["impression_id", "user_key"])
    splits: dict[str, list[str]] = field(default_factory=dict)  # split -> days (ISO dates)
    tables: dict[str, int] = field(default_factory=dict)  # table name -> Delta version written
    # What defines the session features (None in specs written before they were recorded):
    gap_seconds: int | None = None  # a longer gap between two behaviors starts a new session
    tz_offset_hours: int | None = None  # hour, weekday and days in UTC+offset
    # Recorded since incremental runs (None / empty in older specs, which load unchanged):
    last_day: str | None = None  # the latest day (ISO) of the lake's events or impressions
    vocab_version: int | None = None  # 1 after a full run, +1 per run that adds vocab ids
    vocabulary_sizes: dict[str, int] = field(default_factory=dict)  # vocab table: max id + 1
    options: dict = field(default_factory=dict)  # EtlConfig.table_options() of the runs

    @property
    def sparse(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "sparse"]

    @property
    def dense(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "dense"]

    @property
    def sequence(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "sequence"]

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """One entry per shared vocabulary (largest size seen among its fields)."""
        sizes: dict[str, int] = {}
        for f in self.fields:
            if f.vocab is not None:
                sizes[f.vocab] = max(sizes.get(f.vocab, 0), f.vocab_size)
        return sizes

    def columns(self) -> list[str]:
        """Every samples column a training batch needs."""
        cols = [f.name for f in self.fields] + list(self.labels) + list(self.key_fields)
        if self.sequence:
            cols.append(self.length_field)
        return cols

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        raw["fields"] = [FieldSpec(**f) for f in raw["fields"]]
        return cls(**raw)

    def save(self, lake: str | Path) -> str:
        """Write the spec beside the tables, whole or not at all (see ``storage.write_text``)."""
        return storage.write_text(storage.join(lake, SPEC_FILE), self.to_json())

    @classmethod
    def load(cls, lake: str | Path) -> FeatureSpec:
        path = storage.join(lake, SPEC_FILE)
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no feature spec at {path}: run jobs/etl.py on this lake first"
            ) from None
        return cls.from_json(text)
