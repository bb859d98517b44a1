"""Oracle predictions for a generated world: the true probabilities of the test impressions.

The generator's truth.csv holds, per raw_sample row, p_click, p_buy_given_click and the expected
further views; joined to the lake's impressions on (user, time, ad, slot) they give the best
possible AUC on exactly the rows the models are scored on. The lake's tables are read at the
versions its feature spec records (the last complete ETL run), with pyarrow from the Delta log:
a few columns of two tables, so no Spark session (and its JVM start) is needed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from etl import storage
from etl.delta_log import snapshot_files, snapshot_splits
from etl.spec import FeatureSpec
from etl.tables import IMPRESSIONS

TRUTH_DTYPES = {
    "user": "int64",
    "time_stamp": "int64",
    "adgroup_id": "int64",
    "pid": "string",
    "p_click": "float64",
    "p_buy_given_click": "float64",
    "expected_further_views": "float64",
}
SAMPLE_COLUMNS = ["impression_id", "user_key", "click", "conversion", "n_future_views"]
IMPRESSION_COLUMNS = ["impression_id", "user_id", "ts", "ad_id", "slot"]


def oracle_frame(world_dir: str | Path, lake: str | Path, split: str = "test") -> pd.DataFrame:
    """Rows of ``split`` with labels, user_key and the oracle's pctr/pcvr/pctcvr/expected_views."""
    spec = FeatureSpec.load(lake)
    truth = pd.read_csv(Path(world_dir) / "truth.csv", usecols=list(TRUTH_DTYPES))
    truth = truth.astype(TRUTH_DTYPES)
    samples = _read(snapshot_files(lake, split, spec), SAMPLE_COLUMNS)
    by_split = snapshot_splits(lake, spec, IMPRESSIONS)
    impressions = _read([f for files in by_split.values() for f in files], IMPRESSION_COLUMNS)
    impressions["slot"] = impressions["slot"].astype("string")
    joined = samples.merge(impressions, on="impression_id").merge(
        truth,
        left_on=["user_id", "ts", "ad_id", "slot"],
        right_on=["user", "time_stamp", "adgroup_id", "pid"],
    )
    return pd.DataFrame(
        {
            **{c: joined[c].to_numpy() for c in SAMPLE_COLUMNS},
            "pctr": joined["p_click"].to_numpy(),
            "pcvr": joined["p_buy_given_click"].to_numpy(),
            "pctcvr": (joined["p_click"] * joined["p_buy_given_click"]).to_numpy(),
            "expected_views": joined["expected_further_views"].to_numpy(),
        }
    )


def _read(files: list[str], columns: list[str]) -> pd.DataFrame:
    tables = []
    for uri in files:
        filesystem, path = storage.filesystem(uri)
        tables.append(pq.read_table(path, columns=columns, filesystem=filesystem).to_pandas())
    return pd.concat(tables, ignore_index=True)
