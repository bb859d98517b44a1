"""The trained recommender as an MLflow pyfunc model (batch scoring, serving, notebooks).

The logged model is self-contained: its artifacts are the model's ``state_dict``, the feature
spec (JSON) and ``model.json`` (model name, resolved params, default ranking beta); its code
paths carry the ``train`` and ``etl`` packages. ``load_context`` rebuilds the network with
``train.models.build_model`` in whatever process loads it: nothing from the training process is
pickled except this module's class, which is importable from the shipped code.

Two inputs. Raw ranking requests (train/serving.py: ``user_id``, ``time``, ``pid``,
``candidates``, optional ``events`` and ``profile``; params ``policy``, ``beta``, ``k``, ``seed``)
are encoded by the feature bundle the model ships (etl/online.py: the lake's vocabularies and ad
table) and return, per request, the ranked candidates with their scores and the propensity of
the policy's choice. Encoded rows (batch scoring of ``samples``) are
a pandas DataFrame with one column per spec field: sparse -> int ids, dense -> floats,
sequence -> list of int ids of length <= max_len (right-padded with 0 here; longer is an error).
``hist_len`` is optional: when absent it is the number of nonzero entries of the sequences.
Output: a DataFrame with pctr, pcvr, pctcvr, expected_views and the ranking score
``pctcvr + beta * expected_views`` (beta from ``params={"beta": ...}`` or the logged default).
Bad input raises ``MlflowException`` with INVALID_PARAMETER_VALUE (HTTP 400 when served).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import (
    AnyType,
    ColSpec,
    DataType,
    ParamSchema,
    ParamSpec,
    Schema,
)

from etl.project import PROJECT_ROOT
from etl.spec import FeatureSpec
from train import serving
from train.tracking.store import TAG

OUTPUTS = ("pctr", "pcvr", "pctcvr", "expected_views", "score")
STATE_FILE, SPEC_ARTIFACT, META_FILE = "state_dict.pt", "feature_spec.json", "model.json"
BUNDLE_ARTIFACT = "feature_bundle"
PREDICT_CHUNK = 8192


def invalid(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


# --- input validation: pandas -> model batch -----------------------------------------------
def to_batch(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Validate ``frame`` against the spec and return numpy arrays in the model's layout."""
    if not isinstance(frame, pd.DataFrame):
        raise invalid(f"expected a DataFrame of the spec's fields, got {type(frame).__name__}")
    missing = [f.name for f in spec.fields if f.name not in frame.columns]
    if missing:
        raise invalid(f"missing input fields: {missing}")
    batch: dict[str, np.ndarray] = {}
    for f in spec.fields:
        col = frame[f.name]
        if f.kind == "sparse":
            batch[f.name] = _ids(f.name, col, f.vocab_size)
        elif f.kind == "dense":
            batch[f.name] = _floats(f.name, col)
        else:
            batch[f.name] = _sequences(f.name, col, spec.max_len, f.vocab_size)
    if spec.sequence:
        batch[spec.length_field] = _lengths(frame, spec, batch)
    return batch


def _ids(name: str, col: pd.Series, vocab_size: int) -> np.ndarray:
    values = _numeric(name, col)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise invalid(f"field {name!r}: ids must be integers (no nulls or fractions)")
    ids = values.astype(np.int64)
    _check_range(name, ids, vocab_size)
    return ids


def _check_range(name: str, ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or (vocab_size > 0 and ids.max() >= vocab_size)):
        raise invalid(
            f"field {name!r}: ids must be in [0, {vocab_size}) (0 = padding, 1 = unknown); "
            f"got values in [{ids.min()}, {ids.max()}]"
        )


def _floats(name: str, col: pd.Series) -> np.ndarray:
    values = _numeric(name, col)
    if not np.all(np.isfinite(values)):
        raise invalid(f"field {name!r}: values must be finite numbers (no nulls, NaN or inf)")
    return values.astype(np.float32)


def _numeric(name: str, col: pd.Series) -> np.ndarray:
    if col.dtype == bool or not (pd.api.types.is_numeric_dtype(col) or col.map(_is_number).all()):
        raise invalid(f"field {name!r}: expected numbers, got dtype {col.dtype}")
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _sequences(name: str, col: pd.Series, max_len: int, vocab_size: int) -> np.ndarray:
    out = np.zeros((len(col), max_len), dtype=np.int64)
    for i, value in enumerate(col):
        seq = _sequence(name, i, value)
        if len(seq) > max_len:
            raise invalid(
                f"field {name!r}: row {i} has a sequence of length {len(seq)}, "
                f"longer than max_len={max_len}"
            )
        out[i, : len(seq)] = seq
    _check_range(name, out, vocab_size)
    return out


def _sequence(name: str, row: int, value: Any) -> np.ndarray:
    if value is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | np.ndarray):
        raise invalid(f"field {name!r}: row {row} must be a list of int ids, got {value!r}")
    arr = np.asarray(value)
    integral = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    )
    if arr.ndim != 1 or (arr.size and not integral):
        raise invalid(f"field {name!r}: row {row} must be a flat list of int ids")
    return arr.astype(np.int64)


def _lengths(frame: pd.DataFrame, spec: FeatureSpec, batch: dict[str, np.ndarray]) -> np.ndarray:
    derived = np.max([(batch[f.name] != 0).sum(axis=1) for f in spec.sequence], axis=0)
    if spec.length_field not in frame.columns:
        return derived.astype(np.int64)
    given = _numeric(spec.length_field, frame[spec.length_field])
    if np.isnan(given).any():  # a partly missing column: fill the gaps
        given = np.where(np.isnan(given), derived, given)
    lengths = given.astype(np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > spec.max_len):
        raise invalid(f"field {spec.length_field!r}: must be in [0, {spec.max_len}]")
    return lengths


# --- the pyfunc model ------------------------------------------------------------------------
class IsrecModel(mlflow.pyfunc.PythonModel):
    """Rebuilds the network from the logged artifacts; see the module docstring."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from train.models import build_model

        self.spec = FeatureSpec.from_json(Path(context.artifacts["feature_spec"]).read_text())
        meta = json.loads(Path(context.artifacts["model_meta"]).read_text())
        self.model_name: str = meta["name"]
        self.beta = float(meta.get("beta", 0.0))
        self.model = build_model(self.model_name, self.spec, meta["params"])
        state = torch.load(context.artifacts["state_dict"], map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        self.bundle = None
        if BUNDLE_ARTIFACT in context.artifacts:
            from etl.online import FeatureBundle

            self.bundle = FeatureBundle.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame | list[dict[str, Any]]:
        if isinstance(model_input, pd.DataFrame) and serving.is_raw_request_frame(model_input):
            return self._rank(model_input, params)
        beta = (params or {}).get("beta")
        beta = self.beta if beta is None else float(beta)
        batch = to_batch(model_input, self.spec)
        n = len(model_input)
        parts = [
            self._predict_chunk(batch, start, min(start + PREDICT_CHUNK, n), beta)
            for start in range(0, n, PREDICT_CHUNK)
        ]
        if not parts:
            return pd.DataFrame({c: np.zeros(0) for c in OUTPUTS})
        return pd.concat(parts, ignore_index=True)

    def _rank(self, frame: pd.DataFrame, params: dict[str, Any] | None) -> list[dict[str, Any]]:
        if self.bundle is None:
            raise invalid("this model was logged without a feature bundle: send encoded rows")
        try:
            requests = serving.parse_requests(frame)
            return serving.rank(
                requests, serving.parse_params(params), serving.SlateScorer(self.model, self.bundle)
            )
        except serving.BadRequest as exc:
            raise invalid(str(exc)) from None

    def _predict_chunk(
        self, batch: dict[str, np.ndarray], start: int, stop: int, beta: float
    ) -> pd.DataFrame:
        import torch

        from train.policy import ranking_score

        tensors = {k: torch.from_numpy(v[start:stop]) for k, v in batch.items()}
        with torch.inference_mode():
            out = self.model(tensors)
            out["score"] = ranking_score(out, beta)
        return pd.DataFrame({c: out[c].double().numpy() for c in OUTPUTS})


# --- signature, input example, logging -----------------------------------------------------
def signature(spec: FeatureSpec, raw_requests: bool = False) -> ModelSignature:
    """Explicit column signature: sparse -> long, dense -> double, sequence -> Any.

    Sequence columns are typed Any because MLflow enforces an array of longs element by element
    in Python (two thirds of ``predict`` on encoded rows, bench_serving.py); ``to_batch`` checks
    them (flat lists of integer ids within the vocabulary, at most ``max_len``) with numpy.
    With ``raw_requests`` (the model ships a feature bundle) every encoded column is optional and
    the raw request columns are added, so one model takes either form."""
    cols = []
    for f in spec.fields:
        dtype = {"sparse": DataType.long, "dense": DataType.double}.get(f.kind, AnyType())
        cols.append(ColSpec(dtype, f.name, not raw_requests))
    if spec.sequence:
        cols.append(ColSpec(DataType.long, spec.length_field, required=False))
    if raw_requests:
        cols += _request_columns()
    outputs = Schema([ColSpec(DataType.double, c) for c in OUTPUTS])
    params = ParamSchema(
        [
            ParamSpec("beta", DataType.double, None),  # None: the model's logged beta
            ParamSpec("policy", DataType.string, None),  # None: greedy
            ParamSpec("k", DataType.long, None),  # None: every candidate
            ParamSpec("seed", DataType.long, None),
        ]
    )
    return ModelSignature(inputs=Schema(cols), outputs=outputs, params=params)


def _request_columns() -> list[ColSpec]:
    # ``candidates``, ``events`` and ``profile`` are typed Any: MLflow's enforcement of a list of
    # objects builds a pandas Series per property of every event (about 12 ms for 50 events,
    # bench_serving.py), that of a map one per key, that of an array of longs checks each element
    # in Python (~2 ms for 100 ids); train/serving.py checks all three itself, the reason in the
    # 400.
    return [
        ColSpec(DataType.long, "user_id", required=False),
        ColSpec(DataType.long, "time", required=False),
        ColSpec(DataType.string, "pid", required=False),
        ColSpec(AnyType(), "candidates", required=False),
        ColSpec(AnyType(), "events", required=False),
        ColSpec(AnyType(), "profile", required=False),
    ]


def input_example(rows: pd.DataFrame, spec: FeatureSpec, n: int = 3) -> pd.DataFrame:
    """The first ``n`` rows of real samples, restricted to the model's inputs, JSON-friendly."""
    cols = [f.name for f in spec.fields]
    if spec.sequence and spec.length_field in rows.columns:
        cols.append(spec.length_field)
    example = rows[cols].head(n).reset_index(drop=True).copy()
    for f in spec.fields:
        if f.kind == "sequence":
            example[f.name] = [[int(v) for v in seq] for seq in example[f.name]]
        elif f.kind == "sparse":
            example[f.name] = example[f.name].astype(np.int64)
        else:
            example[f.name] = example[f.name].astype(np.float64)
    if spec.length_field in example.columns:
        example[spec.length_field] = example[spec.length_field].astype(np.int64)
    return example


def code_paths(dest: Path) -> list[str]:
    """Copies of the ``train`` and ``etl`` packages (without caches) to ship with the model."""
    paths = []
    for pkg in ("train", "etl"):
        target = dest / pkg
        shutil.copytree(
            PROJECT_ROOT / pkg, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        paths.append(str(target))
    return paths


def pip_requirements() -> list[str]:
    """Pinned from the running environment (no slow requirement inference at log time)."""
    from importlib.metadata import version

    pkgs = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "cloudpickle")
    return [f"{p}=={version(p).split('+')[0]}" for p in pkgs]


def write_artifacts(
    dest: Path,
    model_name: str,
    model_params: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    spec: FeatureSpec,
    beta: float,
    bundle: Any = None,
) -> dict[str, str]:
    """The model's artifacts in ``dest``; ``bundle`` (etl.online.FeatureBundle) enables raw
    requests."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict), dest / STATE_FILE)
    (dest / SPEC_ARTIFACT).write_text(spec.to_json())
    meta = {"name": model_name, "params": dict(model_params), "beta": float(beta)}
    (dest / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=list))
    artifacts = {
        "state_dict": str(dest / STATE_FILE),
        "feature_spec": str(dest / SPEC_ARTIFACT),
        "model_meta": str(dest / META_FILE),
    }
    if bundle is not None:
        artifacts[BUNDLE_ARTIFACT] = str(bundle.save(dest / BUNDLE_ARTIFACT))
    return artifacts


def log_pyfunc_model(
    model_name: str,
    model_params: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    spec: FeatureSpec,
    example: pd.DataFrame | None = None,
    beta: float = 0.0,
    name: str = "model",
    bundle: Any = None,
) -> ModelInfo:
    """Log the model into the active run; returns MLflow's ModelInfo (``model_uri``...)."""
    with tempfile.TemporaryDirectory(prefix="isrec-pyfunc-") as tmp:
        artifacts = write_artifacts(
            Path(tmp) / "artifacts", model_name, model_params, state_dict, spec, beta, bundle
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=IsrecModel(),
            artifacts=artifacts,
            code_paths=code_paths(Path(tmp) / "code"),
            signature=signature(spec, raw_requests=bundle is not None),
            input_example=example,
            pip_requirements=pip_requirements(),
            tags={f"{TAG}model": model_name},
        )


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Strip DDP's ``module.`` prefix so the state loads into a bare model."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The model state_dict inside a Ray Train checkpoint dir (or a single .pt file).

    Accepts a bare state_dict or a dict holding one under model / model_state_dict /
    state_dict / model_state.
    """
    import torch

    file = Path(path)
    if file.is_dir():
        found = sorted(p for p in file.rglob("*") if p.suffix in (".pt", ".pth", ".bin"))
        if not found:
            raise FileNotFoundError(f"no .pt/.pth file in checkpoint {file}")
        exact = [p for p in found if p.name == "model.pt"]  # train.checkpoints.MODEL_FILE
        preferred = [p for p in found if "model" in p.name or "state" in p.name]
        file = (exact or preferred or found)[0]
    obj = torch.load(file, map_location="cpu", weights_only=True)
    for key in ("model", "model_state_dict", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    return clean_state_dict(obj)
