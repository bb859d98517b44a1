"""Ranking policies: how the model's outputs for a slate of candidates become a ranking.

The home of every policy the platform serves and simulates. Today one score:
``ranking_score(outputs, beta)`` = pCTCVR + beta * E[further views], the incentivized-search
ranking (beta = 0 ranks by purchase likelihood alone).
"""

from __future__ import annotations

import torch


def ranking_score(outputs: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """Incentivized ranking score: pCTCVR + beta * E[further views] (beta = 0: plain ranking)."""
    if beta == 0:
        return outputs["pctcvr"]
    return outputs["pctcvr"] + beta * outputs["expected_views"]
