"""ESMM (Ma et al. 2018): shared embeddings, MLP CTR and CVR towers, entire-space loss."""

from __future__ import annotations

import torch

from etl.spec import FeatureSpec
from train.config import ESMMConfig
from train.layers import MLP, FeatureEmbedding
from train.models.base import BaseModel, Logits


class ESMM(BaseModel):
    name = "esmm"
    entire_space = True

    def __init__(self, spec: FeatureSpec, cfg: ESMMConfig) -> None:
        super().__init__(spec, cfg)
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.dense_log1p)
        input_dim = self.embedding.num_fields * cfg.embedding_dim
        mlp = cfg.mlp_options()
        self.ctr_tower = MLP(input_dim, cfg.tower_hidden, output_dim=1, **mlp)
        self.cvr_tower = MLP(input_dim, cfg.tower_hidden, output_dim=1, **mlp)

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        x = self.embedding.pooled(batch).flatten(1)
        return self.ctr_tower(x).squeeze(-1), self.cvr_tower(x).squeeze(-1), None
