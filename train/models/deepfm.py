"""DeepFM (Guo et al. 2017) as a single-task baseline: independent CTR and CVR nets."""

from __future__ import annotations

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import DeepFMConfig
from train.layers import MLP, FeatureEmbedding, FMInteraction, LinearTerm
from train.models.base import TwoNetModel


class DeepFMNet(nn.Module):
    """logit = linear + FM + DNN over all fields (sequences mean-pooled)."""

    def __init__(self, spec: FeatureSpec, cfg: DeepFMConfig) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.dense_log1p)
        self.linear = LinearTerm(spec, cfg.dense_log1p)
        self.fm = FMInteraction()
        self.dnn = MLP(
            self.embedding.num_fields * cfg.embedding_dim,
            cfg.dnn_hidden,
            output_dim=1,
            **cfg.mlp_options(),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding.pooled(batch)
        logit = self.linear(batch) + self.fm(emb) + self.dnn(emb.flatten(1))
        return logit.squeeze(-1)


class DeepFM(TwoNetModel):
    name = "deepfm"

    def __init__(self, spec: FeatureSpec, cfg: DeepFMConfig) -> None:
        super().__init__(spec, cfg, DeepFMNet)
