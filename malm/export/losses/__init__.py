"""Distillation losses, one module each: embedding cosine, relational ranking, token cosine."""

from malm.export.losses.embedding_cosine import EmbeddingCosineLoss
from malm.export.losses.relational import RelationalRankingLoss
from malm.export.losses.token_cosine import TokenCosineLoss

__all__ = ["EmbeddingCosineLoss", "RelationalRankingLoss", "TokenCosineLoss"]
