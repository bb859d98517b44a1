"""Warm start: a run's initial weights from an earlier model (``TrainConfig.init_from``).

``init_from`` names the earlier model: a Ray Train checkpoint folder (``TrainResult.
best_checkpoint_path``, or any epoch's checkpoint: its model.pt), a folder holding a logged
pyfunc model (train/pyfunc.py), or an MLflow model URI (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``runs:/RUN_ID/NAME``); whatever is not local (object-store
checkpoints too) is copied once to the driver. Only the weights
are taken, all of them (the output offsets too, which a cold start sets from the new train
split's base rates): the optimizer, epoch counter and early-stopping state start fresh (a
resumed worker group, train/checkpoints.py, is another thing and takes precedence).

What must hold, checked on the driver before Ray starts (train/preflight.py, one-line errors):

- the same model family; every parameter of the new model exists in the earlier one with the
  same shape, except embedding tables (``nn.Embedding`` weights) that gained rows: a table whose
  vocabulary grew gets the earlier rows as its first rows, and its new rows keep their fresh
  initialisation. A changed field list, a different model size or ``max_len`` that changes a
  weight is refused, naming the parameter.
- stable ids: every (vocabulary, raw value) pair of the earlier model must map to the same id
  in the new lake (the incremental ETL's append-only vocabularies guarantee it; a full rerun of
  the ETL reorders ids by count). The earlier vocabularies come from the model's feature bundle
  when it ships one, else from the ``vocab`` table of the lake the checkpoint records (the new
  lake for checkpoints that record none) at the Delta version its feature spec records. The
  check is one pandas join over the earlier vocab rows (seconds for millions of rows), skipped
  when both name the same table version; fixed vocabularies (hour, btag, ...) are stable by
  definition, and a lake without a ``vocab`` table (samples written by a test or another tool)
  has no learned vocabularies to compare. It does not re-encode the samples: ids written by
  anything other than the ETL's vocabularies are trusted.

Nothing here knows about Ray: the driver ships the earlier state to the workers and each rank
calls :func:`apply_initial_state` on the same freshly built model (train/worker.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from etl import storage
from etl.spec import FeatureSpec
from etl.tables import VOCAB

MLFLOW_SCHEMES = ("models:/", "runs:/")
IDS_CHANGED = (
    "vocabulary ids changed since the model was trained: rerun the ETL with --incremental "
    "or train from scratch"
)


class WarmStartError(ValueError):
    """The earlier model cannot initialise this run; the message is one line."""


@dataclass
class EarlierModel:
    """What a warm start takes from the earlier model."""

    source: str  # init_from as given
    model: str  # model family name
    spec: FeatureSpec  # the feature spec it was trained with
    state: dict[str, torch.Tensor]  # its weights (CPU, no DDP prefix)
    lake: str | None  # the lake it was trained on, when its checkpoint records one
    vocab: pd.DataFrame | None  # (vocab, raw, id) it shipped (feature bundle), else None


# --- loading ---------------------------------------------------------------------------------
def load_earlier(init_from: str, tracking_uri: str | None = None) -> EarlierModel:
    """The earlier model named by ``init_from`` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="isrec-init-") as tmp:
        if init_from.startswith(MLFLOW_SCHEMES):
            return _read_folder(_download(init_from, tracking_uri, tmp), init_from)
        try:
            folder = Path(storage.localize(init_from, tmp))  # an object-store checkpoint: copied
        except (OSError, ValueError) as exc:
            raise WarmStartError(f"--init-from {init_from}: {exc}".splitlines()[0]) from None
        if not folder.is_dir():
            raise WarmStartError(
                f"--init-from {init_from}: not a checkpoint folder or a models:/ or runs:/ URI"
            )
        return _read_folder(folder, init_from)


def _download(uri: str, tracking_uri: str | None, dest: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from train.tracking.store import configure

    configure(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest))
    except (MlflowException, OSError) as exc:
        raise WarmStartError(f"--init-from {uri}: {exc}".splitlines()[0]) from None


def _read_folder(folder: Path, source: str) -> EarlierModel:
    """A Ray checkpoint (model.pt, feature_spec.json, model.json: model, model_params[, lake])
    or a pyfunc model (artifacts/: state_dict.pt, feature_spec.json, model.json: name,
    params, feature_bundle/)."""
    from train.pyfunc import load_checkpoint_state

    home = next((d for d in (folder, folder / "artifacts") if (d / "model.json").is_file()), None)
    if home is None or not (home / "feature_spec.json").is_file():
        raise WarmStartError(
            f"--init-from {source}: no model.json and feature_spec.json (not a checkpoint of "
            "jobs/train.py or a logged isrec model)"
        )
    info = json.loads((home / "model.json").read_text())
    spec = FeatureSpec.from_json((home / "feature_spec.json").read_text())
    try:
        state = load_checkpoint_state(home)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        raise WarmStartError(f"--init-from {source}: {exc}".splitlines()[0]) from None
    bundle_vocab = home / "feature_bundle" / "vocab.parquet"
    vocab = pd.read_parquet(bundle_vocab) if bundle_vocab.is_file() else None
    model = info.get("model", info.get("name"))
    return EarlierModel(source, str(model), spec, state, info.get("lake"), vocab)


# --- shapes ----------------------------------------------------------------------------------
def embedding_tables(model: nn.Module) -> set[str]:
    """State-dict keys of the model's embedding tables (the weights that may grow)."""
    return {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if _is_table(m)}


def _is_table(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding | nn.EmbeddingBag)


def check_shapes(model: nn.Module, earlier: Mapping[str, torch.Tensor]) -> None:
    """WarmStartError naming the first parameter the earlier state cannot initialise."""
    current = model.state_dict()
    tables = embedding_tables(model)
    extra = sorted(set(earlier) - set(current))
    if extra:
        raise WarmStartError(
            f"--init-from: the earlier model has parameter {extra[0]!r} this one lacks "
            "(a changed field list or model): train from scratch"
        )
    for key, new in current.items():
        old = earlier.get(key)
        if old is None:
            raise WarmStartError(
                f"--init-from: the earlier model lacks parameter {key!r} "
                "(a changed field list or model): train from scratch"
            )
        if old.shape == new.shape or (key in tables and _grows(old, new)):
            continue
        what = "embedding table shrank" if key in tables else "a changed model, fields or max_len"
        raise WarmStartError(
            f"--init-from: parameter {key!r} has shape {tuple(old.shape)} in the earlier model "
            f"and {tuple(new.shape)} now ({what}): train from scratch"
        )


def _grows(old: torch.Tensor, new: torch.Tensor) -> bool:
    same_width = old.dim() == new.dim() == 2 and old.shape[1] == new.shape[1]
    return same_width and old.shape[0] < new.shape[0]


def apply_initial_state(model: nn.Module, earlier: Mapping[str, torch.Tensor]) -> int:
    """Load ``earlier`` into ``model``: same-shape tensors as they are, grown embedding tables
    into their first rows (the rest keep the model's own initialisation). Returns the number
    of new embedding rows kept fresh. Shapes must have passed :func:`check_shapes`."""
    check_shapes(model, earlier)
    merged, fresh = {}, 0
    for key, new in model.state_dict().items():
        old = earlier[key].to(dtype=new.dtype)
        if old.shape != new.shape:
            grown = new.detach().clone()
            grown[: old.shape[0]] = old
            old, fresh = grown, fresh + new.shape[0] - old.shape[0]
        merged[key] = old
    model.load_state_dict(merged)
    return fresh


# --- stable ids ------------------------------------------------------------------------------
def check_vocab_ids(earlier: EarlierModel, lake: str, spec: FeatureSpec) -> None:
    """WarmStartError(IDS_CHANGED) when an earlier (vocab, raw) pair has another id (or none)
    in ``lake``'s vocabularies at the version ``spec`` records; see the module docstring."""
    new_version = spec.tables.get(VOCAB)
    if new_version is None:
        return  # no learned vocabularies in this lake: ids are its writer's
    old_lake = earlier.lake or lake
    old_version = earlier.spec.tables.get(VOCAB)
    if earlier.vocab is None and old_lake == lake and old_version == new_version:
        return  # the very table the earlier model was trained with
    names = {f.vocab for f in earlier.spec.fields if f.vocab}
    old = earlier.vocab
    if old is None:
        if old_version is None:
            raise WarmStartError(
                f"--init-from {earlier.source}: its feature spec records no {VOCAB} table "
                "version, so its ids cannot be checked: train from scratch"
            )
        old = read_vocab(old_lake, old_version, earlier.source)
    new = read_vocab(lake, new_version, lake)
    if ids_changed(old, new, names):
        raise WarmStartError(IDS_CHANGED)


def read_vocab(lake: str, version: int, what: str) -> pd.DataFrame:
    """(vocab, raw, id) of ``lake``'s vocab table at ``version`` (pyarrow, no Spark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from etl.delta_log import SnapshotError, files_at

    table = storage.join(lake, VOCAB)
    try:
        parts = []
        for path in files_at(table, version):
            fs, inner = storage.filesystem(path)
            parts.append(pq.read_table(inner, filesystem=fs, columns=["vocab", "raw", "id"]))
    except (OSError, ValueError, KeyError, SnapshotError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WarmStartError(
            f"cannot read the {VOCAB} table of {lake} at version {version} ({what}): {reason}"
        ) from None
    if not parts:
        return pd.DataFrame({"vocab": [], "raw": [], "id": []})
    return pa.concat_tables(parts).to_pandas()


def ids_changed(old: pd.DataFrame, new: pd.DataFrame, vocabs: set[str] | None = None) -> bool:
    """Does any (vocab, raw) pair of ``old`` (restricted to ``vocabs``) map to another id, or
    to none, in ``new``? New pairs in ``new`` are fine (append-only growth)."""
    old = old.loc[:, ["vocab", "raw", "id"]]
    if vocabs is not None:
        old = old[old["vocab"].isin(vocabs)]
    if old.empty:
        return False
    joined = old.merge(
        new.loc[:, ["vocab", "raw", "id"]], on=["vocab", "raw"], how="left", suffixes=("", "_new")
    )
    new_ids = joined["id_new"].astype("float64")  # NaN: the raw value is gone
    return bool((new_ids.isna() | (new_ids != joined["id"].astype("float64"))).any())
