"""The two-tower retrieval model: ViT image encoder + hierarchical recipe encoder in one embedding space.

Inference uses only `encode_image` / `encode_recipe` (L2-normalized); training objectives also read the
token-level features through `image_features` / `recipe_features`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from malm.training.config import ModelConfig
from malm.training.models.hybrid import build_image_encoder
from malm.training.models.recipe import HierarchicalRecipeEncoder, RecipeFeatures
from malm.training.models.vit import ImageFeatures


class RetrievalModel(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.image_encoder = build_image_encoder(config.image)  # ViT or hybrid ViT
        self.image_proj = nn.Linear(config.image.width, config.embed_dim)
        self.recipe_encoder = HierarchicalRecipeEncoder(config.recipe, vocab_size, config.embed_dim)

    def image_features(self, images: Tensor, keep_idx: Tensor | None = None) -> ImageFeatures:
        return self.image_encoder(images, keep_idx)

    def project_image(self, cls: Tensor) -> Tensor:
        """[CLS] [B, W] -> L2-normalized embedding [B, D]."""
        return F.normalize(self.image_proj(cls).float(), dim=-1)

    def recipe_features(self, title: Tensor, ingredients: Tensor, instructions: Tensor) -> RecipeFeatures:
        return self.recipe_encoder(title, ingredients, instructions)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.project_image(self.image_features(images).cls)

    def encode_recipe(self, title: Tensor, ingredients: Tensor, instructions: Tensor) -> Tensor:
        return F.normalize(self.recipe_features(title, ingredients, instructions).embedding.float(), dim=-1)

    def image_backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters that train at `train.image_lr` (and freeze for `freeze_image_epochs`)."""
        return list(self.image_encoder.parameters())

    def image_stem_parameters(self) -> list[nn.Parameter]:
        """A hybrid's pretrained CNN stem (trains at `train.stem_lr` unless frozen); empty for a plain ViT."""
        stem = getattr(self.image_encoder, "stem_parameters", None)
        return stem() if stem is not None else []
