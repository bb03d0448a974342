"""What every export target builds from: one `ExportContext`, and what it gives back: `Artifacts`.

`run_export` (exporter.py) fills the context in order — teacher, student, evaluation data, reference
metrics — then calls the target's `build(ctx) -> Artifacts`; the bundle is written once, from the returned
artifacts, by `exporter.write_bundle`. A target never touches the bundle or the report directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from malm.export import report as rp
from malm.export.registry import ExportOptions
from malm.preprocess import PreprocessConfig

Log = Callable[[str], None]
# `with progress(label, total) as advance: advance(n)` — malm.progress.progress fits; the library never draws.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


@dataclass(frozen=True)
class Teacher:
    """The trained run being exported."""

    run: Path  # the training run directory
    tag: str  # which checkpoint of it (best | last)
    model: Any  # RetrievalModel, eval mode
    config: Any  # ExperimentConfig
    vocab: Any  # malm.text.Vocabulary it was trained with
    sha256: str  # of {tag}.safetensors: what every encoder in the bundle must come from
    preprocess: PreprocessConfig  # the teacher's own eval transform

    @property
    def embed_dim(self) -> int:
        return int(self.config.model.embed_dim)


@dataclass(frozen=True)
class Student:
    """The image encoder that gets exported: the distilled edge student, or the teacher's own tower."""

    encoder: Any  # nn.Module returning (embedding, tokens)
    preprocess: PreprocessConfig  # the deployment transform (the student's input size)
    model_hash: str  # identifies exactly these weights (teacher hash + distillation key)
    manifest: dict[str, Any] | None = None  # the manifest's "student" section (None for --student none)

    @property
    def size(self) -> int:
        return self.preprocess.size


@dataclass(frozen=True)
class EvalData:
    """Real images and their reference embeddings: parity, quality and calibration all use these."""

    prepared: Any  # PreparedData (training vocabulary and splits)
    items: list[dict[str, Any]]  # paired test items in the deployment transform
    images: np.ndarray  # their images, float32 [N, 3, S, S]
    eval_n: int  # how many of them the quality report uses
    parity_images: np.ndarray  # the first few, for ORT-vs-torch parity
    teacher_emb: np.ndarray  # teacher image embeddings of the first eval_n (teacher transform)
    recipe_emb: np.ndarray  # teacher recipe embeddings of the same pairs
    teacher_images: np.ndarray  # the first eval_n images in the teacher's own transform

    @property
    def eval_images(self) -> np.ndarray:
        return self.images[:self.eval_n]

    def calibration_paths(self, limit: int) -> list[Path]:
        return calibration_paths(self.prepared, limit)


def calibration_paths(prepared: Any, limit: int, seed: int = 0) -> list[Path]:
    """Up to `limit` training photos (one per recipe, seeded order) for int8 calibration."""
    split = prepared.split("train")
    paired = split.paired_indices()
    paths: list[Path] = []
    for k in np.random.default_rng(seed).permutation(len(paired)):
        paths.extend(split.image_paths(int(paired[int(k)]))[:1])
        if len(paths) >= limit:
            break
    return paths


@dataclass
class Artifacts:
    """What a target produced: files to move into the bundle, manifest encoder entries, report rows, notes."""

    files: list[tuple[Path, str]] = field(default_factory=list)  # (temporary file, bundle path)
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipe_selfcheck: Any = None  # malm.manifest.RecipeSelfCheckSection, when a target wrote its files

    def add(self, src: Path, rel: str, name: str, entry: dict[str, Any], row: dict[str, Any],
            variant: str | None = None) -> None:
        """One file: its manifest entry under `name` and its report row under `variant` (default `name`)."""
        self.files.append((src, rel))
        self.encoders[name] = entry
        self.variants[variant or name] = {"file": rel, **row}

    @classmethod
    def join(cls, *parts: Artifacts) -> Artifacts:
        """The parts in order (a target built in steps, each step returning its own `Artifacts`)."""
        out = cls()
        for part in parts:
            out.files += part.files
            out.encoders.update(part.encoders)
            out.variants.update(part.variants)
            out.notes += part.notes
            out.recipe_selfcheck = part.recipe_selfcheck or out.recipe_selfcheck
        return out


@dataclass(frozen=True)
class ExportContext:
    """Everything a target builds its artifacts from."""

    options: ExportOptions
    teacher: Teacher
    student: Student
    data: EvalData
    meta: dict[str, str]  # ONNX metadata every encoder carries (model hash, config, preprocess…)
    tmp: Path  # scratch directory; artifacts are moved from here into the bundle
    reference: dict[str, dict[str, Any]]  # the reference rows (teacher, student in torch) already measured
    log: Log
    progress: Progress = no_progress
    latency_runs: int = 30  # timed runs per latency measurement (0 = skip latency)

    @property
    def model_hash(self) -> str:
        return self.student.model_hash

    def meta_for(self, **extra: str) -> dict[str, str]:
        return {**self.meta, **extra}

    def quality(self, emb: np.ndarray | None, path: Path | None) -> dict[str, Any]:
        """Size, ORT latency (batch 1, 1 and 2 threads), cosine to the teacher, image→recipe retrieval."""
        row: dict[str, Any] = {}
        if path is not None:
            row["size_mb"] = round(rp.size_mb(path), 3)
        if emb is not None and self.data.eval_n:
            row["cosine_to_teacher"] = rp.cosine_mean(emb, self.data.teacher_emb)
            row["retrieval"] = rp.retrieval(emb, self.data.recipe_emb)
        if path is not None and self.latency_runs:
            for t in (1, 2):
                row[f"latency_ms_{t}t"] = round(rp.onnx_latency_ms(path, self.student.size, t,
                                                                   runs=self.latency_runs), 3)
        return row

    def onnx_entry(self, path: Path, rel: str, kind: str, precision: str, model_hash: str | None = None,
                   role: str = "image", **extra: Any) -> dict[str, Any]:
        """A manifest encoder entry for an ONNX file, with its input/output spec read from the file."""
        # on use only: loads torch
        from malm.export.onnx_export import io_spec

        return {"file": rel, "kind": kind, "role": role, "precision": precision,
                "model_hash": model_hash or self.model_hash, **io_spec(path), **extra}
