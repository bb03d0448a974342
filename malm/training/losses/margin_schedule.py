"""TNLBT's dynamic margin: the triplet margin grows from `start` to `end` as training progresses, so
the retrieval loss gets harder as the embedding gets better."""

from __future__ import annotations

import math
from dataclasses import dataclass

from malm.errors import MalmError

KINDS = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class MarginSchedule:
    start: float = 0.05  # margin at the first step
    end: float = 0.3  # margin at the last step
    kind: str = "linear"  # constant | linear | cosine | step
    steps: int = 2  # levels of the "step" schedule, evenly spaced start … end (2: start, then end at half)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MalmError(f"margin schedule kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.start < 0 or self.end < 0:
            raise MalmError(f"margins must be >= 0, got start={self.start}, end={self.end}")
        if self.steps < 2:
            raise MalmError(f"a step margin schedule needs >= 2 levels, got {self.steps}")

    def __call__(self, progress: float) -> float:
        """Margin at `progress` = step / total_steps, clamped to [0, 1]."""
        t = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.end
        if self.kind == "linear":
            f = t
        elif self.kind == "cosine":
            f = 0.5 * (1.0 - math.cos(math.pi * t))
        else:  # step: level k of steps-1 reached after k/steps of training
            f = min(int(t * self.steps), self.steps - 1) / (self.steps - 1)
        return self.start + (self.end - self.start) * f
