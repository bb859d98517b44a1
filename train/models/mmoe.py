"""MMoE (Ma et al. 2018): shared experts, a softmax gate and a tower per task.

Conventional multi-task training: CTR tower on all rows, CVR tower on clicked rows only."""

from __future__ import annotations

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import MMoEConfig
from train.layers import MLP, FeatureEmbedding
from train.models.base import BaseModel, Logits

TASKS = ("ctr", "cvr")


class MMoE(BaseModel):
    name = "mmoe"

    def __init__(self, spec: FeatureSpec, cfg: MMoEConfig) -> None:
        super().__init__(spec, cfg)
        if cfg.num_experts < 1 or not cfg.expert_hidden:
            raise ValueError("mmoe: needs num_experts >= 1 and a non-empty expert_hidden")
        self.embedding = FeatureEmbedding(spec, cfg.embedding_dim, cfg.dense_log1p)
        input_dim = self.embedding.num_fields * cfg.embedding_dim
        mlp = cfg.mlp_options()
        self.experts = nn.ModuleList(
            MLP(input_dim, cfg.expert_hidden, **mlp) for _ in range(cfg.num_experts)
        )
        expert_dim = cfg.expert_hidden[-1]
        self.gates = nn.ModuleDict({t: nn.Linear(input_dim, cfg.num_experts) for t in TASKS})
        self.towers = nn.ModuleDict(
            {t: MLP(expert_dim, cfg.tower_hidden, output_dim=1, **mlp) for t in TASKS}
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        x = self.embedding.pooled(batch).flatten(1)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        out = {}
        for t in TASKS:
            gate = torch.softmax(self.gates[t](x), dim=1).unsqueeze(-1)  # (B, E, 1)
            out[t] = self.towers[t]((gate * experts).sum(dim=1)).squeeze(-1)
        return out["ctr"], out["cvr"], None
