"""Model configs: one dataclass per model with documented defaults, overridable by a dict.

RecBole-style: ``resolve_config("mmoe", {"num_experts": 8})`` starts from ``MMoEConfig()`` and
overrides the given keys. Unknown keys and unparsable values raise ``ValueError``. Values may
come from a CLI or MLflow as strings ("64,32" for a tuple, "true" for a bool) and are coerced.

Defaults are sized for CPU training of ~100k-1M rows in minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, get_type_hints


@dataclass
class ModelConfig:
    """Fields every model has."""

    embedding_dim: int = 16  # size of every field embedding (one table per shared vocab)
    dropout: float = 0.1  # dropout after each hidden layer of every MLP
    batch_norm: bool = False  # BatchNorm1d in MLP hidden layers
    activation: str = "relu"  # MLP activation: relu, prelu, gelu, tanh, sigmoid, identity
    dense_log1p: bool = True  # dense inputs -> sign(x) * log1p(|x|) (safe for raw prices)
    # L2 on the embedding rows each batch looks up (each distinct row once), added to the loss.
    # Off by default: 1e-2 kept rnn_mtl's valid CTR AUC flat over 4 epochs on a 3,000-user world
    # instead of falling after the first, but its best stayed 0.0055 below the unregularised
    # first epoch's (README "Why the first epoch is the best")
    embedding_l2: float = 0.0
    ctr_weight: float = 1.0  # weight of the CTR loss
    cvr_weight: float = 1.0  # weight of the CVR loss (CTCVR loss for entire-space models)

    def mlp_options(self) -> dict[str, Any]:
        """The keyword arguments every MLP block of the model takes from this config."""
        return {
            "activation_name": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


@dataclass
class DeepFMConfig(ModelConfig):
    """Single-task DeepFM: one CTR net (all rows) and one CVR net (clicked rows), independent."""

    dnn_hidden: tuple[int, ...] = (128, 64)  # deep part hidden units


@dataclass
class XDeepFMConfig(ModelConfig):
    """Single-task xDeepFM (linear + CIN + DNN), two independent nets like DeepFM."""

    dnn_hidden: tuple[int, ...] = (128, 64)
    cin_layers: tuple[int, ...] = (32, 32)  # feature maps per CIN layer
    cin_split_half: bool = True  # half of each CIN layer feeds the next, half the output


@dataclass
class MMoEConfig(ModelConfig):
    """MMoE: shared experts, one softmax gate and tower per task (CTR, CVR on clicked rows)."""

    num_experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)  # last entry = expert output size
    tower_hidden: tuple[int, ...] = (64,)


@dataclass
class ESMMConfig(ModelConfig):
    """ESMM: shared embeddings, MLP CTR and CVR towers, entire-space loss."""

    tower_hidden: tuple[int, ...] = (128, 64)


@dataclass
class DINConfig(ModelConfig):
    """Single-task DIN: target attention over the history + MLP, two independent nets."""

    dnn_hidden: tuple[int, ...] = (128, 64)
    attention_hidden: tuple[int, ...] = (32,)  # attention-score MLP (PReLU)
    attention_softmax: bool = False  # DIN's raw scores (False) or softmax-normalised weights


@dataclass
class RNNMTLConfig(ModelConfig):
    """GRU over the behavior sequence + user/ad/context embeddings, CTR/CVR/exploration towers."""

    gru: bool = True  # False: no GRU, attention over the step inputs only (an ablation)
    gru_hidden: int = 64
    gru_layers: int = 1
    packed: bool = True  # pack_padded_sequence (True) or run padded and gather by length
    attention: bool = True  # target attention of the candidate ad over the GRU states
    match_flags: bool = True  # per step, does it match the candidate (same cate, ...)
    match_position: str = "gru"  # flags as GRU inputs ("gru") or beside its states ("attention")
    attention_hidden: tuple[int, ...] = (32,)  # DIN-style attention MLP
    shared_hidden: tuple[int, ...] = (128,)  # shared bottom above [GRU, attention, embeddings]
    tower_hidden: tuple[int, ...] = (64,)  # each of the CTR, CVR and exploration towers
    # weight of the Poisson loss on n_future_views, divided by the train split's mean views
    # (train/models/base.py) so the weight means the same on every world; 0.1 cost 0.005 valid
    # CTR AUC on the quickstart world, 0.03 nothing measurable (README "Training defaults")
    explore_weight: float = 0.03


MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    "deepfm": DeepFMConfig,
    "xdeepfm": XDeepFMConfig,
    "mmoe": MMoEConfig,
    "esmm": ESMMConfig,
    "din": DINConfig,
    "rnn_mtl": RNNMTLConfig,
}


def resolve_config(name: str, params: dict[str, Any] | None = None) -> ModelConfig:
    """The model's default config with ``params`` applied."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    cls = MODEL_CONFIGS[name]
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ValueError(f"unknown params for {name}: {unknown}; known: {sorted(known)}")
    values = {k: _coerce(k, v, hints[k]) for k, v in (params or {}).items()}
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    try:
        if hint is bool:
            return _to_bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return hint(value)
        # tuple[int, ...]
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        return tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad value for {key}: {value!r} ({exc})") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")
