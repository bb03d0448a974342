"""Vision Transformer image encoder: [CLS] + patch tokens, pre-norm blocks, learnable position embedding.

The blocks are the shared `transformer.ResidualAttentionBlock` (SDPA attention).
Module and parameter names follow timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`) so timm weights
load unchanged and open_clip weights load through a key map (`init_weights.py`).

Masking (MAE style): `forward(images, keep_idx)` adds the position embedding to every patch, then keeps
only the patches in `keep_idx` [B, K], so the blocks see the visible patches only.
`fill_masked(tokens, keep_idx)` puts a learnable mask token (+ its position embedding) back at the
masked positions, giving a full [B, P, W] sequence for matching / distillation heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from malm.training.config import ImageEncoderConfig
from malm.training.models.transformer import ResidualAttentionBlock


@dataclass
class ImageFeatures:
    cls: Tensor  # [B, W] final-norm [CLS] token
    tokens: Tensor  # [B, P, W] (or [B, K, W] with keep_idx) final-norm patch tokens
    keep_idx: Tensor | None = None  # [B, K] the visible patch indices tokens correspond to, or None (all)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # [B, P, W], row-major patch order


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_patches = cfg.num_patches
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, cfg.width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps) if cfg.norm_pre else nn.Identity()
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, act=cfg.act, eps=cfg.layer_norm_eps,
                                   dropout=cfg.dropout, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @property
    def width(self) -> int:
        return self.cfg.width

    def forward(self, images: Tensor, keep_idx: Tensor | None = None) -> ImageFeatures:
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        if keep_idx is not None:
            # Position embedding is added before dropping, so each visible patch keeps its place.
            x = torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.norm_pre(torch.cat([cls, x], dim=1))
        for block in self.blocks:
            x = block(x)[0]
        x = self.norm(x)
        return ImageFeatures(cls=x[:, 0], tokens=x[:, 1:], keep_idx=keep_idx)

    def fill_masked(self, tokens: Tensor, keep_idx: Tensor, num_patches: int | None = None) -> Tensor:
        """[B, K, W] visible tokens -> [B, P, W]: mask token + position embedding where a patch was dropped."""
        p = num_patches or self.num_patches
        b, _, w = tokens.shape
        full = (self.mask_token + self.pos_embed[:, 1 : 1 + p]).to(tokens.dtype).expand(b, p, w)
        return full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, w), tokens)


def random_keep_idx(batch: int, num_patches: int, mask_ratio: float, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random visible patches [B, K], K = round(P * (1 - ratio)) (at least 1), sorted."""
    keep = max(1, int(round(num_patches * (1.0 - mask_ratio))))
    noise = torch.rand(batch, num_patches, generator=generator, device="cpu")
    idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    return idx.to(device, non_blocking=True)  # a blocking host->GPU copy would wait for the queue
