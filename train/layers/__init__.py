"""Reusable layers, grouped by type (FuxiCTR style)."""

from train.layers.embedding import FeatureEmbedding, masked_mean, sequence_lengths, sequence_mask
from train.layers.interaction import CIN, FMInteraction, LinearTerm
from train.layers.mlp import MLP
from train.layers.sequence import GRUEncoder, TargetAttention

__all__ = [
    "CIN",
    "MLP",
    "FMInteraction",
    "FeatureEmbedding",
    "GRUEncoder",
    "LinearTerm",
    "TargetAttention",
    "masked_mean",
    "sequence_lengths",
    "sequence_mask",
]
