"""Options of jobs/promote.py: which registered model's challenger to gate, and how.

The decision itself is train/registry.py's ``promote``; the metric's direction comes from the
metric registry (train/metrics.py), so only its quality metrics are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.metrics import DEFAULT_METRIC, METRICS

QUALITY_METRICS = tuple(name for name, m in METRICS.items() if m.kind == "quality")


@dataclass
class PromoteConfig:
    model_name: str = field(
        default="", metadata={"help": "isrec-<model> or <model>", "required": True}
    )
    metric: str = field(
        default=DEFAULT_METRIC,
        metadata={"help": "test metric that decides", "choices": QUALITY_METRICS},
    )
    version: str | None = field(
        default=None, metadata={"help": "challenger version (default: the @challenger alias)"}
    )
    min_delta: float = field(default=0.0, metadata={"help": "required improvement"})
    tracking_uri: str | None = field(
        default=None, metadata={"help": "MLflow store (default: $MLFLOW_TRACKING_URI or local)"}
    )
    json: bool = field(default=False, metadata={"help": "print the decision as JSON"})
    fail_if_refused: bool = field(default=False, metadata={"help": "exit 1 when refused"})
