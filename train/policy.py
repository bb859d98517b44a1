"""Ranking policies over model outputs."""

from train.models.base import ranking_score

__all__ = ["ranking_score"]
