"""The proposal's model: a GRU over the behavior sequence plus user/ad/context embeddings,
shared by a CTR tower, a CVR tower (ESMM entire-space loss) and an exploration tower that
predicts the log-rate of further item views in the session (Poisson loss).

The GRU input at each step concatenates the embeddings of every sequence field. Target
attention uses the candidate ad as query: the sparse fields sharing a vocab with a sequence
field (``cate`` for ``hist_cate``, name match preferred), else every non-sequence field."""

from __future__ import annotations

import torch

from etl.spec import FeatureSpec, FieldSpec
from train.config import RNNMTLConfig
from train.layers import (
    MLP,
    FeatureEmbedding,
    GRUEncoder,
    TargetAttention,
    sequence_lengths,
    sequence_mask,
)
from train.models.base import BaseModel, Logits


class RNNMTL(BaseModel):
    name = "rnn_mtl"
    entire_space = True
    has_exploration = True

    def __init__(self, spec: FeatureSpec, cfg: RNNMTLConfig) -> None:
        super().__init__(spec, cfg)
        if not spec.sequence:
            raise ValueError("rnn_mtl: the feature spec has no sequence fields to run the GRU on")
        dim = cfg.embedding_dim
        self.embedding = FeatureEmbedding(spec, dim, cfg.dense_log1p)
        self.context_fields = [f.name for f in spec.fields if f.kind != "sequence"]
        self.gru = GRUEncoder(len(spec.sequence) * dim, cfg.gru_hidden, cfg.gru_layers, cfg.packed)
        shared_in = cfg.gru_hidden + len(self.context_fields) * dim
        self.query_fields: list[str] = []
        if cfg.attention:
            self.query_fields = candidate_fields(spec) or self.context_fields
            if not self.query_fields:
                raise ValueError(
                    "rnn_mtl: attention needs non-sequence fields; set attention=false"
                )
            self.attention = TargetAttention(
                len(self.query_fields) * dim, cfg.gru_hidden, cfg.attention_hidden
            )
            shared_in += cfg.gru_hidden
        mlp = {
            "activation_name": cfg.activation,
            "dropout": cfg.dropout,
            "batch_norm": cfg.batch_norm,
        }
        self.shared = MLP(shared_in, cfg.shared_hidden, **mlp)
        self.towers = torch.nn.ModuleDict(
            {
                t: MLP(self.shared.output_dim, cfg.tower_hidden, output_dim=1, **mlp)
                for t in ("ctr", "cvr", "views")
            }
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        embs = self.embedding(batch)
        steps = torch.cat([embs[f.name] for f in self.spec.sequence], dim=-1)  # (B, L, S*D)
        states, last = self.gru(steps, sequence_lengths(batch, self.spec))
        parts = [last] + [embs[n] for n in self.context_fields]
        if self.query_fields:
            query = torch.cat([embs[n] for n in self.query_fields], dim=-1)
            parts.append(self.attention(query, states, sequence_mask(batch, self.spec)))
        h = self.shared(torch.cat(parts, dim=-1))
        return tuple(self.towers[t](h).squeeze(-1) for t in ("ctr", "cvr", "views"))


def candidate_fields(spec: FeatureSpec) -> list[str]:
    """For each sequence field, the sparse field of the same vocab (name match preferred)."""
    found: list[str] = []
    for seq in spec.sequence:
        same: list[FieldSpec] = [f for f in spec.sparse if f.vocab == seq.vocab]
        if not same:
            continue
        bare = seq.name.removeprefix("hist_")
        pick = next((f for f in same if f.name == bare), same[0])
        if pick.name not in found:
            found.append(pick.name)
    return found
