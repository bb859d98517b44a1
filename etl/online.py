"""Online features: a raw ranking request -> exactly the rows the ETL writes to ``samples``.

No Spark, torch or Ray on this module's import path (numpy, pandas, pyarrow), so a serving
process loads it cheaply.

- :class:`FeatureBundle` is what a model ships: the feature spec (fields, ``max_len``,
  ``gap_seconds``, ``tz_offset_hours``), the vocabularies exactly as the lake's ``vocab`` table
  holds them and the ad table (``ads``: ad_id -> cate_id, campaign_id, customer_id, brand_id,
  price; for user_behavior the items -> their category), read from the lake without Spark at
  the Delta versions the spec records (``from_lake``), and saved as plain files (``save`` /
  ``load``: feature_spec.json, vocab.parquet, ads.parquet) for MLflow artifacts.
- :class:`RankRequest` is one request: user id, time (Unix seconds), slot (pid), the candidate
  ad ids, the user's recent behaviors and the profile as published in user_profile.csv.
- :func:`encode_request` returns the encoded columns of one row per candidate (sequences as
  ``(n, max_len)`` matrices); :func:`request_rows` the same as a ``samples``-like DataFrame.

The candidate x history cross features (``x_cate_count``, ...) come from
``features.cross_features`` on the request's history matrices, the numpy rule that etl/cross.py
writes in Spark array functions.

Every feature comes from the functions of etl/features.py that the ETL's per-user pass calls,
so the rows are those of ``samples`` field by field (tests/test_online_features.py rebuilds
every test impression of a generated lake and of the real UserBehavior slice).

Behaviors may come in any order: they are sorted as the ETL sorts them (time, then the funnel
order pv, cart, fav, buy, then item, cate, brand with nulls first); behaviors at or after the
request time are ignored (``strict=True`` rejects both instead, with a ValueError). For the
session features, pass at least the behaviors of the current session: a session's start is
found from the behaviors given. Bad input raises ValueError naming the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl import storage
from etl.delta_log import files_at
from etl.features import (
    BTAGS,
    FIXED_VOCAB_SIZES,
    IMPRESSION_FEATURES,
    SPARSE_FIELDS,
    USER_PROFILE_FIELDS,
    Vocabulary,
    attach_session,
    btag_code,
    btag_rank,
    cross_features,
    cross_names,
    history,
    impression_features,
    int_ids,
    run_bounds,
    session_progress,
    session_starts,
)
from etl.formats import TAOBAO_PROFILE_COLUMNS
from etl.spec import FeatureSpec
from etl.tables import AD_TABLE, VOCAB

SPEC_FILE = "feature_spec.json"
VOCAB_FILE = "vocab.parquet"
ADS_FILE = "ads.parquet"
VOCAB_COLUMNS = ("vocab", "raw", "id", "count")
AD_COLUMNS = ("ad_id", "cate_id", "campaign_id", "customer_id", "brand_id", "price")
EVENT_KEYS = ("time", "btag", "cate", "brand", "item")  # a behavior of a request
EVENT_COLUMNS = {"item": "item_id", "cate": "cate_id", "brand": "brand_id"}  # key -> raw column
HISTORY_SOURCES = {"hist_item": "item", "hist_cate": "cate", "hist_brand": "brand"}
# user_profile.csv column (or samples field) -> samples field
PROFILE_KEYS = {
    **dict(zip(TAOBAO_PROFILE_COLUMNS, USER_PROFILE_FIELDS, strict=True)),
    **{name: name for name in USER_PROFILE_FIELDS},
}
SCALAR_CODES = 100_000  # memoised (field, raw value) codes a bundle keeps (then starts anew)


@dataclass(frozen=True)
class RankRequest:
    """One ranking request in raw values (the keys of the serving format)."""

    user_id: int
    time: int  # Unix seconds of the impression
    candidates: Sequence[int] | np.ndarray  # ad ids (items for user_behavior)
    pid: str | None = None  # the slot, e.g. "430548_1007"
    # behaviors: a list of {time, btag, cate, brand[, item]}, a mapping of such columns, or a
    # DataFrame with those columns; null cate/brand/item as None, NaN or ""
    events: Any = ()
    profile: Mapping[str, Any] | None = None  # user_profile.csv column -> value (absent = null)


class FeatureBundle:
    """Feature spec, vocabularies and ad table of a lake: everything that encodes a request."""

    def __init__(self, spec: FeatureSpec, vocab: pd.DataFrame, ads: pd.DataFrame) -> None:
        if spec.gap_seconds is None or spec.tz_offset_hours is None:
            raise ValueError(
                f"the feature spec of source {spec.source!r} records no gap_seconds and "
                "tz_offset_hours (a lake without sessions, or one written before they were "
                "recorded): rerun jobs/etl.py"
            )
        self.spec = spec
        self.vocab = vocab.loc[:, list(VOCAB_COLUMNS)].reset_index(drop=True)
        self.ads = ads.loc[:, list(AD_COLUMNS)].reset_index(drop=True)
        self.vocabularies = self._vocabularies()
        names = {f.name for f in spec.fields}
        self.fields = {f.name: f for f in spec.fields}
        ad_side = set(AD_COLUMNS) - {"ad_id"}
        self._ad_source = {f: c for f, c, _ in SPARSE_FIELDS if c in ad_side and f in names}
        self._events = {h: k for h, k in HISTORY_SOURCES.items() if h in names}
        ad_ids, null = int_ids(self.ads["ad_id"], "ads.ad_id")
        if null.any():
            raise ValueError("the ad table holds a null ad_id")
        order = np.argsort(ad_ids, kind="stable")
        self._ad_ids = ad_ids[order]
        self._ad_codes = {
            f: self.vocabularies[self.fields[f].vocab].encode(self.ads[column])[order]
            for f, column in self._ad_source.items()
        }
        self._ad_price = self.ads["price"].to_numpy(np.float64, na_value=np.nan)[order]
        self._scalar_codes: dict[tuple[str, type, Any], int] = {}

    def _vocabularies(self) -> dict[str, Vocabulary]:
        fixed = set(FIXED_VOCAB_SIZES)
        learned = {f.vocab for f in self.spec.fields if f.vocab and f.vocab not in fixed}
        groups = {name: part for name, part in self.vocab.groupby("vocab", sort=False)}
        out = {}
        for name in sorted(learned):
            part = groups.get(name, self.vocab.iloc[:0])
            out[name] = Vocabulary(name, part["raw"].to_numpy(object), part["id"].to_numpy())
        return out

    @classmethod
    def from_lake(cls, lake: str | Path) -> FeatureBundle:
        """The bundle of a lake's last ETL run: its spec and the vocab and ads tables at the
        Delta versions the spec records (read with pyarrow from the Delta log)."""
        spec = FeatureSpec.load(lake)
        tables = {}
        for name, columns in ((VOCAB, VOCAB_COLUMNS), (AD_TABLE, AD_COLUMNS)):
            version = spec.tables.get(name)
            if version is None:
                raise ValueError(f"the feature spec of {lake} records no {name!r} table: rerun ETL")
            tables[name] = _read_delta(storage.join(lake, name), version, columns)
        return cls(spec, tables[VOCAB], tables[AD_TABLE])

    def save(self, folder: str | Path) -> Path:
        """Write the bundle as plain files into ``folder`` (created); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(self.spec.to_json())
        pq.write_table(pa.Table.from_pandas(self.vocab, preserve_index=False), folder / VOCAB_FILE)
        pq.write_table(pa.Table.from_pandas(self.ads, preserve_index=False), folder / ADS_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureBundle:
        folder = Path(folder)
        spec = FeatureSpec.from_json((folder / SPEC_FILE).read_text())
        vocab = _to_pandas(pq.read_table(folder / VOCAB_FILE))
        return cls(spec, vocab, _to_pandas(pq.read_table(folder / ADS_FILE)))

    def scalar_code(self, name: str, value: Any) -> int:
        """The vocabulary id of one raw value of field ``name`` (``Vocabulary.encode``),
        memoised: a request's user, slot and profile values recur across requests, and one
        lookup through ``encode`` costs ~40 us. The key holds the type (1 and True encode
        differently); a value ``encode`` refuses raises its ValueError and is not kept."""
        key: tuple[str, type, Any] | None = (name, type(value), value)
        try:
            return self._scalar_codes[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value: encode names what is wrong with it
            key = None
        values = np.empty(1, dtype=object)
        values[0] = value
        code = int(self.vocabularies[self.fields[name].vocab].encode(values)[0])
        if key is not None:
            if len(self._scalar_codes) >= SCALAR_CODES:
                self._scalar_codes.clear()
            self._scalar_codes[key] = code
        return code

    def ad_rows(self, ad_ids: np.ndarray) -> np.ndarray:
        """Row of each ad in the (sorted) ad table, -1 for an ad it does not hold."""
        if len(self._ad_ids) == 0:
            return np.full(len(ad_ids), -1)
        pos = np.minimum(np.searchsorted(self._ad_ids, ad_ids), len(self._ad_ids) - 1)
        return np.where(self._ad_ids[pos] == ad_ids, pos, -1)


def _read_delta(table: str, version: int, columns: tuple[str, ...]) -> pd.DataFrame:
    parts = []
    for path in files_at(table, version):
        fs, inner = storage.filesystem(path)
        parts.append(pq.read_table(inner, filesystem=fs, columns=list(columns)))
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    return _to_pandas(pa.concat_tables(parts))


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """Exact ids: long columns with nulls as pandas Int64, not float64."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


@dataclass
class _Events:
    """A request's behaviors before its time, in the ETL's order."""

    ts: np.ndarray
    btag: np.ndarray
    ids: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> ids, null


def encode_request(
    bundle: FeatureBundle, request: RankRequest, strict: bool = False, first_id: int = 0
) -> dict[str, np.ndarray]:
    """The encoded columns of one row per candidate, in candidate order: ``impression_id``
    (``first_id`` on), ``user_key``, ``ts``, every field of the spec (sparse int32, dense
    float32, sequence int32 ``(n, max_len)``) and ``hist_len``."""
    spec = bundle.spec
    ts = _scalar_id(request.time, "time")
    user = _scalar_id(request.user_id, "user_id")
    ads, null = int_ids(request.candidates, "candidates")
    if null.any():
        raise ValueError("candidates: a candidate ad id is null")
    n = len(ads)
    if n == 0:
        raise ValueError("candidates: the slate is empty")
    ev = _events(request.events, ts, strict)
    imp_ts, none = np.array([ts], np.int64), np.zeros(1, np.int64)
    m = np.array([len(ev.ts)])
    session_first, _ = run_bounds(session_starts(np.zeros(len(ev.ts)), ev.ts, spec.gap_seconds))
    session_idx = attach_session(ev.ts, imp_ts, m, none, m, spec.gap_seconds)
    progress, elapsed = session_progress(ev.ts, imp_ts, m, session_idx, session_first)
    codes = {h: _event_codes(bundle, h, ev.ids[k]) for h, k in bundle._events.items()}
    if "hist_btag" in bundle.fields:
        codes["hist_btag"] = btag_code(ev.btag)
    matrices, hist_len = history(codes, ev.ts, imp_ts, m, none, spec.max_len)
    rows = bundle.ad_rows(ads)
    price = np.where(rows >= 0, bundle._ad_price[np.maximum(rows, 0)], np.nan)
    per_row = impression_features(
        np.full(n, ts), price, np.repeat(progress, n), np.repeat(elapsed, n), spec.tz_offset_hours
    )
    scalars = _request_ids(bundle, request, user)
    out: dict[str, np.ndarray] = {
        "impression_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "user_key": np.full(n, user, np.int64),
        "ts": np.full(n, ts, np.int64),
    }
    crosses = cross_names(set(bundle.fields))
    for f in spec.fields:
        if f.name in crosses:
            continue  # from the candidate's other fields, below
        if f.name in IMPRESSION_FEATURES:
            out[f.name] = per_row[f.name]
        elif f.kind == "sequence":
            out[f.name] = np.repeat(matrices[f.name], n, axis=0)
        elif f.name == "ad":
            out[f.name] = bundle.vocabularies[f.vocab].encode(ads)
        elif f.name in bundle._ad_codes:
            out[f.name] = np.where(rows >= 0, bundle._ad_codes[f.name][np.maximum(rows, 0)], 0)
        elif f.name in scalars:
            out[f.name] = np.full(n, scalars[f.name], np.int32)
        else:
            raise ValueError(f"field {f.name!r} of the spec has no online definition")
        out[f.name] = out[f.name].astype(np.float32 if f.kind == "dense" else np.int32)
    names = [f.name for f in spec.fields if f.name in crosses]
    out.update(cross_features(out, matrices, hist_len, names))
    out = {k: out[k] for k in ("impression_id", "user_key", "ts", *bundle.fields)}
    out[spec.length_field] = np.repeat(hist_len, n).astype(np.int32)
    return out


def request_rows(
    bundle: FeatureBundle, request: RankRequest, strict: bool = False, first_id: int = 0
) -> pd.DataFrame:
    """:func:`encode_request` as ``samples`` rows: sequences as one int32 array per row."""
    columns = encode_request(bundle, request, strict, first_id)
    return pd.DataFrame({k: list(v) if v.ndim == 2 else v for k, v in columns.items()})


def _scalar_id(value: Any, what: str) -> int:
    ids, null = int_ids(np.array([value], dtype=object), what)
    if null[0]:
        raise ValueError(f"{what}: missing")
    return int(ids[0])


def _request_ids(bundle: FeatureBundle, request: RankRequest, user: int) -> dict[str, int]:
    """Ids of the fields that are one value per request: user, slot and profile."""
    profile = dict(request.profile or {})
    unknown = sorted(k for k in profile if str(k).strip() not in PROFILE_KEYS)
    if unknown:
        raise ValueError(f"profile: unknown field {unknown[0]!r}")
    values = {PROFILE_KEYS[str(k).strip()]: v for k, v in profile.items()}
    out = {}
    for name in bundle.fields:
        if name == "user":
            out[name] = bundle.scalar_code(name, user)
        elif name == "slot":
            out[name] = bundle.scalar_code(name, request.pid)
        elif name in USER_PROFILE_FIELDS:
            out[name] = bundle.scalar_code(name, values.get(name))
    return out


def _event_codes(bundle: FeatureBundle, hist: str, ids: tuple[np.ndarray, np.ndarray]):
    vocabulary = bundle.vocabularies[bundle.fields[hist].vocab]
    values, null = ids
    return np.where(null, 0, vocabulary.encode(values)).astype(np.int32)


def _events(events: Any, ts: int, strict: bool) -> _Events:
    columns = _event_columns(events)
    times, null = int_ids(columns["time"], "events.time")
    if null.any():
        raise ValueError("events.time: a behavior has no time")
    btags = np.asarray(columns["btag"], dtype=object).reshape(-1)
    bad = ~np.isin(btags, np.array(BTAGS, dtype=object))
    if bad.any():
        raise ValueError(f"events.btag: {btags[bad][0]!r} is not one of {', '.join(BTAGS)}")
    ids = {k: int_ids(columns[k], f"events.{k}") for k in EVENT_COLUMNS}
    if strict and (np.any(np.diff(times) < 0) or np.any(times > ts)):
        raise ValueError("events: out of time order or later than the request time")
    past = times < ts  # nothing at or after the impression is a feature
    keys = [ids[k][0][past] for k in ("brand", "cate", "item")]
    notnull = [~ids[k][1][past] for k in ("brand", "cate", "item")]
    sort_keys = [keys[0], notnull[0], keys[1], notnull[1], keys[2], notnull[2]]
    order = np.lexsort([*sort_keys, btag_rank(btags[past]), times[past]])
    return _Events(
        ts=times[past][order],
        btag=btags[past][order],
        ids={k: (v[past][order], n[past][order]) for k, (v, n) in ids.items()},
    )


def _event_columns(events: Any) -> dict[str, Any]:
    """Behaviors as columns (EVENT_KEYS; missing cate/brand/item columns are null)."""
    if events is None:
        events = ()
    if isinstance(events, pd.DataFrame):
        columns = {c: events[c].to_numpy() for c in events.columns}
    elif isinstance(events, Mapping):
        columns = dict(events)
    else:
        rows = list(events)
        if not all(isinstance(e, Mapping) for e in rows):
            raise ValueError("events: each behavior must be a mapping of time, btag, cate, brand")
        columns = {k: [e.get(k) for e in rows] for k in EVENT_KEYS if any(k in e for e in rows)}
        extra = {k for e in rows for k in e} - set(EVENT_KEYS)
        if extra:
            raise ValueError(f"events: unknown key {sorted(extra)[0]!r}")
        if rows and any("time" not in e or "btag" not in e for e in rows):
            raise ValueError("events: a behavior lacks time or btag")
    unknown = set(columns) - set(EVENT_KEYS)
    if unknown:
        raise ValueError(f"events: unknown column {sorted(unknown)[0]!r}")
    lengths = {len(np.atleast_1d(np.asarray(v, dtype=object))) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError("events: columns of different lengths")
    n = lengths.pop() if lengths else 0
    if n and not {"time", "btag"} <= set(columns):
        raise ValueError("events: time and btag are required")
    empty = np.array([None] * n, dtype=object)
    return {k: columns.get(k, empty if k in EVENT_COLUMNS else np.zeros(0)) for k in EVENT_KEYS}
