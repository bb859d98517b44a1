"""DIN (Zhou et al. 2018): target attention of the candidate ad over the behavior history,
an MLP on top; here a single-task baseline like DeepFM: independent CTR and CVR nets (CTR on
all rows, CVR on clicked rows only), so that it is compared with rnn_mtl as the paper's DIN is.

Query: the embeddings of the candidate fields that share a vocabulary with a history field
(``ad`` for ``hist_item``, ``cate``, ``brand``: train.models.rnn_mtl.candidate_pairs); key at each
step: the paired history fields' embeddings from the same tables, so a step whose ids equal the
candidate's gives q - k = 0 exactly. The other history fields (behavior type, time-gap bucket)
enter the attention MLP as side inputs: they change how much a step counts, not what it
carries. Without candidate pairs, the keys are every history field. The attention weights are
DIN's raw scores (no softmax, ``attention_softmax``), so "three matching views" weighs more than
one. The MLP reads [attention pooling, mean-pooled history, every non-sequence field]; history
order is not used (hist_gap carries recency), as in DIN.
"""

from __future__ import annotations

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import DINConfig
from train.layers import MLP, FeatureEmbedding, TargetAttention, masked_mean, sequence_mask
from train.models.base import TwoNetModel
from train.models.rnn_mtl import candidate_pairs


class DINNet(nn.Module):
    """One DIN net: logit (B,) of one task."""

    def __init__(self, spec: FeatureSpec, cfg: DINConfig) -> None:
        super().__init__()
        if not spec.sequence:
            raise ValueError("din: the feature spec has no sequence fields to attend over")
        dim = cfg.embedding_dim
        self.spec = spec
        self.embedding = FeatureEmbedding(spec, dim, cfg.dense_log1p)
        pairs = candidate_pairs(spec)
        self.keys = [s for s, _ in pairs] or [f.name for f in spec.sequence]
        self.query = [c for _, c in pairs]
        self.side = [f.name for f in spec.sequence if f.name not in self.keys]
        self.context = [f.name for f in spec.fields if f.kind != "sequence"]
        if not self.context:
            raise ValueError("din: needs non-sequence fields for the candidate")
        key_dim = len(self.keys) * dim
        self.attention = TargetAttention(
            len(self.query) * dim if self.query else len(self.context) * dim,
            key_dim,
            cfg.attention_hidden,
            softmax=cfg.attention_softmax,
            side_dim=len(self.side) * dim,
            project=not self.query,
        )
        mlp_in = key_dim + len(spec.sequence) * dim + len(self.context) * dim
        self.dnn = MLP(mlp_in, cfg.dnn_hidden, output_dim=1, **cfg.mlp_options())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        embs = self.embedding(batch)
        mask = sequence_mask(batch, self.spec)
        keys = torch.cat([embs[n] for n in self.keys], dim=-1)  # (B, L, K*D)
        query = torch.cat([embs[n] for n in (self.query or self.context)], dim=-1)
        side = torch.cat([embs[n] for n in self.side], dim=-1) if self.side else None
        pooled = self.attention(query, keys, mask, side)
        history = [masked_mean(embs[f.name], mask) for f in self.spec.sequence]
        x = torch.cat([pooled, *history, *(embs[n] for n in self.context)], dim=-1)
        return self.dnn(x).squeeze(-1)


class DIN(TwoNetModel):
    name = "din"

    def __init__(self, spec: FeatureSpec, cfg: DINConfig) -> None:
        super().__init__(spec, cfg, DINNet)
