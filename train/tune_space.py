"""Search spaces of jobs/tune.py: one default space per model, overridable dimension by dimension.

A dimension is written as text (the ``--space KEY=SPEC`` option, the ``space`` object of a
``--config`` file and the defaults below share one form):

- ``loguniform:LO:HI``, ``uniform:LO:HI`` (floats), ``randint:LO:HI`` (integers, HI excluded);
- ``choice:A|B|C`` (``|`` separates the options, so a tuple stays ``128,64``);
- anything else is a fixed value (not searched).

Keys are the optimizer's settings (``TRAIN_KEYS``, fields of TrainConfig) or the model's
hyperparameters (its dataclass in train/config.py, coerced by ``resolve_config``). Every value a
dimension can take is checked before a trial starts (``ValueError``, one line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from train.config import MODEL_CONFIGS, resolve_config
from train.train_config import TrainConfig

TRAIN_KEYS = ("lr", "weight_decay", "batch_size")  # TrainConfig fields a space may hold
RANGES = ("loguniform", "uniform", "randint")

COMMON_SPACE = {
    "lr": "loguniform:3e-4:1e-2",
    "batch_size": "choice:256|512|1024",
    "weight_decay": "choice:0|1e-6|1e-5",
    "embedding_dim": "choice:8|16|32",
    "dropout": "uniform:0:0.3",
    "embedding_l2": "choice:0|1e-3|1e-2",
}
MODEL_SPACES = {
    "deepfm": {"dnn_hidden": "choice:64,32|128,64|256,128"},
    "xdeepfm": {"dnn_hidden": "choice:64,32|128,64|256,128", "cin_layers": "choice:16,16|32,32"},
    "mmoe": {
        "num_experts": "choice:2|4|8",
        "expert_hidden": "choice:64,32|128,64",
        "tower_hidden": "choice:32|64",
    },
    "esmm": {"tower_hidden": "choice:64,32|128,64|256,128"},
    "rnn_mtl": {
        "gru_hidden": "choice:32|64|128",
        "shared_hidden": "choice:64|128|256",
        "tower_hidden": "choice:32|64",
    },
}


@dataclass(frozen=True)
class Dimension:
    """One key of a search space: its kind and its values (bounds of a range, or options)."""

    key: str
    kind: str  # loguniform | uniform | randint | choice | fixed
    values: tuple[Any, ...]

    def text(self) -> str:
        """The dimension in the ``--space`` form."""
        if self.kind == "fixed":
            return str(self.values[0])
        sep = "|" if self.kind == "choice" else ":"
        return f"{self.kind}:{sep.join(str(v) for v in self.values)}"

    def sampler(self) -> Any:
        """The Ray Tune domain of the dimension (a plain value when fixed)."""
        from ray import tune

        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)


def default_space(model: str) -> dict[str, str]:
    """The model's default space: the common keys its config has, then its own keys."""
    known = set(TRAIN_KEYS) | model_keys(model)
    common = {k: v for k, v in COMMON_SPACE.items() if k in known}
    return {**common, **MODEL_SPACES.get(model, {})}


def model_keys(model: str) -> set[str]:
    if model not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_CONFIGS)}")
    return {f.name for f in fields(MODEL_CONFIGS[model])}


def build_space(
    model: str, overrides: Mapping[str, Any], use_defaults: bool = True
) -> dict[str, Dimension]:
    """The checked space of ``model``: its defaults (unless ``use_defaults`` is off) with
    ``overrides`` (key -> text) applied. ValueError (one line) for a bad key or value."""
    texts = {**(default_space(model) if use_defaults else {}), **overrides}
    if not texts:
        raise ValueError("--space: the search space is empty (pass --space KEY=SPEC)")
    return {key: parse_dimension(model, key, str(text)) for key, text in texts.items()}


def parse_dimension(model: str, key: str, text: str) -> Dimension:
    """``text`` as a dimension of ``key``, every value it can take checked for ``model``."""
    kind_of = value_type(model, key)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in (*RANGES, "choice"):
        return Dimension(key, "fixed", (typed(model, key, text, text),))
    if kind == "choice":
        options = tuple(typed(model, key, v, text) for v in rest.split("|") if v.strip())
        if not options:
            raise ValueError(f"--space {key}={text}: choice needs at least one option")
        return Dimension(key, kind, options)
    if kind_of not in (int, float) or (kind != "randint" and kind_of is int):
        wanted = "randint or choice" if kind_of is int else "choice or a fixed value"
        raise ValueError(f"--space {key}={text}: {key} is {kind_of.__name__}: use {wanted}")
    bounds = _bounds(key, kind, text, rest)
    for value in bounds:
        typed(model, key, str(value), text)
    return Dimension(key, kind, bounds)


def _bounds(key: str, kind: str, text: str, rest: str) -> tuple[float, float]:
    parts = rest.split(":")
    try:
        low, high = (int(p) if kind == "randint" else float(p) for p in parts)
    except ValueError:
        number = "integers" if kind == "randint" else "numbers"
        raise ValueError(f"--space {key}={text}: {kind} needs LO:HI ({number})") from None
    if not low < high:
        raise ValueError(f"--space {key}={text}: LO must be below HI")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"--space {key}={text}: loguniform needs LO > 0")
    return low, high


def value_type(model: str, key: str) -> type:
    """The type of ``key``: a TrainConfig field's or the model config's (tuple for sizes)."""
    if key in TRAIN_KEYS:
        return train_type(key)
    if key not in model_keys(model):
        known = sorted({*TRAIN_KEYS, *model_keys(model)})
        raise ValueError(f"--space: unknown key {key!r} for {model}; known: {known}")
    hint = get_type_hints(MODEL_CONFIGS[model])[key]
    return getattr(hint, "__origin__", hint)


def typed(model: str, key: str, value: str, text: str) -> Any:
    """One value ``key`` can take, as a trial uses it: a number in range for an optimizer
    setting; for a model hyperparameter what ``resolve_config`` makes of it (a size tuple
    stays its text, ``128,64``, as ``--param`` takes it)."""
    value = value.strip()
    if key in TRAIN_KEYS:
        try:
            number = train_type(key)(value)
        except ValueError:
            raise ValueError(f"--space {key}={text}: {value!r} is not a {key} value") from None
        if number < (1 if key == "batch_size" else 0) or (key == "lr" and number == 0):
            raise ValueError(f"--space {key}={text}: {value!r} is out of range")
        return number
    try:
        resolved = getattr(resolve_config(model, {key: value}), key)
    except ValueError as exc:
        raise ValueError(f"--space {key}={text}: {exc}") from None
    return value if isinstance(resolved, tuple) else resolved


def train_type(key: str) -> type:
    return get_type_hints(TrainConfig)[key]


def split_sample(sample: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's sampled values as (TrainConfig fields of their type, model params)."""
    train = {k: train_type(k)(v) for k, v in sample.items() if k in TRAIN_KEYS}
    params = {k: v for k, v in sample.items() if k not in TRAIN_KEYS}
    return train, params
