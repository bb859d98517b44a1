"""Multi-layer perceptron blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    if name.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name.lower()]()


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> [Dropout] per hidden layer, then an optional
    linear output layer of size ``output_dim`` (no activation: logits)."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (),
        output_dim: int | None = None,
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        dim = input_dim
        for units in hidden_units:
            layers.append(nn.Linear(dim, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = units
        if output_dim is not None:
            layers.append(nn.Linear(dim, output_dim))
            dim = output_dim
        super().__init__(*layers)
        self.output_dim = dim
