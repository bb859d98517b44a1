"""xDeepFM (Lian et al. 2018) as a single-task baseline: independent CTR and CVR nets."""

from __future__ import annotations

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import XDeepFMConfig
from train.layers import CIN, MLP, FeatureEmbedding, LinearTerm
from train.models.base import TwoNetModel


class XDeepFMNet(nn.Module):
    """logit = linear + CIN + DNN over all fields (sequences mean-pooled)."""

    def __init__(self, spec: FeatureSpec, cfg: XDeepFMConfig) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.dense_log1p)
        self.linear = LinearTerm(spec, cfg.dense_log1p)
        num_fields = self.embedding.num_fields
        self.cin = CIN(num_fields, cfg.cin_layers, cfg.cin_split_half)
        self.dnn = MLP(
            num_fields * cfg.embedding_dim,
            cfg.dnn_hidden,
            output_dim=1,
            **cfg.mlp_options(),
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding.pooled(batch)
        logit = self.linear(batch) + self.cin(emb) + self.dnn(emb.flatten(1))
        return logit.squeeze(-1)


class XDeepFM(TwoNetModel):
    name = "xdeepfm"

    def __init__(self, spec: FeatureSpec, cfg: XDeepFMConfig) -> None:
        if not cfg.cin_layers:
            raise ValueError("xdeepfm: cin_layers must name at least one layer")
        super().__init__(spec, cfg, XDeepFMNet)
