"""jobs/rank.py's library: load a logged model and rank the requests of a JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from train.rank_config import RankConfig


class RankError(ValueError):
    """A request file, model URI or request the job cannot use (one line for the user)."""


def read_requests(path: str | Path) -> pd.DataFrame:
    """One request object or a list of them, as the frame the served model takes."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RankError(f"cannot read requests from {path}: {exc}") from None
    requests = payload if isinstance(payload, list) else [payload]
    if not requests or not all(isinstance(r, dict) for r in requests):
        raise RankError(f"{path}: expected a request object or a non-empty list of them")
    return pd.DataFrame(requests)


def rank_file(cfg: RankConfig) -> list[dict[str, Any]]:
    import mlflow
    from mlflow.exceptions import MlflowException

    from train.tracking.store import configure

    frame = read_requests(cfg.request)
    configure(cfg.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(cfg.model_uri)
    except (MlflowException, OSError) as exc:
        raise RankError(f"cannot load model {cfg.model_uri}: {_first_line(exc)}") from None
    params = {"policy": cfg.policy, "beta": cfg.beta, "k": cfg.k, "seed": cfg.seed}
    try:
        return model.predict(frame, params={k: v for k, v in params.items() if v is not None})
    except MlflowException as exc:
        raise RankError(_first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    """The reason of an MLflow error on one line (schema errors end with "Error: <reason>")."""
    message = " ".join((getattr(exc, "message", None) or str(exc)).split())
    if "Error: " in message:
        message = message[message.rindex("Error: ") + len("Error: ") :]
    return message or type(exc).__name__


def slate_ranker(policy: str, beta: float | None, seed: int) -> Callable[[Any], Any]:
    """The per-session ranking function of batch scoring (etl/score.py ``rank_sessions``):
    the policy of ``policy`` and ``beta`` as served (train/serving.py), seeded."""
    from train.policy import Oracle, rank_slates
    from train.serving import BadRequest, parse_params

    try:
        chosen = parse_params({"policy": policy, "beta": beta}).policy
    except BadRequest as exc:
        raise RankError(str(exc).removeprefix("params: ")) from None
    if isinstance(chosen, Oracle):
        raise RankError("the oracle policy needs the world's truth, which a lake does not hold")
    return partial(rank_slates, policy=chosen, seed=seed)
