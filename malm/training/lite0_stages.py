"""EfficientNet-Lite0's stage table and input scaling: torch-free, so configs validate without torch.

The architecture built from it is `malm.training.models.efficientnet_lite`; the training config reads the
strides and channels here (`lite0_stem_stride`, `lite0_stem_channels`), so the table is written once.
"""

from __future__ import annotations

import math

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


def lite0_stem_stride(stages: int) -> int:
    """Pixels per token of the first `stages` Lite0 stages (the stem conv has stride 2)."""
    return 2 * math.prod(stage[1] for stage in LITE0_STAGES[:stages])


def lite0_stem_channels(stages: int) -> int:
    return LITE0_STAGES[stages - 1][3]


def lite0_blocks(stages: int) -> int:
    """Backbone blocks in the first `stages` stages (a hybrid stem of that many stages is these blocks)."""
    return sum(stage[4] for stage in LITE0_STAGES[:stages])
