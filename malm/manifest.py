"""Typed sections of the bundle manifest (stdlib only): validated once here, read by the SDK, written by
`BundleWriter`'s setters. The first section is the int8 self-check; the rest of the manifest (issue #12,
item 1) is still a dict and moves here section by section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from malm.errors import BundleError

DEFAULT_MIN_COSINE = 0.98


@dataclass(frozen=True)
class SelfCheckSection:
    """Reference inputs and their fp32 embeddings, run by the SDK where the bundle lands (malm/sdk/selfcheck.py)."""

    inputs: str  # bundle path of [N,3,H,W] float16 preprocessed images (.npy)
    fp32_embeddings: str  # bundle path of [N,D] float32 embeddings of exactly those inputs by the fp32 ONNX
    count: int  # N
    min_cosine: float = DEFAULT_MIN_COSINE  # an encoder whose mean cosine to them is lower is not used
    expected: Mapping[str, float] = field(default_factory=dict)  # int8 variant -> its exact-math cosine at export
    exported_on: str = ""  # the exporting CPU, in words (malm.cpu.description)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> SelfCheckSection:
        if not isinstance(d, Mapping):
            raise BundleError(f"{where}: bad selfcheck section (not an object)")
        for key in ("inputs", "fp32_embeddings"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BundleError(f"{where}: bad selfcheck section (needs '{key}' file name)")
        mc = d.get("min_cosine", DEFAULT_MIN_COSINE)
        if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not math.isfinite(mc) or not -1 <= mc <= 1:
            raise BundleError(f"{where}: selfcheck min_cosine must be a number in [-1, 1], got {mc!r}")
        count = d.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise BundleError(f"{where}: selfcheck count must be a non-negative integer, got {count!r}")
        expected = d.get("expected") or {}
        if not isinstance(expected, Mapping) or not all(isinstance(v, (int, float)) for v in expected.values()):
            raise BundleError(f"{where}: selfcheck expected must map encoder names to cosines")
        return cls(d["inputs"], d["fp32_embeddings"], count, float(mc), dict(expected), str(d.get("exported_on", "")))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "fp32_embeddings": self.fp32_embeddings, "count": self.count,
                "min_cosine": self.min_cosine, "expected": dict(self.expected), "exported_on": self.exported_on}
