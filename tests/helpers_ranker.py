"""A real ETL lake of a small generated world and a briefly trained model logged with its
feature bundle: what the raw-request serving, ranking and batch-ranking tests share.

Built once per test session (the ``ranker`` fixture of tests/conftest.py): world
(write_world) -> run_etl on the shared Spark -> samples read without Spark -> a few Adam steps
(helpers_mlflow.make_result) -> an MLflow run whose model ships the lake's vocabularies and ad
table (train/pyfunc.py, etl/online.py), registered and promoted to champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from helpers_mlflow import client_for, make_result, sqlite_uri

from etl import storage
from etl.config import EtlConfig
from etl.delta_log import files_at
from etl.pipeline import run_etl
from etl.spec import FeatureSpec
from etl.tables import SAMPLES
from etl.world import WorldConfig, write_world

MAX_LEN = 10
_CACHE: dict[str, object] = {}


@dataclass
class Ranker:
    world: Path
    lake: Path
    spec: FeatureSpec
    samples: pd.DataFrame
    tracking_uri: str
    model_uri: str  # models:/isrec-rnn_mtl@champion
    run_id: str


def read_samples(lake: Path, spec: FeatureSpec) -> pd.DataFrame:
    """The samples table at the spec's version, without Spark (the partition columns from the
    file paths)."""
    frames = []
    for file in files_at(storage.join(lake, SAMPLES), spec.tables[SAMPLES]):
        frame = pq.read_table(file).to_pandas()
        for part in Path(file).parent.parts:
            if "=" in part:
                key, value = part.split("=", 1)
                frame[key] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values("impression_id", ignore_index=True)


def build_ranker(spark, root: Path) -> Ranker:
    from train.tracking.runs import training_run

    if "ranker" in _CACHE:
        return _CACHE["ranker"]
    world, lake = root / "world", root / "lake"
    write_world(WorldConfig(users=120, days=4, seed=5), world)
    cfg = EtlConfig(source="taobao_ad", input=str(world), output=str(lake), max_len=MAX_LEN)
    run_etl(spark, cfg)
    spec = FeatureSpec.load(lake)
    samples = read_samples(lake, spec)
    uri = sqlite_uri(root / "mlflow")
    result = make_result(root / "train", spec, samples, lake=lake)
    with training_run("isrec-ranking-tests", tracking_uri=uri) as run:
        logged = run.register(run.log_result(result))
    # The serving tests need a champion, whatever a few full-batch steps on 120 users learned:
    # set the alias directly (the promotion gate, below-chance guard included, has its own
    # tests in tests/test_registry.py).
    client_for(uri).set_registered_model_alias(logged.registered_model, "champion", logged.version)
    ranker = Ranker(
        world, lake, spec, samples, uri, f"models:/{logged.registered_model}@champion",
        logged.run_id,
    )  # fmt: skip
    _CACHE["ranker"] = ranker
    return ranker
