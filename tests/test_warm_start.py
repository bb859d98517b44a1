"""Warm starts (``--init-from``, train/warm_start.py): through real Ray Train from a trained
checkpoint, grown embedding tables, one-line pre-flight refusals of a model that does not fit
and of vocabulary ids that changed since the earlier model was trained.

Real local Ray (2 CPUs), real Petastorm, real Delta tables written by local Spark.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from etl.lake import write_table
from etl.schemas import VOCAB as VOCAB_SCHEMA
from etl.spec import FeatureSpec
from etl.tables import VOCAB
from tests.helpers_samples import shared_lake
from tests.helpers_training import one_line_error, run_with_worker_killed
from train import driver
from train.checkpoints import MODEL_FILE, MODEL_INFO_FILE, SPEC_FILE, STATE_FILE
from train.driver import run_training
from train.models import build_model
from train.preflight import preflight
from train.train_config import TrainConfig
from train.warm_start import IDS_CHANGED, apply_initial_state, embedding_tables, ids_changed

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SMALL = {"embedding_dim": "4", "gru_hidden": "8", "shared_hidden": "16", "tower_hidden": "8"}


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    return shared_lake(spark, tmp_path_factory.getbasetemp())


@pytest.fixture
def no_ray(monkeypatch):
    def boom(cfg):
        raise AssertionError("Ray must not start when the pre-flight fails")

    monkeypatch.setattr(driver, "connect_ray", boom)


def make_cfg(lake: Path, storage: Path, **kw) -> TrainConfig:
    base = dict(
        lake=str(lake), model="rnn_mtl", model_params=dict(SMALL), num_workers=2, epochs=2,
        batch_size=32, eval_batch_size=128, lr=1e-2, patience=0, storage_path=str(storage),
        name="run", max_failures=0, log_every=0, loader="pyarrow",
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def grown_spec(spec: FeatureSpec, extra: int) -> FeatureSpec:
    """The spec with ``extra`` more ids in every vocabulary above the fixed btag one."""
    fields = [
        replace(f, vocab_size=f.vocab_size + extra) if f.vocab not in (None, "btag") else f
        for f in spec.fields
    ]
    return replace(spec, fields=fields)


def write_checkpoint(folder: Path, model_name: str, params: dict, spec: FeatureSpec, lake: Path):
    """A checkpoint folder as train/checkpoints.py writes it, of a fresh model."""
    folder.mkdir(parents=True)
    torch.manual_seed(7)
    model = build_model(model_name, spec, params)
    torch.save(model.state_dict(), folder / MODEL_FILE)
    (folder / SPEC_FILE).write_text(spec.to_json())
    info = {"model": model_name, "model_params": params, "lake": str(lake)}
    (folder / MODEL_INFO_FILE).write_text(json.dumps(info))
    return folder


# --- Ray Train: a warm start learns from where the earlier model stopped -----------------------
def test_warm_start_starts_lower_and_a_resume_takes_precedence(ray_cluster, lake, tmp_path):
    cold = run_training(make_cfg(lake[0], tmp_path, name="cold", epochs=3))
    assert cold.resumed_from_epoch is None and cold.epochs_run == 3
    cold_state = json.loads((Path(cold.best_checkpoint_path) / STATE_FILE).read_text())
    steps = cold_state["global_step"] // 3

    # the warm run is killed in its second epoch: the restart resumes from its own checkpoint
    # (not from --init-from again), its loop state and optimizer fresh at the warm start
    pid_file = tmp_path / "worker.pid"
    warm_cfg = make_cfg(
        lake[0], tmp_path, name="warm", init_from=cold.best_checkpoint_path, max_failures=1,
        hook_pid_file=str(pid_file), hook_at="1:1",
    )  # fmt: skip
    warm, killed = run_with_worker_killed(warm_cfg)

    assert killed, "the worker never reached the test hook"
    assert warm.resumed_from_epoch == 1 and warm.epochs_run == 2
    assert [row["epoch"] for row in warm.history] == [0, 1]
    warm_state = json.loads((Path(warm.best_checkpoint_path) / STATE_FILE).read_text())
    assert warm_state["global_step"] == 2 * steps  # its own two epochs, not the cold run's
    # same seed, same data order: only the initial weights differ
    first_cold, first_warm = cold.history[0], warm.history[0]
    assert first_warm["train_loss"] < first_cold["train_loss"]
    assert first_warm["valid_ctcvr_logloss"] < first_cold["valid_ctcvr_logloss"]


# --- grown embedding tables (no Ray) -----------------------------------------------------------
@pytest.mark.parametrize(("name", "params"), [("rnn_mtl", SMALL), ("deepfm", {"embedding_dim": 4})])
def test_grown_tables_keep_old_rows_and_fresh_new_rows(lake, name, params):
    spec = lake[1]
    torch.manual_seed(1)
    old = build_model(name, spec, params).state_dict()
    torch.manual_seed(2)
    model = build_model(name, grown_spec(spec, 5), params)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    added = apply_initial_state(model, old)

    tables = embedding_tables(model)
    grown = [k for k in tables if fresh[k].shape != old[k].shape]
    assert grown and added == 5 * len(grown)
    after = model.state_dict()
    for key, value in after.items():
        rows = old[key].shape[0] if key in grown else None
        assert torch.equal(value[:rows], old[key]), key
        if key in grown:
            assert torch.equal(value[rows:], fresh[key][rows:]), key
            assert not torch.equal(value[:rows], fresh[key][:rows]), key


# --- pre-flight refusals: one line, before Ray starts ------------------------------------------
def test_a_model_that_does_not_fit_is_one_line_before_ray(no_ray, lake, tmp_path):
    spec = lake[1]
    base = make_cfg(lake[0], tmp_path)
    fewer = replace(spec, fields=[f for f in spec.fields if f.name != "price"])
    folder = write_checkpoint(tmp_path / "fewer", "rnn_mtl", SMALL, fewer, lake[0])
    message = one_line_error(replace(base, init_from=str(folder)), "lacks parameter")
    assert "price" in message
    wider = write_checkpoint(tmp_path / "wider", "rnn_mtl", {**SMALL, "embedding_dim": "8"}, spec,
        lake[0])  # fmt: skip
    message = one_line_error(replace(base, init_from=str(wider)), "has shape")
    assert "embedding" in message and "train from scratch" in message
    bigger = write_checkpoint(tmp_path / "bigger", "rnn_mtl", SMALL, grown_spec(spec, 3), lake[0])
    one_line_error(replace(base, init_from=str(bigger)), "embedding table shrank")
    esmm = write_checkpoint(tmp_path / "esmm", "esmm", {"embedding_dim": 4}, spec, lake[0])
    one_line_error(replace(base, init_from=str(esmm)), "holds a esmm model, not rnn_mtl")
    one_line_error(replace(base, init_from=str(tmp_path / "nowhere")), "not a checkpoint folder")
    one_line_error(replace(base, init_from=str(tmp_path)), "no model.json")


def test_a_logged_model_initialises_a_run(no_ray, lake, tmp_path):
    import mlflow
    from helpers_mlflow import sqlite_uri

    from train.pyfunc import log_pyfunc_model
    from train.tracking.store import configure, ensure_experiment

    uri = configure(sqlite_uri(tmp_path / "mlflow"))
    torch.manual_seed(3)
    model = build_model("rnn_mtl", lake[1], SMALL)
    # its own experiment (artifacts beside the store, not in ./mlruns): an earlier test's
    # set_experiment left another store's id active
    with mlflow.start_run(experiment_id=ensure_experiment("isrec-warm-start-tests", uri)):
        info = log_pyfunc_model("rnn_mtl", SMALL, model.state_dict(), lake[1])
    assert info.model_uri.startswith("models:/")
    cfg = make_cfg(lake[0], tmp_path, init_from=info.model_uri, tracking_uri=uri)
    state = preflight(cfg).init_state
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    one_line_error(replace(cfg, init_from="models:/no-such-model/1"), "--init-from models:/")


def write_vocab(spark, lake: Path, rows: list[tuple[str, str, int]]) -> int:
    frame = spark.createDataFrame([(v, r, i, 1) for v, r, i in rows], schema=VOCAB_SCHEMA)
    return write_table(frame, lake, VOCAB)


def test_changed_vocabulary_ids_are_refused(spark, no_ray, lake, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(lake[0], copy)
    users = [("user", str(1000 + i), i + 2) for i in range(10)]
    spec = FeatureSpec.load(copy)
    old_spec = replace(spec, tables={**spec.tables, VOCAB: write_vocab(spark, copy, users)})
    folder = write_checkpoint(tmp_path / "ckpt", "rnn_mtl", SMALL, old_spec, copy)
    cfg = make_cfg(copy, tmp_path, init_from=str(folder))

    # append-only growth (the incremental ETL): old ids kept, a new value after the old max
    appended = write_vocab(spark, copy, [*users, ("user", "1010", 12)])
    replace(spec, tables={**spec.tables, VOCAB: appended}).save(copy)
    assert preflight(cfg).init_state is not None

    # a full rerun reorders ids by count: two users swap ids
    swapped = [("user", "1000", 3), ("user", "1001", 2), *users[2:]]
    replace(spec, tables={**spec.tables, VOCAB: write_vocab(spark, copy, swapped)}).save(copy)
    assert one_line_error(cfg, "vocabulary ids changed") == IDS_CHANGED

    # the vocab version the earlier model names is not in the log (vacuumed, another lake)
    gone = replace(old_spec, tables={**old_spec.tables, VOCAB: 99})
    folder = write_checkpoint(tmp_path / "gone", "rnn_mtl", SMALL, gone, copy)
    one_line_error(replace(cfg, init_from=str(folder)), "cannot read the vocab table .* 99")


def test_ids_changed_compares_only_earlier_pairs():
    old = pd.DataFrame({"vocab": ["a", "a", "b"], "raw": ["x", "y", "x"], "id": [2, 3, 2]})
    grown = pd.concat([old, pd.DataFrame({"vocab": ["a"], "raw": ["z"], "id": [4]})])
    assert not ids_changed(old, grown)
    assert ids_changed(old, grown.iloc[1:])  # a value gone (now unknown)
    assert ids_changed(old, grown.assign(id=[2, 3, 5, 4]))
    assert not ids_changed(old, grown.assign(id=[2, 3, 5, 4]), vocabs={"a"})


def test_the_loop_warm_starts_unless_told_not_to():
    from etl.cli import parse
    from train.sim.config import SimulateConfig

    assert SimulateConfig().warm_start is True  # the loop's incremental ETL keeps the ids
    assert parse(SimulateConfig, ["--no-warm-start"]).warm_start is False
