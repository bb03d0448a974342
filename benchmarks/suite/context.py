"""What every benchmark section gets: the options, a logger, the time budget and the model artifacts."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from malm.errors import MalmError

if TYPE_CHECKING:
    from benchmarks.suite.artifacts import Artifacts

SECTIONS = ("peak", "bundle", "latency", "encoder", "cold_start", "training", "index")


class SectionSkipped(Exception):
    """A section that cannot run here (a library not installed, no GPU): recorded with its reason."""


@dataclass(frozen=True)
class BenchOptions:
    out: Path  # where bench.json and bench.md are written
    work: Path  # built data / checkpoint / bundle and scratch files (reused on a re-run)
    quick: bool = False  # small sizes: a smoke test of the benchmark code, not numbers to quote
    bundle: Path | None = None  # an existing bundle to measure (else one is built at tiny scale)
    checkpoint: Path | None = None  # an existing training run (the torch teacher); else built
    data: Path | None = None  # an existing dataset (Recipe1M layout) for training / calibration
    sections: tuple[str, ...] = SECTIONS
    threads: tuple[int, ...] = (1, 2)  # thread counts for latency
    index_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    index_dim: int | None = None  # vector dimension for the index section (default: the model's)
    deploy_recipes: int = 100_000  # recipes in the deployment-size bundle (full runs)
    budget_s: float = 15 * 60  # soft limit on the whole run: slow optional measurements are skipped
    seed: int = 0
    device: str = "auto"  # training section: "cpu", "cuda" or "auto" (cuda when torch sees one)
    command: str = ""  # how the run was started, recorded in the results

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise MalmError(f"bench: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise MalmError(f"bench: thread counts must be >= 1, got {self.threads}")
        if not self.index_sizes or any(n < 100 for n in self.index_sizes):
            raise MalmError(f"bench: index sizes must be >= 100, got {self.index_sizes}")
        if self.index_dim is not None and self.index_dim < 2:
            raise MalmError(f"bench: index dim must be >= 2, got {self.index_dim}")
        for name in ("bundle", "checkpoint", "data"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise MalmError(f"bench: --{name} {path} does not exist")
        if self.deploy_recipes < 10:
            raise MalmError(f"bench: --deploy-recipes must be >= 10, got {self.deploy_recipes}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MalmError(f"bench: --device must be auto, cpu or cuda, got {self.device!r}")
        if self.budget_s <= 0:
            raise MalmError("bench: the time budget must be > 0 seconds")


@dataclass
class Context:
    options: BenchOptions
    started: float = field(default_factory=time.perf_counter)
    _artifacts: Artifacts | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # things built once and shared by sections

    def log(self, msg: str) -> None:
        # Progress goes to stderr: stdout stays free for the final summary.
        print(f"[bench {self.elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.options.budget_s - self.elapsed()

    @property
    def scratch(self) -> Path:
        path = self.options.work / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def artifacts(self) -> Artifacts:
        """The bundle / checkpoint / data to measure, built once (tiny) when not given."""
        if self._artifacts is None:
            from benchmarks.suite.artifacts import obtain

            self._artifacts = obtain(self)
        return self._artifacts


def skip(reason: str) -> SectionSkipped:
    return SectionSkipped(reason)

