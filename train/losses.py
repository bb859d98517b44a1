"""Losses on logits. Every function returns a scalar mean; masks select the rows that count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_LOG_RATE = 30.0  # exp(30) ~ 1e13 views: far beyond any session, far below float overflow


def bce_with_logits(
    logit: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE over the rows where ``mask`` is true (all rows without a mask).

    With no selected row the loss is 0 and its gradient exactly 0 (the CVR net of a single-task
    model sees nothing from a batch without clicks)."""
    losses = F.binary_cross_entropy_with_logits(logit, target.float(), reduction="none")
    if mask is None:
        return losses.mean()
    m = mask.to(losses.dtype)
    return (losses * m).sum() / m.sum().clamp(min=1.0)


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)) for log_p < 0, stable on both ends (Maechler 2012)."""
    near_zero = log_p > -0.6931471805599453
    # feed each branch only inputs where it is finite, so torch.where has no NaN gradient
    a = torch.where(near_zero, log_p, torch.full_like(log_p, -1.0))
    b = torch.where(near_zero, torch.full_like(log_p, -1.0), log_p)
    return torch.where(near_zero, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def ctcvr_bce(
    ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean BCE(target, pCTR * pCVR) over all rows, computed in log space from the two logits."""
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    # keep log_p < 0 strictly so log(1 - p) stays finite (p never rounds to exactly 1)
    log_p = log_p.clamp(max=-(torch.finfo(log_p.dtype).tiny ** 0.5))
    y = target.float()
    return -(y * log_p + (1.0 - y) * log1mexp(log_p)).mean()


def entire_space_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """ESMM: BCE(click, pCTR) + BCE(conversion, pCTCVR), both over ALL impressions.

    ``conversion`` is already click AND purchase, so it is the CTCVR label. The CVR logit is
    only ever trained through pCTCVR, never on the clicked subsample."""
    return {
        "ctr_loss": bce_with_logits(ctr_logit, click),
        "ctcvr_loss": ctcvr_bce(ctr_logit, cvr_logit, conversion),
    }


def conventional_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Baselines: BCE(click) on all rows; BCE(conversion) on clicked rows only (masked)."""
    return {
        "ctr_loss": bce_with_logits(ctr_logit, click),
        "cvr_loss": bce_with_logits(cvr_logit, conversion, mask=click > 0.5),
    }


def poisson_loss(log_rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean Poisson NLL of counts given a log-rate, log(k!) included: >= 0, so train_loss reads
    as a sum of NLLs (the constant changes no gradient)."""
    k = counts.float()
    nll = F.poisson_nll_loss(log_rate.clamp(max=MAX_LOG_RATE), k, log_input=True, full=False)
    return nll + torch.lgamma(k + 1.0).mean()
