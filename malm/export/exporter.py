"""`malm export` orchestration: teacher → (student) → target files → bundle + manifest + report.

    from malm.export import ExportOptions, ExportRequest, run_export
    report = run_export(ExportRequest(Path("runs/ht"), Path("data"), Path("bundle"), ExportOptions("onnx", int8=True)))
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from malm import __version__
from malm.bundle import MANIFEST, BundleWriter, read_manifest, sha256_path
from malm.errors import MalmError
from malm.export.registry import ExportOptions, require
from malm.preprocess import PreprocessConfig

Log = Callable[[str], None]
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


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "malm": __version__}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _checkpoint_file(run: Path, tag: str) -> Path:
    path = run / f"{tag}.safetensors"
    if not path.is_file():
        tags = sorted(p.stem for p in run.glob("*.safetensors") if not p.name.endswith(".state.safetensors"))
        raise MalmError(f"checkpoint {run}: no {path.name} (tags present: {', '.join(tags) or 'none'}); "
                        "pick one with --tag")
    return path


def _stack(items: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.stack([np.asarray(it[key]) for it in items]) if items else np.zeros((0,))


def _eval_items(prepared: Any, pp: PreprocessConfig, limit: int) -> list[dict[str, Any]]:
    """The first `limit` paired test items (eval transform), falling back to val when test has no photos."""
    from malm.training.data import RecipeImageDataset

    for split in ("test", "val"):
        if split not in prepared.splits:
            continue
        ds = RecipeImageDataset(prepared, split, pp, train=False)
        if len(ds):
            return [ds[i] for i in range(min(limit, len(ds)))]
    return []


def _train_image_paths(prepared: Any, limit: int, seed: int = 0) -> list[Path]:
    split = prepared.split("train")
    paired = split.paired_indices()
    order = np.random.default_rng(seed).permutation(len(paired))
    paths: list[Path] = []
    for k in order:
        paths.extend(split.image_paths(int(paired[int(k)]))[:1])
        if len(paths) >= limit:
            break
    return paths


def run_export(req: ExportRequest, log: Log | None = None) -> dict[str, Any]:
    opts = req.options
    say: Log = log or (lambda m: print(m, file=sys.stderr))
    require(opts.target)
    import torch

    from malm.export import report as rp
    from malm.export.distill import (
        DistillConfig,
        StudentFeatures,
        TeacherImage,
        distill,
        mean_cosine_to_teacher,
    )
    from malm.export.distill import cache_key as distill_key
    from malm.export.student import StudentConfig
    from malm.training.checkpoint import load_model
    from malm.training.data import prepare

    run = Path(req.checkpoint)
    if not run.is_dir():
        raise MalmError(f"--checkpoint {run}: not a training run directory")
    ckpt_file = _checkpoint_file(run, opts.tag)
    teacher_hash, _ = sha256_path(ckpt_file)
    loaded = load_model(run, opts.tag)
    teacher, config = loaded.model.eval(), loaded.config
    teacher_pp: PreprocessConfig = config.preprocess()
    embed_dim = int(config.model.embed_dim)
    say(f"teacher: {run} ({opts.tag}, {config.name}), embedding dim {embed_dim}, input {teacher_pp.size}px")

    use_student = opts.student != "none"
    size = opts.image_size or teacher_pp.size
    deploy_pp = teacher_pp if size == teacher_pp.size else replace(teacher_pp, size=size, resize=round(size * 256 / 224))
    _check_bundle(req.bundle, deploy_pp, teacher_hash)
    if not Path(req.data_dir).is_dir():
        raise MalmError(f"--data {req.data_dir}: not a directory")
    # The same vocabulary and text limits as training, so the recipe tokens mean what the teacher learned.
    prepared = prepare(req.data_dir, min_freq=config.data.min_freq, limits=config.data.limits())
    if len(prepared.vocab) != len(loaded.vocab):
        raise MalmError(f"--data {req.data_dir}: its vocabulary ({len(prepared.vocab)} words) is not the one "
                        f"{run} was trained with ({len(loaded.vocab)}); export with the training data")

    # --- the image encoder to export ---------------------------------------------------------------------
    student_info: dict[str, Any] | None = None
    if use_student:
        token_dim = int(config.model.image.width) if opts.tokens else 0
        scfg = StudentConfig(embed_dim=embed_dim, token_dim=token_dim, image_size=size, mean=deploy_pp.mean,
                             std=deploy_pp.std)
        dcfg = req.distill or DistillConfig(epochs=opts.epochs, token_weight=1.0 if opts.tokens else 0.0)
        if opts.tokens and dcfg.token_weight == 0:
            dcfg = replace(dcfg, token_weight=1.0)
        say(f"student: EfficientNet-Lite0 at {size}px, distilling {dcfg.epochs} epoch(s) (cached per teacher)")
        if not opts.tokens:
            # A student distilled with tokens (e.g. for the onnx target) serves token-less targets too: reuse it.
            tok_scfg = replace(scfg, token_dim=int(config.model.image.width))
            tok_dcfg = replace(dcfg, token_weight=1.0) if dcfg.token_weight == 0 else dcfg
            if (run / "export-cache" / f"student-{distill_key(teacher_hash, tok_scfg, tok_dcfg)}.safetensors").is_file():
                scfg, dcfg = tok_scfg, tok_dcfg
        result = distill(teacher, prepared, teacher_pp, scfg, dcfg, cache_dir=run / "export-cache",
                         teacher_hash=teacher_hash, progress=say, pretrained=req.pretrained_student)
        say(f"student {'loaded from cache' if result.cached else f'distilled in {result.seconds:.0f}s'}: {result.path}")
        encoder: torch.nn.Module = StudentFeatures(result.student).eval()
        student_info = {"arch": scfg.arch, "config": scfg.to_dict(), "distill_key": result.key,
                        "history": result.history, "cached": result.cached}
        model_hash = hashlib.sha256(f"{teacher_hash}:{result.key}".encode()).hexdigest()
    else:
        encoder = TeacherImage(teacher).eval()
        model_hash = teacher_hash

    # --- real images: parity, quality ---------------------------------------------------------------------
    items = _eval_items(prepared, deploy_pp, max(opts.num_eval_images, req.parity_images))
    if not items:
        raise MalmError(f"--data {req.data_dir}: no test (or val) images to check the export with")
    images = _stack(items, "image").astype(np.float32)
    eval_n = min(opts.num_eval_images, len(items))
    teacher_images = images if deploy_pp == teacher_pp else \
        _stack(_eval_items(prepared, teacher_pp, len(items)), "image").astype(np.float32)
    with torch.no_grad():
        teacher_emb = _batched(lambda x: teacher.encode_image(x), teacher_images[:eval_n])
        recipe_emb = _batched_recipes(teacher, items[:eval_n])
    parity_images = images[:req.parity_images]

    meta = {"malm_version": __version__, "model_hash": model_hash, "teacher_sha256": teacher_hash,
            "config": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.hash(),
            "preprocess": json.dumps(deploy_pp.to_dict(), sort_keys=True), "embedding_dim": str(embed_dim),
            "student": opts.student}
    report: dict[str, Any] = {"target": opts.target, "checkpoint": str(run), "tag": opts.tag, "student": opts.student,
                              "image_size": size, "eval_pairs": eval_n, "variants": {}, "notes": []}
    encoders: dict[str, dict[str, Any]] = {}
    files: list[tuple[Path, str]] = []

    def quality(emb: np.ndarray | None, path: Path | None) -> dict[str, Any]:
        """Size, ORT latency (batch 1, 1 and 2 threads), cosine to the teacher, image→recipe retrieval."""
        row: dict[str, Any] = {}
        if path is not None:
            row["size_mb"] = round(rp.size_mb(path), 3)
        if emb is not None and eval_n:
            row["cosine_to_teacher"] = rp.cosine_mean(emb, teacher_emb)
            row["retrieval"] = rp.retrieval(emb, recipe_emb)
        if path is not None and req.latency_runs:
            for t in (1, 2):
                row[f"latency_ms_{t}t"] = round(rp.onnx_latency_ms(path, size, t, runs=req.latency_runs), 3)
        return row

    # Teacher (torch fp32) as the reference row.
    teacher_row: dict[str, Any] = {"size_mb": round(sum(p.numel() * 4 for p in teacher.image_encoder.parameters())
                                                   / 1e6 if hasattr(teacher, "image_encoder") else 0.0, 3),
                                   "cosine_to_teacher": 1.0, "retrieval": rp.retrieval(teacher_emb, recipe_emb)}
    if req.latency_runs:
        tmod = TeacherImage(teacher).eval()
        for t in (1, 2):
            teacher_row[f"latency_ms_{t}t"] = round(rp.torch_latency_ms(tmod, teacher_pp.size, t, runs=req.latency_runs), 3)
    report["variants"]["teacher_torch_fp32"] = {"file": f"{opts.tag}.safetensors (image tower)", **teacher_row}
    if use_student:
        report["variants"]["student_torch_fp32"] = {
            "file": "export-cache", "cosine_to_teacher": mean_cosine_to_teacher(
                teacher, encoder.student, torch.from_numpy(teacher_images[:eval_n]), size),  # type: ignore[union-attr]
            "retrieval": rp.retrieval(_batched(lambda x: encoder(x)[0], images[:eval_n]), recipe_emb)}

    with tempfile.TemporaryDirectory(prefix="malm-export-") as tmpdir:
        tmp = Path(tmpdir)
        if opts.target == "onnx":
            _export_onnx(req, encoder, teacher, items, images, parity_images, deploy_pp, meta, tmp, encoders,
                         files, report, quality, prepared, say)
        elif opts.target == "tensorrt":
            _export_tensorrt(req, encoder, parity_images, deploy_pp, meta, model_hash, tmp, encoders, files, report,
                             quality, prepared, images[:eval_n], say)
        else:
            _export_coreml(req, encoder, deploy_pp, meta, embed_dim, tmp, encoders, files, report, say)
        from malm.export import int8_gate

        gate, selfcheck = int8_gate.check_export(files, images[:eval_n], recipe_emb, tmp,
                                                 accept=opts.accept_int8_drop, say=say)
        if gate:
            report["int8_gate"] = gate

        with BundleWriter(req.bundle) as bw:
            for src, rel in files:
                bw.add_file(src, rel, move=True)
            vocab = run / "vocab.json"
            if vocab.is_file():
                bw.add_file(vocab, "vocab.json")
            m = bw.manifest
            m["model"] = {"name": config.name, "config": config.to_dict(), "hash": config.hash(),
                          "checkpoint_sha256": teacher_hash, "tag": opts.tag, "encoder_hash": model_hash}
            m["preprocess"] = deploy_pp.to_dict()
            m["embedding"] = {"dim": embed_dim, "metric": "cosine"}
            m.setdefault("libraries", {}).update(_library_versions())
            if student_info:
                m["student"] = student_info
            m.setdefault("encoders", {}).update(encoders)
            if selfcheck:
                bw.set_selfcheck(selfcheck)
            q = m.setdefault("quality", {})
            for name, row in report["variants"].items():
                q[name] = row
            merged = _merge_report(bw.root, report, teacher_hash)
            bw.write_json("report.json", merged)
            bw.write_text("report.md", rp.to_markdown(merged))  # staged: a kill leaves the old bundle valid
    report["bundle"] = str(req.bundle)
    if student_info:
        report["student_key"] = student_info["distill_key"]
    report["encoders"] = encoders
    return report


def _batched(fn: Callable[[Any], Any], x: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(fn(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _batched_recipes(model: Any, items: list[dict[str, Any]], batch: int = 128) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            t = {k: torch.stack([it[k] for it in chunk]) for k in ("title", "ingredients", "instructions")}
            outs.append(model.encode_recipe(t["title"], t["ingredients"], t["instructions"]).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _check_bundle(bundle: Path, pp: PreprocessConfig, teacher_hash: str) -> None:
    """One bundle = one model and one preprocessing; refuse to mix in encoders that disagree."""
    if not (bundle / MANIFEST).exists():
        return
    m = read_manifest(bundle)
    old_pp = m.get("preprocess")
    if old_pp and PreprocessConfig.from_dict(old_pp) != pp:
        raise MalmError(f"--bundle {bundle} was exported with preprocessing {old_pp}, this export needs "
                        f"{pp.to_dict()} (a different --image-size?); use a new bundle directory")
    old = (m.get("model") or {}).get("checkpoint_sha256")
    if old and old != teacher_hash:
        raise MalmError(f"--bundle {bundle} holds encoders of another checkpoint; export into a new bundle "
                        "directory (or delete this one)")


def _merge_report(root: Path, report: dict[str, Any], teacher_hash: str) -> dict[str, Any]:
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
            variants = dict(old.get("variants", {}))
            variants.update(report["variants"])
            merged["variants"] = variants
            merged["notes"] = [n for n in old.get("notes", []) if n not in report["notes"]] + report["notes"]
            merged["target"] = ",".join(dict.fromkeys(str(old.get("target", "")).split(",") + [report["target"]]))
            merged["target"] = merged["target"].strip(",")
    return merged


def _entry(path: Path, rel: str, kind: str, role: str, precision: str, model_hash: str,
           **extra: Any) -> dict[str, Any]:
    from malm.export.onnx_export import io_spec

    spec = io_spec(path) if kind in ("onnx", "tensorrt-onnx") else {}
    return {"file": rel, "kind": kind, "role": role, "precision": precision, "model_hash": model_hash,
            **spec, **extra}


def _export_onnx(req: ExportRequest, encoder: Any, teacher: Any, items: list[dict[str, Any]], images: np.ndarray,
                 parity_images: np.ndarray, pp: PreprocessConfig, meta: dict[str, str], tmp: Path,
                 encoders: dict[str, Any], files: list[tuple[Path, str]], report: dict[str, Any], quality: Any,
                 prepared: Any, say: Log) -> None:
    from malm.export import onnx_export as ox
    from malm.export.quantize import VARIANTS, qdq_properties, quantize_int8

    opts = req.options
    eval_n = report["eval_pairs"]
    fp32 = tmp / "image_fp32.onnx"
    module = ox.ImageEncoderForExport(encoder, tokens=opts.tokens)
    ox.export_image_encoder(module, fp32, pp.size, metadata={**meta, "role": "image", "precision": "fp32"})
    worst = ox.parity_check(ox.ImageEncoderForExport(encoder, tokens=False), fp32, parity_images)
    say(f"image_fp32.onnx: parity with torch OK (min cosine {worst:.6f} on {len(parity_images)} real images)")
    emb32 = ox.run_image(ox.session(fp32, threads=2), images[:eval_n])
    report["variants"]["image_fp32"] = {"file": "encoders/image_fp32.onnx", "parity_min_cosine": worst,
                                        **quality(emb32, fp32)}
    encoders["image_fp32"] = _entry(fp32, "encoders/image_fp32.onnx", "onnx", "image", "fp32", meta["model_hash"],
                                    tokens=opts.tokens, parity_min_cosine=worst)
    files.append((fp32, "encoders/image_fp32.onnx"))

    if opts.int8:
        int8 = tmp / "image_int8.onnx"
        calib = _train_image_paths(prepared, opts.calibration_images)
        if len(calib) < opts.calibration_images:
            report["notes"].append(f"int8 calibration asked for {opts.calibration_images} images; the training "
                                   f"split has {len(calib)}")
        say(f"int8: calibrating on {len(calib)} training images (QDQ, symmetric, per-channel)")
        qinfo = quantize_int8(fp32, int8, calib, pp, **VARIANTS["image_int8"])
        ox.set_metadata(int8, {**meta, "role": "image", "precision": "int8"})
        props = qdq_properties(int8)
        emb8 = ox.run_image(ox.session(int8, threads=2), images[:eval_n])
        row = quality(emb8, int8)
        row["cosine_to_fp32"] = float(ox.cosine_rows(emb8, emb32).mean()) if eval_n else None
        r32, r8 = report["variants"]["image_fp32"].get("retrieval", {}), row.get("retrieval", {})
        if "R@1" in r32 and "R@1" in r8:
            row["R@1_drop_vs_fp32"] = r32["R@1"] - r8["R@1"]
        report["variants"]["image_int8"] = {"file": "encoders/image_int8.onnx", **row}
        encoders["image_int8"] = _entry(int8, "encoders/image_int8.onnx", "onnx", "image", "int8",
                                        meta["model_hash"], tokens=opts.tokens, quantization={**qinfo, **props})
        files.append((int8, "encoders/image_int8.onnx"))

        # The CPU variant: same calibration, uint8 asymmetric activations (what x86 ONNX Runtime runs fast;
        # see quantize.quantize_int8). image_int8 stays symmetric for TensorRT.
        cpu = tmp / "image_int8_cpu.onnx"
        say("int8 (CPU): uint8 asymmetric activations, int8 symmetric per-channel weights, same calibration")
        cinfo = quantize_int8(fp32, cpu, calib, pp, **VARIANTS["image_int8_cpu"])
        ox.set_metadata(cpu, {**meta, "role": "image", "precision": "int8", "variant": "cpu"})
        embc = ox.run_image(ox.session(cpu, threads=2), images[:eval_n])
        crow = quality(embc, cpu)
        crow["cosine_to_fp32"] = float(ox.cosine_rows(embc, emb32).mean()) if eval_n else None
        rc = crow.get("retrieval", {})
        if "R@1" in r32 and "R@1" in rc:
            crow["R@1_drop_vs_fp32"] = r32["R@1"] - rc["R@1"]
        report["variants"]["image_int8_cpu"] = {"file": "encoders/image_int8_cpu.onnx", **crow}
        encoders["image_int8_cpu"] = _entry(cpu, "encoders/image_int8_cpu.onnx", "onnx", "image", "int8",
                                            meta["model_hash"], tokens=opts.tokens,
                                            quantization={**cinfo, **qdq_properties(cpu)}, prefer="cpu")
        files.append((cpu, "encoders/image_int8_cpu.onnx"))

    if opts.tokens:
        _export_matching_head(req, meta, tmp, encoders, files, report, say)

    recipe_cfg = getattr(getattr(teacher, "recipe_encoder", None), "cfg", None)
    if opts.with_recipe_encoder and opts.recipe_encoder is None and \
            getattr(recipe_cfg, "sentence_features", "learned") != "learned":
        # Not asked for explicitly, and MiniLM sentence vectors are not token ids: skip rather than fail.
        report["notes"].append("recipe encoder not exported: this model reads MiniLM sentence vectors, not vocab ids")
    elif opts.with_recipe_encoder:
        rec = tmp / "recipe_fp32.onnx"
        import torch

        sample = items[: min(4, len(items))]
        example = {k: torch.stack([it[k] for it in sample]) for k in ("title", "ingredients", "instructions")}
        try:
            ox.export_recipe_encoder(teacher, rec, example, metadata={**meta, "role": "recipe", "precision": "fp32"})
        except MalmError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter's own errors are many; say which part failed
            raise MalmError(f"exporting the recipe encoder to ONNX failed ({type(e).__name__}: {e}); "
                            "use --no-recipe-encoder to export the image encoder alone") from None
        worst_r = ox.recipe_parity_check(teacher, rec, {k: v.numpy() for k, v in example.items()})
        say(f"recipe_fp32.onnx: parity with torch OK (min cosine {worst_r:.6f})")
        encoders["recipe_fp32"] = _entry(rec, "encoders/recipe_fp32.onnx", "onnx", "recipe", "fp32",
                                         meta["teacher_sha256"], parity_min_cosine=worst_r)
        report["variants"]["recipe_fp32"] = {"file": "encoders/recipe_fp32.onnx", "size_mb": round(rec.stat().st_size / 1e6, 3),
                                             "parity_min_cosine": worst_r}
        files.append((rec, "encoders/recipe_fp32.onnx"))


def _export_matching_head(req: ExportRequest, meta: dict[str, str], tmp: Path, encoders: dict[str, Any],
                          files: list[tuple[Path, str]], report: dict[str, Any], say: Log) -> None:
    """With --tokens, ship the run's trained matching head for re-ranking (when the preset trained one)."""
    from malm.export import matching_head as mh
    from malm.training.checkpoint import read_config

    run = Path(req.checkpoint)
    head = mh.load_trained_head(run, read_config(run))
    if head is None:
        report["notes"].append("no trained matching head in this run (preset without the matching loss, or no "
                               f"{mh.STATE_FILE}): re-ranking can use late interaction only")
        return
    out = tmp / "matching_head.onnx"
    entry = mh.export_head(head, out, {k: meta[k] for k in ("malm_version", "model_hash", "teacher_sha256",
                                                            "config_hash")})
    tag_meta = run / f"{req.options.tag}.json"
    tag_step = json.loads(tag_meta.read_text()).get("step") if tag_meta.is_file() else None
    entry["tag_step"] = tag_step
    if head.step is not None and tag_step is not None and head.step != tag_step:
        # The head is saved with the training state only (the last step); the encoders come from --tag.
        report["notes"].append(f"matching head from training step {head.step} (the run's last state), encoders "
                               f"from --tag {req.options.tag} (step {tag_step}); --tag last pairs them exactly")
    say(f"{mh.BUNDLE_PATH}: trained matching head exported (step {head.step}, parity max |diff| "
        f"{entry['parity_max_abs']:.1e})")
    encoders["matching_head"] = entry
    report["variants"]["matching_head"] = {"file": mh.BUNDLE_PATH, "size_mb": round(out.stat().st_size / 1e6, 3)}
    files.append((out, mh.BUNDLE_PATH))


def _export_tensorrt(req: ExportRequest, encoder: Any, parity_images: np.ndarray, pp: PreprocessConfig,
                     meta: dict[str, str], model_hash: str, tmp: Path, encoders: dict[str, Any],
                     files: list[tuple[Path, str]], report: dict[str, Any], quality: Any, prepared: Any,
                     eval_images: np.ndarray, say: Log) -> None:
    from malm.export import onnx_export as ox
    from malm.export import tensorrt as trt_mod
    from malm.export.quantize import qdq_properties, quantize_int8

    opts = req.options
    precision = "int8" if opts.int8 else "fp16"
    static = tmp / "image_static_fp32.onnx"
    module = ox.ImageEncoderForExport(encoder, tokens=opts.tokens)
    ox.export_image_encoder(module, static, pp.size, dynamic=False,
                            metadata={**meta, "role": "image", "precision": precision, "target": "tensorrt"})
    # Parity at batch 1: the static model takes one image at a time.
    worst = ox.parity_check(ox.ImageEncoderForExport(encoder, tokens=False), static, parity_images, ort_batch=1)
    say(f"tensorrt static ONNX: parity with torch OK (min cosine {worst:.6f})")
    out = static
    extra: dict[str, Any] = {"parity_min_cosine": worst}
    if opts.int8:
        out = tmp / "image_static.onnx"
        calib = _train_image_paths(prepared, opts.calibration_images)
        say(f"int8: calibrating on {len(calib)} training images (QDQ, symmetric, per-channel: TensorRT explicit quantization)")
        extra["quantization"] = {**quantize_int8(static, out, calib, pp), **qdq_properties(out)}
        ox.set_metadata(out, {**meta, "role": "image", "precision": "int8", "target": "tensorrt"})
    file_hash, _ = sha256_path(out)
    rel = trt_mod.STATIC_ONNX
    command = trt_mod.trtexec_command(rel, precision, engine=f"image-{precision}.engine")
    result = trt_mod.build_engine(out, precision, file_hash)
    say(result.message)
    if not result.built:
        say(f"to build it on the device: {command}")
    emb = ox.run_image(ox.session(out, threads=2), eval_images, batch=1) if len(eval_images) else None
    report["variants"][f"tensorrt_onnx_{precision}"] = {
        "file": rel, **quality(emb, out),
        "note": "quality measured with ONNX Runtime on this ONNX (fp32 math for fp16); the TensorRT engine itself "
                "is not measured here" if not result.built else "engine built"}
    report["notes"].append(result.message)
    encoders["image_tensorrt"] = _entry(
        out, rel, "tensorrt-onnx", "image", precision, model_hash, static_shape=[1, 3, pp.size, pp.size],
        trtexec=command, onnx_sha256=file_hash, engine_built=result.built, engine_message=result.message,
        engine_cache={"dir": "$MALM_TRT_CACHE or ~/.cache/malm/tensorrt",
                      "key": "sm<major><minor>-trt<version>-<onnx sha256[:16]>",
                      **({"key_value": result.key, "path": str(result.engine)} if result.built else {})},
        **extra)
    files.append((out, rel))


def _export_coreml(req: ExportRequest, encoder: Any, pp: PreprocessConfig, meta: dict[str, str], embed_dim: int,
                   tmp: Path, encoders: dict[str, Any], files: list[tuple[Path, str]], report: dict[str, Any],
                   say: Log) -> None:
    from malm.export import coreml

    opts = req.options
    cm_meta = {"malm_version": meta["malm_version"], "model_hash": meta["model_hash"],
               "embedding_dim": str(embed_dim), "preprocess": meta["preprocess"], "config_hash": meta["config_hash"]}
    variants = [("image_coreml", "encoders/image.mlpackage", "none")]
    if opts.weight_mode == "int8":
        variants.append(("image_coreml_w8", "encoders/image_w8.mlpackage", "int8"))
    elif opts.weight_mode == "palettize6":
        variants.append(("image_coreml_p6", "encoders/image_p6.mlpackage", "palettize6"))
    outputs = [(tmp / Path(rel).name, weights) for _, rel, weights in variants]
    infos = coreml.convert_variants(encoder, outputs, pp, metadata=cm_meta)
    from malm.export.report import size_mb

    for (name, rel, weights), (out, _), info in zip(variants, outputs, infos, strict=True):
        precision = {"none": "fp16", "int8": "fp16-w8", "palettize6": "fp16-p6"}[weights]
        say(f"{rel}: converted ({precision}); {info['prediction']}")
        encoders[name] = {"file": rel, "kind": "coreml", "role": "image", "precision": precision,
                          "model_hash": meta["model_hash"], "inputs": info["inputs"], "outputs": info["outputs"],
                          "weights": weights, "spec": {k: info[k] for k in ("spec_version", "model_type", "fp16_compute",
                                                                             "compression_ops")}}
        report["variants"][name] = {"file": rel, "size_mb": round(size_mb(out), 3), "note": info["prediction"]}
        files.append((out, rel))
    report["notes"].append(coreml.prediction_note())
