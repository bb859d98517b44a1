"""Feature embeddings read from the FeatureSpec: one table per shared vocabulary.

Sparse fields give (B, D), sequence fields (B, L, D) (padding id 0 embeds to zeros), dense
fields a learned vector scaled by the value (B, D). Key and label columns are never read.
"""

from __future__ import annotations

import torch
from torch import nn

from etl.spec import FeatureSpec, FieldSpec


class FeatureEmbedding(nn.Module):
    """Embeds every feature field of ``spec``; fields sharing a ``vocab`` share one table."""

    def __init__(self, spec: FeatureSpec, embedding_dim: int, dense_log1p: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.embedding_dim = embedding_dim
        self.dense_log1p = dense_log1p
        # max(.., 2): a table always holds padding (0) and unknown (1)
        self.tables = nn.ModuleDict(
            {
                vocab: nn.Embedding(max(size, 2), embedding_dim, padding_idx=0)
                for vocab, size in spec.vocab_sizes.items()
            }
        )
        self._vocab_fields: dict[str, list[FieldSpec]] = {}
        for f in spec.fields:
            if f.kind != "dense":
                self._vocab_fields.setdefault(f.vocab, []).append(f)
        self.dense_weight = nn.ParameterDict(
            {f.name: nn.Parameter(torch.empty(embedding_dim)) for f in spec.dense}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=1e-2 if self.embedding_dim > 1 else 1e-3)
            with torch.no_grad():
                table.weight[0].zero_()
        for w in self.dense_weight.values():
            nn.init.normal_(w, std=1e-2)

    def embed_field(self, f: FieldSpec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) for sparse and dense fields, (B, L, D) for sequence fields."""
        x = batch[f.name]
        if f.kind == "dense":
            x = x.float()
            if self.dense_log1p:
                x = torch.sign(x) * torch.log1p(x.abs())
            return x.unsqueeze(-1) * self.dense_weight[f.name]
        return self.tables[f.vocab](x.long())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f.name: self.embed_field(f, batch) for f in self.spec.fields}

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, F, D): every field, sequences mean-pooled over their valid entries (order lost)."""
        embs = self(batch)
        if self.spec.sequence:
            mask = sequence_mask(batch, self.spec)
            for f in self.spec.sequence:
                embs[f.name] = masked_mean(embs[f.name], mask)
        return torch.stack([embs[f.name] for f in self.spec.fields], dim=1)

    def squared_norm(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of squares of the table rows ``batch`` looks up, each distinct row once.

        The L2 term of ``ModelConfig.embedding_l2``: rows no batch uses are never shrunk, so a
        rare id keeps what it learned (weight decay would pull every row to zero every step).
        """
        terms = []
        for vocab, table in self.tables.items():
            fields = self._vocab_fields.get(vocab, ())
            ids = [batch[f.name].reshape(-1) for f in fields if f.name in batch]
            if ids:
                rows = torch.unique(torch.cat(ids).long())
                terms.append(table.weight[rows].pow(2).sum())
        return torch.stack(terms).sum() if terms else torch.zeros(())

    @property
    def num_fields(self) -> int:
        return len(self.spec.fields)


def sequence_lengths(batch: dict[str, torch.Tensor], spec: FeatureSpec) -> torch.Tensor:
    """(B,) valid history lengths in [0, max_len]; from ``spec.length_field`` when present."""
    if spec.length_field in batch:
        return batch[spec.length_field].long().clamp(0, spec.max_len)
    # fallback: right-padded ids, so length = number of non-padding entries of the first field
    return (batch[spec.sequence[0].name] != 0).sum(dim=1)


def sequence_mask(batch: dict[str, torch.Tensor], spec: FeatureSpec) -> torch.Tensor:
    """(B, L) bool, True on valid (non-padding) history positions."""
    lengths = sequence_lengths(batch, spec)
    steps = torch.arange(spec.max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, D) over valid positions; zeros for an empty history."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
