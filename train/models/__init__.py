"""Model zoo: ``build_model(name, spec, params)`` for every name in ``MODEL_NAMES``."""

from __future__ import annotations

from typing import Any

from etl.spec import FeatureSpec
from train.config import resolve_config
from train.models.base import BaseModel
from train.models.deepfm import DeepFM
from train.models.din import DIN
from train.models.esmm import ESMM
from train.models.mmoe import MMoE
from train.models.rnn_mtl import RNNMTL
from train.models.xdeepfm import XDeepFM

MODEL_NAMES = ("deepfm", "xdeepfm", "mmoe", "esmm", "din", "rnn_mtl")
MODELS: dict[str, type[BaseModel]] = {
    "deepfm": DeepFM,
    "xdeepfm": XDeepFM,
    "mmoe": MMoE,
    "esmm": ESMM,
    "din": DIN,
    "rnn_mtl": RNNMTL,
}


def build_model(name: str, spec: FeatureSpec, params: dict[str, Any] | None = None) -> BaseModel:
    """A fresh model; ValueError for an unknown name, bad params or a spec it cannot use."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    return MODELS[name](spec, resolve_config(name, params))


__all__ = ["MODEL_NAMES", "MODELS", "BaseModel", "build_model"]
