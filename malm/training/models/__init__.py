"""Models: ViT image encoder, hierarchical recipe encoder and the two-tower retrieval model."""

from malm.training.models.recipe import HierarchicalRecipeEncoder, RecipeFeatures
from malm.training.models.retrieval import RetrievalModel
from malm.training.models.vit import ImageFeatures, VisionTransformer, random_keep_idx

__all__ = [
    "HierarchicalRecipeEncoder",
    "ImageFeatures",
    "RecipeFeatures",
    "RetrievalModel",
    "VisionTransformer",
    "random_keep_idx",
]
