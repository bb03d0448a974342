"""The edge student: EfficientNet-Lite0 (`malm.training.models.efficientnet_lite`) with ImageNet weights,
a projection to the shared embedding space, and patch-like tokens from its final feature map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from malm.training.lite0_stages import HEAD_CHANNELS, LITE_MEAN, LITE_STD
from malm.training.models.efficientnet_lite import EfficientNetLite0, load_imagenet_weights


@dataclass(frozen=True)
class StudentConfig:
    embed_dim: int  # the teacher's shared embedding dimension
    token_dim: int = 0  # width of the patch tokens (the teacher's token width); 0 = no token head
    image_size: int = 224  # input side the student is distilled and exported at
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # deployment normalization (bundle preprocess)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    arch: str = "efficientnet-lite0"

    def __post_init__(self) -> None:
        if self.embed_dim <= 0 or self.token_dim < 0:
            raise ValueError(f"student: embed_dim must be > 0 and token_dim >= 0, got {self.embed_dim}, {self.token_dim}")
        if self.image_size < 32:
            raise ValueError(f"student: image_size must be >= 32 (the backbone's stride), got {self.image_size}")
        if self.arch != "efficientnet-lite0":
            raise ValueError(f"student: unknown architecture {self.arch!r}")

    def to_dict(self) -> dict[str, object]:
        return {"embed_dim": self.embed_dim, "token_dim": self.token_dim, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "arch": self.arch}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> StudentConfig:
        return cls(embed_dim=int(d["embed_dim"]), token_dim=int(d.get("token_dim", 0)),  # type: ignore[arg-type]
                   image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),  # type: ignore[arg-type]
                   arch=str(d.get("arch", "efficientnet-lite0")))


class StudentImageEncoder(nn.Module):
    """Deployment-normalized images → (L2-normalized embedding [B, D], tokens [B, h*w, Dt] or None).

    The input is normalized like the teacher's (the bundle's preprocess); a fixed per-channel affine maps it
    to Lite's own scaling, so both encoders share one preprocessing on the device.
    """

    def __init__(self, cfg: StudentConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = EfficientNetLite0()
        if pretrained:
            load_imagenet_weights(self.backbone)
        mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        # x_lite = (x * std + mean - LITE_MEAN) / LITE_STD = x * scale + shift
        self.register_buffer("in_scale", std / LITE_STD, persistent=False)
        self.register_buffer("in_shift", (mean - LITE_MEAN) / LITE_STD, persistent=False)
        self.dropout = nn.Dropout(0.2)
        self.proj = nn.Linear(HEAD_CHANNELS, cfg.embed_dim)
        self.token_proj = nn.Conv2d(HEAD_CHANNELS, cfg.token_dim, 1) if cfg.token_dim else None

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._head(self.backbone(images * self.in_scale + self.in_shift))

    def features_from_block(self, fmap: torch.Tensor, first_block: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`features` from the input of backbone block `first_block` on: distillation from a hybrid teacher
        whose frozen stem *is* this backbone's first blocks feeds their cached output here."""
        x = fmap
        for block in self.backbone._blocks[first_block:]:
            x = block(x)
        return self._head(F.relu6(self.backbone._bn1(self.backbone._conv_head(x))))

    def freeze_first_blocks(self, first_block: int) -> None:
        """Keep the ImageNet stem conv and blocks [0, first_block) fixed (no gradient, BatchNorm statistics kept)."""
        frozen = [self.backbone._conv_stem, self.backbone._bn0, *self.backbone._blocks[:first_block]]
        for module in frozen:
            module.requires_grad_(False)
            module.eval()
        self._frozen_modules = frozen

    def train(self, mode: bool = True) -> StudentImageEncoder:
        super().train(mode)
        for module in getattr(self, "_frozen_modules", ()):
            module.eval()
        return self

    def _head(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = fmap.mean(dim=(2, 3))
        emb = F.normalize(self.proj(self.dropout(pooled)), dim=-1)
        tokens = None
        if self.token_proj is not None:
            tokens = self.token_proj(fmap).flatten(2).transpose(1, 2)  # [B, h*w, Dt]
        return emb, tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)[0]

    def grid(self, image_size: int | None = None) -> tuple[int, int]:
        """Side of the token grid for an input side (stride 32, TF SAME padding)."""
        s = image_size or self.cfg.image_size
        side = s
        for _ in range(5):
            side = math.ceil(side / 2)
        return side, side
