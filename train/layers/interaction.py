"""Explicit feature interactions over stacked field embeddings (B, F, D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.layers.embedding import FeatureEmbedding


class FMInteraction(nn.Module):
    """Second-order factorization machine term: 0.5 * sum_d[(sum_f e)^2 - sum_f e^2] -> (B, 1)."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)


class CIN(nn.Module):
    """Compressed Interaction Network (xDeepFM): vector-wise interactions -> logit (B, 1)."""

    def __init__(self, num_fields: int, layer_sizes: Sequence[int], split_half: bool = True):
        super().__init__()
        self.split_half = split_half
        self.convs = nn.ModuleList()
        prev, out_dim = num_fields, 0
        for i, size in enumerate(layer_sizes):
            last = i == len(layer_sizes) - 1
            if split_half and not last and size % 2:
                raise ValueError(f"CIN layer sizes must be even with split_half: {layer_sizes}")
            self.convs.append(nn.Conv1d(num_fields * prev, size, kernel_size=1))
            # with split_half, half of a hidden layer goes to the output, half to the next layer
            prev = size // 2 if split_half and not last else size
            out_dim += prev
        self.output = nn.Linear(out_dim, 1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        batch, num_fields, dim = emb.shape
        x0, h, pooled = emb, emb, []
        for i, conv in enumerate(self.convs):
            z = torch.einsum("bmd,bhd->bhmd", x0, h).reshape(batch, -1, dim)
            h = torch.relu(conv(z))
            if self.split_half and i < len(self.convs) - 1:
                h, out = torch.split(h, h.shape[1] // 2, dim=1)
            else:
                out = h
            pooled.append(out.sum(dim=2))
        return self.output(torch.cat(pooled, dim=1))


class LinearTerm(nn.Module):
    """First-order term: sum of per-field scalar weights (1-dim embeddings) plus a bias -> (B, 1).
    Sequences contribute the mean weight of their valid entries."""

    def __init__(self, spec: FeatureSpec, dense_log1p: bool = True) -> None:
        super().__init__()
        self.weights = FeatureEmbedding(spec, 1, dense_log1p=dense_log1p)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.weights.pooled(batch).sum(dim=1) + self.bias
