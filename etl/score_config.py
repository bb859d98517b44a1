"""Options of jobs/score.py: which registered model scores which split of a lake, and where to.

The scoring itself is etl/score.py's ``score_samples`` (Spark; this module imports none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.tables import SPLITS


@dataclass
class ScoreConfig:
    model_uri: str = field(
        default="", metadata={"help": "e.g. models:/isrec-rnn_mtl@champion", "required": True}
    )
    lake: str = field(
        default="",
        metadata={
            "help": "lake holding the samples table (folder or s3a:// URI)",
            "required": True,
        },
    )
    split: str = field(default="test", metadata={"help": "split scored", "choices": SPLITS})
    output: str | None = field(
        default=None, metadata={"help": "Delta table path (default: LAKE/scores)"}
    )
    samples_version: int | None = field(
        default=None, metadata={"help": "Delta version of samples read (default: the latest)"}
    )
    beta: float | None = field(
        default=None, metadata={"help": "ranking beta (default: the model's)"}
    )
    tracking_uri: str | None = field(
        default=None, metadata={"help": "MLflow store (default: $MLFLOW_TRACKING_URI or local)"}
    )
