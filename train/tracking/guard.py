"""The below-chance guard: a model that ranks worse than chance is flagged and never promoted.

Checked: ``GUARD_METRIC`` (valid CTR AUC) of the epoch whose weights the logged model carries
(the best epoch, else the last). CTR AUC rests on every valid impression, the most rows of any
AUC (the early-stop metric is a log loss, which has no chance level). A value below ``CHANCE``
logs a warning and tags the run ``isrec.below_chance=true`` (else ``false``) with the value as
``isrec.guard.valid_ctr_auc``; registry versions copy the tag and train/registry.py's
``promote`` refuses such a challenger. A run without a valid split gets no tag.
"""

from __future__ import annotations

import logging
import math

import mlflow

from train.results import TrainResult
from train.tracking.store import TAG

GUARD_METRIC = "valid_ctr_auc"
CHANCE = 0.5
BELOW_CHANCE_TAG = f"{TAG}below_chance"
VALUE_TAG = f"{TAG}guard.{GUARD_METRIC}"

log = logging.getLogger(__name__)


def model_epoch_value(result: TrainResult) -> float | None:
    """``GUARD_METRIC`` of the epoch the model's weights come from; None when not measured."""
    rows = [r for r in result.history if GUARD_METRIC in r]
    if not rows:
        return None
    by_epoch = {int(r.get("epoch", i)): r for i, r in enumerate(result.history)}
    row = by_epoch.get(result.best_epoch) if result.best_epoch is not None else None
    value = float((row if row and GUARD_METRIC in row else rows[-1])[GUARD_METRIC])
    return value if math.isfinite(value) else None


def is_below_chance(value: float | None) -> bool:
    return value is not None and value < CHANCE


def guard_below_chance(result: TrainResult) -> bool:
    """Tag the active run (and warn) when its model ranks below chance; returns whether."""
    value = model_epoch_value(result)
    if value is None:
        return False
    below = is_below_chance(value)
    mlflow.set_tags({BELOW_CHANCE_TAG: str(below).lower(), VALUE_TAG: repr(value)})
    if below:
        log.warning(
            "%s ranks below chance: %s %.4f < %.1f; the run is tagged %s=true and its model "
            "will not be promoted",
            result.config.model,
            GUARD_METRIC,
            value,
            CHANCE,
            BELOW_CHANCE_TAG,
        )
    return below
