"""MALM's matching losses, over what the matching decoder (`models/matching.py`) produces for decoded pairs.

    GlobalMatchingLoss   mode "paper": InfoNCE between each positive pair's global features (eqs. 6-7)
    LocalMatchingLoss    mode "paper": per-patch InfoNCE over the positive pairs (eqs. 8-9)
    PairMatchingLoss     InfoNCE over the *scores* of decoded pairs against decoded negative pairs (mode
                         "paper" with pair_negatives, and mode "itm"'s per-patch "decoder" score)

Mode "itm"'s matched / not-matched cross-entropy is `losses/itm.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError
from malm.training.losses.infonce import Gather, check_temperature, symmetric_infonce


class GlobalMatchingLoss(nn.Module):
    """InfoNCE between [CLS] of the attended image features and the mean attended recipe feature."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(
        self, image: torch.Tensor, recipe: torch.Tensor, gather: Gather | None = None, rank: int = 0
    ) -> torch.Tensor:
        if image.dim() != 2:
            raise MalmError(f"global matching features must be [B, D], got {tuple(image.shape)}")
        return symmetric_infonce(image, recipe, self.temperature, gather, rank)


class LocalMatchingLoss(nn.Module):
    """Per-patch InfoNCE: patch p of image i against the attention-weighted recipe summary of patch p
    of recipe i, negatives the summaries of patch p of the other samples; averaged over patches."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(
        self, patches: torch.Tensor, summaries: torch.Tensor, gather: Gather | None = None, rank: int = 0
    ) -> torch.Tensor:
        if patches.dim() != 3:
            raise MalmError(f"local matching features must be [B, P, D], got {tuple(patches.shape)}")
        # [P, B, D]: each patch position is its own contrastive problem over the batch.
        p = patches.transpose(0, 1)
        s = summaries.transpose(0, 1)
        if gather is not None:
            # the caller's gather works on dim 0; the batch is dim 1 here
            def gather_b(x: torch.Tensor) -> torch.Tensor:
                return gather(x.transpose(0, 1).contiguous()).transpose(0, 1)

            return symmetric_infonce(p, s, self.temperature, gather_b, rank)
        return symmetric_infonce(p, s, self.temperature)


class PairMatchingLoss(nn.Module):
    """InfoNCE over matching *scores* of decoded pairs: for each image, its recipe against k negative recipes
    decoded with that image; for each recipe, its image against k negative images decoded with that recipe.

    Unlike `GlobalMatchingLoss` (each sample's features decoded with its own partner only), a negative here
    is the pair itself, so the loss cannot be met by copying the partner's tokens through cross-attention.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    def forward(
        self, positive: torch.Tensor, neg_recipes: torch.Tensor, neg_images: torch.Tensor
    ) -> torch.Tensor:
        """`positive` [B] cosine scores of the pairs; `neg_recipes`, `neg_images` [B, k] scores of (image i,
        negative recipe) and (negative image, recipe i)."""
        if (
            positive.dim() != 1
            or neg_recipes.shape[0] != positive.shape[0]
            or neg_images.shape != neg_recipes.shape
        ):
            raise MalmError(
                f"pair matching expects [B], [B,k], [B,k]; got {tuple(positive.shape)}, "
                f"{tuple(neg_recipes.shape)}, {tuple(neg_images.shape)}"
            )
        labels = torch.zeros(positive.shape[0], dtype=torch.long, device=positive.device)
        i2r = torch.cat([positive[:, None], neg_recipes], 1) / self.temperature
        r2i = torch.cat([positive[:, None], neg_images], 1) / self.temperature
        return 0.5 * (F.cross_entropy(i2r, labels) + F.cross_entropy(r2i, labels))
