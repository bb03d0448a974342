"""The steps `run_export` takes before a target builds: teacher → student → evaluation data → reference rows.

Each returns a frozen record of `malm.export.context`; none writes anything but the distillation cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from malm._version import __version__
from malm.bundle import load_manifest, sha256_path
from malm.edge_index.builder import build_index, shipped_matching_head, use_matching_head
from malm.edge_index.records import ReadReport, dedupe
from malm.errors import MalmError
from malm.export import report as rp
from malm.export import rerank_calibration as rc
from malm.export.context import EvalData, Log, Progress, Student, Teacher, no_progress
from malm.export.matching_head import head_source
from malm.export.registry import TARGETS, ExportOptions
from malm.model_card import write_model_card
from malm.preprocess import PreprocessConfig
from malm.recipe1m import load_recipe1m
from malm.sdk.examples import write_examples
from malm.training.data import RecipeImageDataset, prepare


def checkpoint_file(run: Path, tag: str) -> Path:
    path = run / f"{tag}.safetensors"
    if not path.is_file():
        tags = sorted(p.stem for p in run.glob("*.safetensors") if not p.name.endswith((".state.safetensors", ".heads.safetensors")))
        raise MalmError(f"checkpoint {run}: no {path.name} (tags present: {', '.join(tags) or 'none'}); "
                        "pick one with --tag")
    return path


def load_teacher(run: Path, tag: str) -> Teacher:
    # on use only: loads torch
    from malm.training.checkpoint import load_model

    if not run.is_dir():
        raise MalmError(f"--checkpoint {run}: not a training run directory")
    sha, _ = sha256_path(checkpoint_file(run, tag))
    loaded = load_model(run, tag)
    return Teacher(run, tag, loaded.model.eval(), loaded.config, loaded.vocab, sha, loaded.config.preprocess())


def deploy_preprocess(teacher: Teacher, options: ExportOptions) -> PreprocessConfig:
    """The transform the exported encoder takes: the teacher's, at the student's --image-size if given."""
    pp = teacher.preprocess
    size = options.image_size or pp.size
    return pp if size == pp.size else replace(pp, size=size, resize=round(size * 256 / 224))


def prepare_data(teacher: Teacher, data_dir: Path) -> Any:
    """The data with the training vocabulary and text limits, so recipe tokens mean what the teacher learned."""
    if not data_dir.is_dir():
        raise MalmError(f"--data {data_dir}: not a directory")
    prepared = prepare(data_dir, min_freq=teacher.config.data.min_freq, limits=teacher.config.data.limits())
    trained = len(teacher.vocab)
    if len(prepared.vocab) != trained:
        raise MalmError(f"--data {data_dir}: its vocabulary ({len(prepared.vocab)} words) is not the one "
                        f"{teacher.run} was trained with ({trained}); export with the training data")
    return prepared


def make_student(teacher: Teacher, options: ExportOptions, pp: PreprocessConfig, prepared: Any,
                 distill_cfg: Any, pretrained: bool, log: Log, progress: Progress = no_progress) -> Student:
    """Distil (or load from the run's cache) the edge student; `--student none` exports the teacher's tower."""
    # on use only: loads torch
    from malm.export.distill import DistillConfig, StudentFeatures, TeacherImage, distill
    from malm.export.distill import cache_key as distill_key
    from malm.export.student import StudentConfig

    if options.student == "none":
        return Student(TeacherImage(teacher.model).eval(), pp, teacher.sha256)
    width = int(teacher.config.model.image.width)
    scfg = StudentConfig(embed_dim=teacher.embed_dim, token_dim=width if options.tokens else 0, image_size=pp.size,
                         mean=pp.mean, std=pp.std)
    dcfg = distill_cfg or DistillConfig(epochs=options.epochs, token_weight=1.0 if options.tokens else 0.0)
    if options.tokens and dcfg.token_weight == 0:
        dcfg = replace(dcfg, token_weight=1.0)
    log(f"student: EfficientNet-Lite0 at {pp.size}px, distilling {dcfg.epochs} epoch(s) (cached per teacher)")
    cache = teacher.run / "export-cache"
    if not options.tokens:
        # A student distilled with tokens (e.g. for the onnx target) serves token-less targets too: reuse it.
        tok_scfg = replace(scfg, token_dim=width)
        tok_dcfg = replace(dcfg, token_weight=1.0) if dcfg.token_weight == 0 else dcfg
        if (cache / f"student-{distill_key(teacher.sha256, tok_scfg, tok_dcfg)}.safetensors").is_file():
            scfg, dcfg = tok_scfg, tok_dcfg
    result = distill(teacher.model, prepared, teacher.preprocess, scfg, dcfg, cache_dir=cache,
                     teacher_hash=teacher.sha256, progress=log, pretrained=pretrained, bar=progress)
    log(f"student {'loaded from cache' if result.cached else f'distilled in {result.seconds:.0f}s'}: {result.path}")
    info = {"arch": scfg.arch, "config": scfg.to_dict(), "distill_key": result.key, "history": result.history,
            "cached": result.cached}
    model_hash = hashlib.sha256(f"{teacher.sha256}:{result.key}".encode()).hexdigest()
    return Student(StudentFeatures(result.student).eval(), pp, model_hash, info)


def _eval_items(prepared: Any, pp: PreprocessConfig, limit: int) -> list[dict[str, Any]]:
    """The first `limit` paired test items (eval transform), falling back to val when test has no photos."""
    for split in ("test", "val"):
        if split not in prepared.splits:
            continue
        ds = RecipeImageDataset(prepared, split, pp, train=False)
        if len(ds):
            return [ds[i] for i in range(min(limit, len(ds)))]
    return []


def _images(items: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([np.asarray(it["image"]) for it in items]).astype(np.float32)


def eval_data(teacher: Teacher, pp: PreprocessConfig, prepared: Any, data_dir: Path, eval_images: int,
              parity_images: int) -> EvalData:
    """Real test photos in the deployment transform, and the teacher's embeddings of them and their recipes."""
    # on use only: loads torch
    from malm.training.embed import embed_images, embed_recipes

    items = _eval_items(prepared, pp, max(eval_images, parity_images))
    if not items:
        raise MalmError(f"--data {data_dir}: no test (or val) images to check the export with")
    images = _images(items)
    eval_n = min(eval_images, len(items))
    # The teacher sees its own transform (a student at another --image-size sees the deployment one).
    teacher_images = images if pp == teacher.preprocess else _images(_eval_items(prepared, teacher.preprocess,
                                                                                  len(items)))
    teacher_emb = embed_images(teacher.model.encode_image, teacher_images[:eval_n])
    recipe_emb = embed_recipes(teacher.model, items[:eval_n]).numpy()
    return EvalData(prepared, items, images, eval_n, images[:parity_images], teacher_emb, recipe_emb,
                    teacher_images[:eval_n])


def reference_rows(teacher: Teacher, student: Student, data: EvalData, tag: str,
                   latency_runs: int) -> dict[str, dict[str, Any]]:
    """The report's reference rows: the teacher's image tower in torch fp32, and the student before export."""
    # on use only: loads torch
    from malm.export.distill import TeacherImage, mean_cosine_to_teacher
    from malm.training.embed import embed_images

    model = teacher.model
    size_mb = sum(p.numel() * 4 for p in model.image_encoder.parameters()) / 1e6 \
        if hasattr(model, "image_encoder") else 0.0
    row: dict[str, Any] = {"size_mb": round(size_mb, 3), "cosine_to_teacher": 1.0,
                           "retrieval": rp.retrieval(data.teacher_emb, data.recipe_emb)}
    if latency_runs:
        tower = TeacherImage(model).eval()
        for t in (1, 2):
            row[f"latency_ms_{t}t"] = round(rp.torch_latency_ms(tower, teacher.preprocess.size, t,
                                                                runs=latency_runs), 3)
    rows = {"teacher_torch_fp32": {"file": f"{tag}.safetensors (image tower)", **row}}
    if student.manifest is not None:
        import torch

        encoder = student.encoder
        rows["student_torch_fp32"] = {
            "file": "export-cache",
            "cosine_to_teacher": mean_cosine_to_teacher(model, encoder.student, torch.from_numpy(data.teacher_images),
                                                        student.size),
            "retrieval": rp.retrieval(embed_images(encoder, data.eval_images), data.recipe_emb)}
    return rows


def onnx_metadata(teacher: Teacher, student: Student, options: ExportOptions) -> dict[str, str]:
    """The metadata every exported encoder carries: which weights, config and preprocessing it embodies."""
    config = teacher.config
    return {"malm_version": __version__, "model_hash": student.model_hash, "teacher_sha256": teacher.sha256,
            "config": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.hash(),
            "preprocess": json.dumps(student.preprocess.to_dict(), sort_keys=True),
            "embedding_dim": str(teacher.embed_dim), "student": options.student}


# A distilled EfficientNet-Lite0 student (~3.4M parameters, fully int8) pays for its distillation when the
# trained image tower is several times larger (ViT-B: 86M); the tiny presets' towers (< 3M) ship themselves.
STUDENT_PAYS_PARAMS = 10_000_000


def resolve_options(teacher: Teacher, options: ExportOptions, log: Log) -> ExportOptions:
    """The options with `student` and `tokens` chosen for this run when not given (`None`), saying why."""
    student, tokens = options.student, options.tokens
    if student is None:
        params = sum(p.numel() for p in teacher.model.image_encoder.parameters()) \
            if hasattr(teacher.model, "image_encoder") else 0
        if options.distill_epochs is not None or options.image_size is not None:
            student, why = "efficientnet-lite0", "--distill-epochs / --image-size ask for one"
        elif params >= STUDENT_PAYS_PARAMS:
            student, why = "efficientnet-lite0", f"the trained image tower has {params / 1e6:.1f}M parameters"
        else:
            student, why = "none", (f"the trained image tower ({params / 1e6:.1f}M parameters) is small enough to "
                                    "ship itself; --student efficientnet-lite0 distils an edge student")
        log(f"student: {student} ({why})")
    if tokens is None:
        tokens = False
        if "tokens" in _target_options(options.target) and student == "none":
            trained = getattr(getattr(teacher.config.loss, "matching", None), "enabled", False)
            try:
                has_head = trained and head_source(teacher.run, teacher.tag) is not None
            except MalmError as e:
                has_head = False
                log(f"re-ranking not exported: {e}")
            tokens = options.target == "onnx" and has_head
            if tokens:
                log("re-ranking: the run trained a matching head and its own tower ships, so the head reads the "
                    "tokens it was trained on: exporting it (--no-tokens to leave it out)")
    return replace(options, student=student, tokens=tokens)


def _target_options(target: str) -> frozenset[str]:
    return TARGETS[target].options


def index_and_calibrate(run: Path, tag: str, data_dir: Path, bundle: Path, log: Log,
                        progress: Progress = no_progress) -> dict[str, Any] | None:
    """After an export that shipped a matching head: make sure the bundle has an index with recipe tokens
    (build one from `data_dir`, all splits, when it has none), then choose the fusion weight on validation
    photos through the bundle and record it (malm/export/rerank_calibration.py). Returns the calibration, or
    None (with a log line) when the bundle's existing index cannot re-rank."""
    manifest = load_manifest(bundle)
    shipped = shipped_matching_head(bundle)
    if manifest.index is None:
        # on use only: loads torch
        from malm.training.embed import torch_recipe_encoder

        records = list(dedupe(load_recipe1m(data_dir).recipes, ReadReport()))
        log(f"index: the bundle has none yet; indexing all {len(records)} recipes of {data_dir} (with the recipe "
            "token features re-ranking needs), so re-ranking is calibrated on the bundle's own index")
        encode = torch_recipe_encoder(run, tag, tokens=True)
        sha, _ = sha256_path(checkpoint_file(run, tag))
        with progress("encoding recipes", len(records)) as advance:
            build_index(bundle, records, encode, progress=advance,
                        extra={"checkpoint": {"run": str(run), "tag": tag, "sha256": sha}, "recipes": str(data_dir),
                               "split": "all"})
        _model_card(bundle, data_dir, log)
    elif manifest.rerank is None:
        log("re-ranking not calibrated: the bundle's index has no recipe token features; rebuild it with "
            f"`malm index build --checkpoint {run} --tag {tag} --bundle {bundle}` (it stores them and calibrates)")
        return None
    use_matching_head(bundle, shipped=shipped)
    result = rc.calibrate(bundle, rc.validation_queries(data_dir), log=log)
    rc.record(bundle, result)
    return result


def _model_card(bundle: Path, data_dir: Path, log: Log) -> None:
    """examples.png and the model card, as `malm index build` draws them (best effort: a picture)."""
    try:
        if write_examples(bundle, data_dir, split="test") is not None:
            write_model_card(bundle)
    except (ImportError, MalmError) as e:
        log(f"(model card examples not drawn: {e})")
