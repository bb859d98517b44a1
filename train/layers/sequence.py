"""Sequence encoders over right-padded behavior histories (B, L, D) with lengths (B,)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from train.layers.mlp import MLP


class GRUEncoder(nn.Module):
    """GRU over the valid prefix of each history. Returns (states (B, L, H), last (B, H));
    states past the length and the whole output of an empty history (length 0) are zeros.

    ``packed=True`` uses pack_padded_sequence; ``packed=False`` runs over the padded tensor and
    gathers the state at length - 1 (right padding never influences earlier states, so both
    agree up to float error)."""

    def __init__(self, input_dim: int, hidden: int, num_layers: int = 1, packed: bool = True):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, num_layers=num_layers, batch_first=True)
        self.packed = packed
        self.output_dim = hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        max_len = x.shape[1]
        if self.packed and len(lengths) and bool((lengths == lengths[0]).all()) and lengths[0] > 0:
            return self._same_length(x, int(lengths[0]))
        valid = torch.arange(max_len, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        safe = lengths.clamp(min=1)  # packing rejects 0; empty rows are zeroed below
        if self.packed:
            packed = pack_padded_sequence(x, safe.cpu(), batch_first=True, enforce_sorted=False)
            out, h_n = self.gru(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)
            last = h_n[-1]
        else:
            states, _ = self.gru(x)
            idx = (safe - 1).view(-1, 1, 1).expand(-1, 1, states.shape[2])
            last = states.gather(1, idx).squeeze(1)
        states = states * valid.unsqueeze(-1).to(states.dtype)
        last = last * (lengths > 0).unsqueeze(-1).to(last.dtype)
        return states, last

    def _same_length(self, x: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row ``length`` long (one request's slate): the plain GRU over that prefix is
        the packed computation without packing it."""
        states, h_n = self.gru(x[:, :length])
        pad = x.shape[1] - length
        if pad:
            states = torch.cat([states, states.new_zeros(len(x), pad, states.shape[2])], dim=1)
        return states, h_n[-1]


def distinct_rows(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of one row per distinct row of ``key``, (B,) group of each row), on key's device.

    On the CPU each row is viewed as one opaque byte string for numpy's unique (a memcmp sort,
    ~6x faster than ``torch.unique(dim=0)`` for a slate's 100 x 300 ids)."""
    if key.device.type == "cpu" and len(key):
        rows = np.ascontiguousarray(key.numpy())
        flat = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        return torch.from_numpy(first), torch.from_numpy(inverse.reshape(-1))
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.empty(
        int(inverse.max()) + 1 if len(key) else 0, dtype=torch.long, device=key.device
    )
    first.scatter_(0, inverse, torch.arange(len(key), device=key.device))
    return first, inverse


class TargetAttention(nn.Module):
    """DIN-style attention of a query (the candidate ad) over keys (GRU states or behaviors).

    Scores come from an MLP over [q, k, q - k, q * k, side] (``side``: per-step inputs that
    only score, e.g. behavior type and time gap, ``side_dim`` wide); the keys are weighted by a
    masked softmax (``softmax=True``) or, as in DIN (Zhou et al. 2018), by the raw scores, which
    keep the intensity of the match. ``project=False`` (query and key of one width, e.g. shared
    embedding tables) compares them directly. Rows with no valid key get a zero vector."""

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden: Sequence[int] = (32,),
        softmax: bool = True,
        side_dim: int = 0,
        project: bool = True,
    ):
        super().__init__()
        if not project and query_dim != key_dim:
            raise ValueError(
                f"attention without projection needs query {query_dim} == key {key_dim}"
            )
        self.query_proj = nn.Linear(query_dim, key_dim) if project else nn.Identity()
        self.score = MLP(4 * key_dim + side_dim, hidden, output_dim=1, activation_name="prelu")
        self.softmax = softmax

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
        key_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``key_index`` (B,): ``keys`` are (G, L, K) distinct rows and row b's keys are
        ``keys[key_index[b]]`` (their candidate-free projection is then computed per row of G)."""
        q = self.query_proj(query)
        hidden, keys = self._first_layer(q, keys, side, key_index)
        for layer in list(self.score)[1:]:
            hidden = _apply(layer, hidden)
        scores = hidden.squeeze(-1)
        valid = mask.to(scores.dtype)
        if self.softmax:
            # finite fill (not -inf): an all-masked row gives uniform weights, zeroed next
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=1) * valid
        else:
            weights = scores * valid
        return (weights.unsqueeze(-1) * keys).sum(dim=1)

    def _first_layer(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        side: torch.Tensor | None,
        key_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The score MLP's first Linear of [q, k, q - k, q * k, side] without building that
        (B, L, 4K) input: W = [Wq | Wk | Wd | Wp | Ws] gives (Wq + Wd) q + (Wk - Wd) k +
        Wp (q * k) + Ws side, and the query's term is computed once per row, not per step.
        Returns it and the keys per row (``keys[key_index]`` when given)."""
        first: nn.Linear = self.score[0]
        k = keys.shape[-1]
        w = first.weight
        query_term = F.linear(q, w[:, :k] + w[:, 2 * k : 3 * k], first.bias).unsqueeze(1)
        out = F.linear(keys, w[:, k : 2 * k] - w[:, 2 * k : 3 * k])
        if key_index is not None:
            out = out.index_select(0, key_index)
            keys = keys.index_select(0, key_index)
        # in place on the (B, L, H) sums: none of them is saved for the backward pass
        out = out.add_(query_term).add_(F.linear(q.unsqueeze(1) * keys, w[:, 3 * k : 4 * k]))
        if side is not None:
            out = out.add_(F.linear(side, w[:, 4 * k :]))
        return out, keys


def _apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; without autograd a one-slope PReLU runs as leaky_relu (the same
    ``x if x > 0 else a * x``, vectorised: ~5x faster on the CPU than the PReLU kernel)."""
    if isinstance(layer, nn.PReLU) and layer.num_parameters == 1 and not torch.is_grad_enabled():
        return F.leaky_relu(x, float(layer.weight))
    return layer(x)
