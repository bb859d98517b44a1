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
        default=None,
        metadata={
            "help": "Delta version of samples read (default: the one the feature spec records)"
        },
    )
    beta: float | None = field(
        default=None, metadata={"help": "ranking beta (default: the model's)"}
    )
    policy: str | None = field(
        default=None,
        metadata={
            "help": "also rank each session's impressions with this train/policy.py policy "
            "(NAME[:PARAM], e.g. incentive:0.5 or softmax:0.05) into --rankings-output"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of a stochastic --policy"})
    rankings_output: str | None = field(
        default=None, metadata={"help": "Delta table of session rankings (default: LAKE/rankings)"}
    )
    tracking_uri: str | None = field(
        default=None, metadata={"help": "MLflow store (default: $MLFLOW_TRACKING_URI or local)"}
    )
