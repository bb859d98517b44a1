"""Base class every model derives from, and the output contract.

A model reads the FeatureSpec, returns logits for CTR and CVR (and a log-rate of further views
if it has an exploration tower); the base class turns them into the output contract:

    ctr_logit, cvr_logit (B,); pctr, pcvr, pctcvr = pctr * pcvr (B,) in [0, 1];
    expected_views (B,) >= 0 (zeros without an exploration tower);
    log_views (B,) only when has_exploration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import ModelConfig
from train.losses import MAX_LOG_RATE, conventional_loss, entire_space_loss, poisson_loss

Logits = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # ctr, cvr, log_views
PREDICTIONS = ("pctr", "pcvr", "pctcvr", "expected_views")  # what every model returns per row


class BaseModel(nn.Module):
    name: ClassVar[str] = ""
    has_exploration: ClassVar[bool] = False
    entire_space: ClassVar[bool] = False  # ESMM loss (True) or CTR all rows + CVR on clicks

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        check_spec(spec, self.name)
        self.spec = spec
        self.cfg = cfg
        self.config: dict = cfg.to_dict()

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctr_logit, cvr_logit, log_views = self.logits(batch)
        pctr, pcvr = torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
        out = {
            "ctr_logit": ctr_logit,
            "cvr_logit": cvr_logit,
            "pctr": pctr,
            "pcvr": pcvr,
            "pctcvr": pctr * pcvr,
        }
        if log_views is None:
            out["expected_views"] = torch.zeros_like(pctr)
        else:
            out["log_views"] = log_views
            out["expected_views"] = torch.exp(log_views.clamp(max=MAX_LOG_RATE))
        return out

    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Total ``loss`` plus its unweighted components."""
        fn = entire_space_loss if self.entire_space else conventional_loss
        parts = fn(outputs["ctr_logit"], outputs["cvr_logit"], batch["click"], batch["conversion"])
        second = parts.get("ctcvr_loss", parts.get("cvr_loss"))
        total = self.cfg.ctr_weight * parts["ctr_loss"] + self.cfg.cvr_weight * second
        if self.has_exploration:
            parts["views_loss"] = poisson_loss(outputs["log_views"], batch["n_future_views"])
            total = total + self.cfg.explore_weight * parts["views_loss"]
        return {"loss": total, **parts}


class TwoNetModel(BaseModel):
    """Single-task baseline: two independent networks (own embeddings) in one module.

    The CTR net is trained on all rows, the CVR net on clicked rows only (masked loss)."""

    def __init__(
        self,
        spec: FeatureSpec,
        cfg: ModelConfig,
        net: Callable[[FeatureSpec, ModelConfig], nn.Module],
    ) -> None:
        super().__init__(spec, cfg)
        self.ctr_net = net(spec, cfg)
        self.cvr_net = net(spec, cfg)

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        return self.ctr_net(batch), self.cvr_net(batch), None


def check_spec(spec: FeatureSpec, model: str) -> None:
    """ValueError (one line) for a spec no model can use."""
    if not spec.fields:
        raise ValueError(f"{model}: the feature spec has no feature fields")
    for f in spec.fields:
        if f.kind not in ("sparse", "dense", "sequence"):
            raise ValueError(f"{model}: field {f.name!r} has unknown kind {f.kind!r}")
        if f.kind != "dense" and not f.vocab:
            raise ValueError(f"{model}: {f.kind} field {f.name!r} has no vocab")
    if spec.sequence and spec.max_len < 1:
        raise ValueError(f"{model}: sequence fields need max_len >= 1, got {spec.max_len}")
