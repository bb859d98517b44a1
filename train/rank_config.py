"""Options of jobs/rank.py: which model ranks, the request file, and the policy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RankConfig:
    model_uri: str = field(
        default="",
        metadata={"help": "models:/isrec-<model>@champion, runs:/<id>/model or a path",
                  "required": True},
    )  # fmt: skip
    request: str = field(
        default="",
        metadata={"help": "JSON file: one request object or a list of them", "required": True},
    )
    policy: str = field(
        default="greedy",
        metadata={"help": "NAME[:PARAM] of train/policy.py, e.g. incentive:0.5 or softmax:0.05"},
    )
    beta: float | None = field(
        default=None, metadata={"help": "incentive weight (default: the policy's own)"}
    )
    k: int | None = field(default=None, metadata={"help": "ranked candidates to return (all)"})
    seed: int | None = field(default=None, metadata={"help": "seed of stochastic policies"})
    tracking_uri: str | None = field(
        default=None, metadata={"help": "MLflow store (default: $MLFLOW_TRACKING_URI or local)"}
    )
