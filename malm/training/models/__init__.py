"""Models: ViT and hybrid image encoders, the hierarchical recipe encoder, the two-tower retrieval model,
matching heads and EfficientNet-Lite0 (`efficientnet_lite`, its torch-free stage table `lite0_stages`).

Import from the modules (`malm.training.models.retrieval`...): this package imports nothing, so the
training config can read `lite0_stages` without torch.
"""
