"""Base class every model derives from, and the output contract.

A model reads the FeatureSpec, returns logits for CTR and CVR (and a log-rate of further views
if it has an exploration tower); the base class adds one learned offset to each (``output_bias``,
set to the train split's base rates by ``set_priors`` before training) and turns them into the
output contract:

    ctr_logit, cvr_logit (B,); pctr, pcvr, pctcvr = pctr * pcvr (B,) in [0, 1];
    expected_views (B,) >= 0 (zeros without an exploration tower);
    log_views (B,) only when has_exploration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import nn

from etl.spec import FeatureSpec
from train.config import ModelConfig
from train.layers.embedding import FeatureEmbedding
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
        # offsets of (ctr logit, cvr logit, log views). Initialised at the base rates: with
        # offsets at 0 a fresh model predicts pCTR ~ 0.5 against a ~5% CTR, and the first
        # steps' gradient, "lower every score", falls hardest on the inputs that are active on
        # the clicks (match flags, frequent ids), which then rank clicks BELOW chance (valid
        # CTR AUC 0.32 after 20 steps on a 2000-user world) until many steps undo it.
        # (no views offset without an exploration tower: DDP rejects unused parameters)
        self.output_bias = nn.Parameter(torch.zeros(3 if self.has_exploration else 2))
        # the Poisson loss's divisor: the train split's mean further views (set_priors). Its
        # gradient per row, rate - count, is ~std(count) (~11 on the quickstart world) against
        # a BCE's ~0.1; unscaled, explore_weight 0.1 let the views task drive the shared layers
        # and cost rnn_mtl 0.013 test CTR AUC there (README "Training defaults").
        self.views_scale = 1.0

    def set_priors(self, priors: Mapping[str, float]) -> None:
        """Offsets = log-odds of ``ctr`` and ``cvr`` (conversions per click), log of ``views``
        (mean further views), clamped to finite values (train.data.label_priors)."""
        values = [_logit(priors["ctr"]), _logit(priors["cvr"])]
        if self.has_exploration:
            views = min(max(priors["views"], 1e-6), 1e6)
            values.append(math.log(views))
            self.views_scale = max(views, 1.0)
        with torch.no_grad():
            self.output_bias.copy_(torch.tensor(values, dtype=self.output_bias.dtype))

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctr_logit, cvr_logit, log_views = self.logits(batch)
        ctr_logit, cvr_logit = ctr_logit + self.output_bias[0], cvr_logit + self.output_bias[1]
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
            out["log_views"] = log_views = log_views + self.output_bias[2]
            out["expected_views"] = torch.exp(log_views.clamp(max=MAX_LOG_RATE))
        return out

    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Total ``loss`` plus its unweighted components (``views_loss`` enters the total
        divided by ``views_scale``)."""
        fn = entire_space_loss if self.entire_space else conventional_loss
        parts = fn(outputs["ctr_logit"], outputs["cvr_logit"], batch["click"], batch["conversion"])
        second = parts.get("ctcvr_loss", parts.get("cvr_loss"))
        total = self.cfg.ctr_weight * parts["ctr_loss"] + self.cfg.cvr_weight * second
        if self.has_exploration:
            parts["views_loss"] = poisson_loss(outputs["log_views"], batch["n_future_views"])
            total = total + self.cfg.explore_weight * parts["views_loss"] / self.views_scale
        if self.cfg.embedding_l2 > 0:
            parts["embedding_l2"] = self.embedding_l2(batch)
            total = total + self.cfg.embedding_l2 * parts["embedding_l2"]
        return {"loss": total, **parts}

    def embedding_l2(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared norm of the embedding rows ``batch`` looks up, over every table."""
        norms = [m.squared_norm(batch) for m in self.modules() if isinstance(m, FeatureEmbedding)]
        return torch.stack(norms).sum()


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


def _logit(rate: float) -> float:
    p = min(max(rate, 1e-4), 1.0 - 1e-4)
    return math.log(p / (1.0 - p))


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
