"""Where the training loop's metrics go: `metrics.jsonl` always, plus `--report-to tensorboard|csv`.

The loop calls one object, where it used to append to metrics.jsonl:

    log = MetricsLog(run_dir, report_to=("csv",), resume_step=None)
    log.write({"type": "train", "step": 10, "epoch": 0.5, "loss": 1.2, ...})
    log.close()

- jsonl: `metrics.jsonl`, one record a line (the source of truth; `malm plot` reads it).
- csv: `metrics.csv` in long form (`type,step,epoch,name,value`, one scalar a row), so records with
  different keys (train / val) and new keys share one stable header. Rebuilt from metrics.jsonl on
  resume, so it never holds the lines a killed run wrote after its last checkpoint.
- tensorboard: event files in `RUN/tensorboard/` through tensorboardX (`pip install 'malm[tensorboard]'`),
  scalars named `train/loss`, `val/im2recipe/R1` (TensorBoard has no `@` in tags), …; on resume the writer purges events past the step
  continued from.

Off by default; no reporter is a dependency of the runtime.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from malm._atomic import atomic_path
from malm.errors import MalmError

REPORTERS = ("tensorboard", "csv")
JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TB_DIR = "tensorboard"
CSV_HEADER = ("type", "step", "epoch", "name", "value")


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Numeric leaves of a record as ("im2recipe/R@1", 41.0); bookkeeping keys left out."""
    for key, value in record.items():
        if not prefix and key in ("type", "step", "epoch"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, name + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield name, float(value)


def parse_report_to(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`--report-to tensorboard --report-to csv` or `--report-to tensorboard,csv` → validated names."""
    names = tuple(dict.fromkeys(v.strip() for value in (values or ()) for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in REPORTERS and n != "none"]
    if unknown:
        raise MalmError(f"--report-to: unknown {', '.join(unknown)}; choose from {', '.join(REPORTERS)}")
    return tuple(n for n in names if n != "none")


class _Csv:
    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.path = run_dir / CSV
        if resume:
            self._rebuild(run_dir / JSONL)
        else:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(CSV_HEADER)

    def _rebuild(self, jsonl: Path) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for record in read_records(jsonl):
                self._rows(w, record)

    @staticmethod
    def _rows(w: Any, record: dict[str, Any]) -> None:
        for name, value in scalars(record):
            w.writerow((record.get("type", ""), record.get("step", ""), record.get("epoch", ""), name, value))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            self._rows(csv.writer(f), record)

    def close(self) -> None:
        pass


class _TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise MalmError("--report-to tensorboard needs tensorboardX: pip install 'malm[tensorboard]'") from None
        # purge_step: a resumed run drops the events a killed run logged after its checkpoint.
        self.writer = SummaryWriter(str(run_dir / TB_DIR), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        kind, step = record.get("type", "train"), int(record.get("step", 0))
        if kind == "done":
            return
        for name, value in scalars(record):
            # TensorBoard tags allow [A-Za-z0-9_./-] only: R@1 is written R1.
            self.writer.add_scalar(f"{kind}/{name}".replace("@", ""), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsLog:
    """metrics.jsonl plus the chosen reporters; a no-op object on ranks other than 0 (enabled=False)."""

    def __init__(self, run_dir: Path, report_to: tuple[str, ...] = (), resume_step: int | None = None,
                 enabled: bool = True) -> None:
        self.path = run_dir / JSONL
        self.enabled = enabled
        self.reporters: list[Any] = []
        if not enabled:
            return
        for name in parse_report_to(report_to):
            self.reporters.append(_Csv(run_dir, resume_step is not None) if name == "csv"
                                  else _TensorBoard(run_dir, resume_step))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for r in self.reporters:
            r.write(record)

    def close(self) -> None:
        for r in self.reporters:
            r.close()
        self.reporters = []


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a killed run) is skipped, any other bad line is an error."""
    if not path.is_file():
        raise MalmError(f"{path}: no such file (is this a training run directory?)")
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise MalmError(f"{path}: line {i + 1} is not JSON") from None
    return records
