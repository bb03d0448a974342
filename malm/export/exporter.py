"""`malm export` orchestration: teacher → student → reference metrics → target → bundle.

    from malm.export import ExportOptions, ExportRequest, run_export
    report = run_export(ExportRequest(Path("runs/ht"), Path("data"), Path("bundle"), ExportOptions("onnx", int8=True)))

The steps live in `steps.py`, each target in `targets/<name>.py` (chosen through `registry.TARGETS`), and
what they share in `context.py`. This file only sequences them and writes the bundle once.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm._version import __version__
from malm.bundle import MANIFEST, BundleWriter, load_manifest, require_same_checkpoint
from malm.errors import MalmError
from malm.export import int8_gate, steps
from malm.export.context import Artifacts, ExportContext, Log, Progress, no_progress
from malm.export.matching_head import head_source
from malm.export.registry import TARGETS, ExportOptions, require
from malm.export.report import to_markdown
from malm.manifest import EmbeddingSection, EncoderEntry, PreprocessSection, TokenizerSection
from malm.model_card import refresh_model_card
from malm.preprocess import PreprocessConfig

LIBRARIES = ("torch", "onnx", "onnxruntime", "coremltools", "numpy", "tensorrt")


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path  # the training run directory
    data_dir: Path  # the benchmark / Recipe1M data (train images distil and calibrate; test images evaluate)
    bundle: Path  # output bundle directory (created or updated)
    options: ExportOptions
    distill: Any = None  # DistillConfig override (tests use a few steps); None = defaults + options.epochs
    latency_runs: int = 30  # timed runs per latency measurement (after warm-up)
    parity_images: int = 16  # real test images for the ORT-vs-torch parity check
    pretrained_student: bool = True  # start the student from ImageNet weights


def run_export(req: ExportRequest, log: Log | None = None, progress: Progress = no_progress) -> dict[str, Any]:
    """Export `req`; `log` gets the step lines (default: stderr), `progress(label, total)` draws the bars of
    distillation and int8 calibration (malm.progress.progress in the CLI; none by default)."""
    opts = req.options
    say: Log = log or (lambda m: print(m, file=sys.stderr))
    require(opts.target)

    teacher = steps.load_teacher(Path(req.checkpoint), opts.tag)
    say(f"teacher: {teacher.run} ({opts.tag}, {teacher.config.name}), embedding dim {teacher.embed_dim}, "
        f"input {teacher.preprocess.size}px")
    opts = steps.resolve_options(teacher, opts, say)  # the student and re-ranking that fit this run
    if opts.tokens and opts.target == "onnx":
        head_source(teacher.run, opts.tag)  # a head of another step than the encoders: refused before any work
    pp = steps.deploy_preprocess(teacher, opts)
    check_bundle(req.bundle, pp, teacher.sha256)
    prepared = steps.prepare_data(teacher, Path(req.data_dir))

    student = steps.make_student(teacher, opts, pp, prepared, req.distill, req.pretrained_student, say, progress)
    data = steps.eval_data(teacher, pp, prepared, Path(req.data_dir), opts.num_eval_images, req.parity_images)
    reference = steps.reference_rows(teacher, student, data, opts.tag, req.latency_runs)

    with tempfile.TemporaryDirectory(prefix="malm-export-") as tmp:
        ctx = ExportContext(opts, teacher, student, data, steps.onnx_metadata(teacher, student, opts), Path(tmp),
                            reference, say, progress, req.latency_runs)
        artifacts = TARGETS[opts.target].build(ctx)
        # The int8 gate holds every int8 encoder to the fp32 one and adds the self-check files to the artifacts.
        gate, selfcheck = int8_gate.check_export(artifacts.files, data.eval_images, data.recipe_emb, Path(tmp),
                                                 accept=opts.accept_int8_drop, say=say)
        report = _report(ctx, artifacts)
        if gate:
            report["int8_gate"] = gate
            if "recipe_int8" in artifacts.variants:  # gated in malm/export/recipe.py, listed with the image ones
                gate["variants"]["recipe_int8"] = artifacts.variants["recipe_int8"]["gate"]
        write_bundle(req.bundle, ctx, artifacts, report, selfcheck)
    if opts.tokens and "matching_head" in artifacts.encoders:
        # Calibrate the fusion weight through the bundle just written (its ONNX files, its index).
        calibration = steps.index_and_calibrate(teacher.run, opts.tag, Path(req.data_dir), req.bundle, say, progress)
        if calibration is not None:
            report["rerank"] = calibration
    report["bundle"] = str(req.bundle)
    if student.manifest:
        report["student_key"] = student.manifest["distill_key"]
    report["encoders"] = artifacts.encoders
    return report


def _report(ctx: ExportContext, artifacts: Artifacts) -> dict[str, Any]:
    opts = ctx.options
    return {"target": opts.target, "checkpoint": str(ctx.teacher.run), "tag": opts.tag, "student": opts.student,
            "image_size": ctx.student.size, "eval_pairs": ctx.data.eval_n,
            "variants": {**ctx.reference, **artifacts.variants}, "notes": list(artifacts.notes)}


def write_bundle(bundle: Path, ctx: ExportContext, artifacts: Artifacts, report: dict[str, Any],
                 selfcheck: Any = None) -> None:
    """Move the artifacts in and record them in the manifest and the (merged) report, in one staged commit."""
    teacher, config = ctx.teacher, ctx.teacher.config
    with BundleWriter(bundle) as bw:
        for src, rel in artifacts.files:
            bw.add_file(src, rel, move=True)
        vocab = teacher.run / "vocab.json"
        if vocab.is_file():
            bw.add_file(vocab, "vocab.json")
        bw.set_model({"name": config.name, "config": config.to_dict(), "hash": config.hash(),
                      "checkpoint_sha256": teacher.sha256, "tag": teacher.tag, "encoder_hash": ctx.model_hash})
        bw.set_preprocess(PreprocessSection.from_dict(ctx.student.preprocess.to_dict()))
        bw.set_embedding(EmbeddingSection(teacher.embed_dim))
        bw.add_libraries(library_versions())
        if ctx.student.manifest:
            bw.set_student(ctx.student.manifest)
        for name, entry in artifacts.encoders.items():
            bw.set_encoder(name, EncoderEntry.from_dict(entry, f"export into {bundle}", name))
        if selfcheck:
            bw.set_selfcheck(selfcheck)
        if artifacts.recipe_selfcheck:
            bw.set_recipe_selfcheck(artifacts.recipe_selfcheck)
        if vocab.is_file() and any(e.get("role") == "recipe" for e in artifacts.encoders.values()):
            # The text limits the recipe encoders were exported with, stated (docs/bundle-format.md, "Tokenizer").
            bw.set_tokenizer(TokenizerSection(**config.data.limits().to_dict()))
        bw.add_quality(report["variants"])
        merged = merge_report(bw.root, report, teacher.sha256)
        bw.write_json("report.json", merged)
        bw.write_text("report.md", to_markdown(merged))  # staged: a kill leaves the old bundle valid
    refresh_model_card(bundle)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "malm": __version__}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def check_bundle(bundle: Path, pp: PreprocessConfig, teacher_hash: str) -> None:
    """One bundle = one model and one preprocessing; refuse to mix in encoders that disagree."""
    if not (bundle / MANIFEST).exists():
        return
    section = load_manifest(bundle).preprocess
    old_pp = section.to_dict() if section else None
    if old_pp and PreprocessConfig.from_dict(old_pp) != pp:
        raise MalmError(f"--bundle {bundle} was exported with preprocessing {old_pp}, this export needs "
                        f"{pp.to_dict()} (a different --image-size?); use a new bundle directory")
    require_same_checkpoint(bundle, teacher_hash, "this checkpoint",
                            "export into a new bundle directory (or delete this one)")


def merge_report(root: Path, report: dict[str, Any], teacher_hash: str) -> dict[str, Any]:
    """Exporting several targets into one bundle accumulates their rows in one report."""
    path = root / "report.json"
    merged = {k: v for k, v in report.items() if k not in ("encoders", "bundle")}
    merged["teacher_sha256"] = teacher_hash
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("teacher_sha256") == teacher_hash:
            merged["variants"] = {**old.get("variants", {}), **report["variants"]}
            merged["notes"] = [n for n in old.get("notes", []) if n not in report["notes"]] + report["notes"]
            targets = str(old.get("target", "")).split(",") + [report["target"]]
            merged["target"] = ",".join(dict.fromkeys(targets)).strip(",")
            if "rerank" in old and "rerank" not in merged:
                merged["rerank"] = old["rerank"]  # a later target (e.g. coreml) keeps the re-ranking calibration
    return merged
