"""Sequence encoders over right-padded behavior histories (B, L, D) with lengths (B,)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
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


class TargetAttention(nn.Module):
    """DIN-style attention of a query (the candidate ad) over keys (the GRU states).

    Scores come from an MLP over [q, k, q - k, q * k]; a masked softmax weights the keys.
    Rows with no valid key get a zero vector."""

    def __init__(self, query_dim: int, key_dim: int, hidden: Sequence[int] = (32,)):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, key_dim)
        self.score = MLP(4 * key_dim, hidden, output_dim=1, activation_name="prelu")

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(query).unsqueeze(1).expand_as(keys)
        scores = self.score(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        # finite fill (not -inf) so an all-masked row gives uniform weights, zeroed next: no NaN
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
        return (weights.unsqueeze(-1) * keys).sum(dim=1)
