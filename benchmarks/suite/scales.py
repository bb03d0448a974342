"""The models the speed sections measure, each as a 'scale': a bundle plus its torch teacher.

- `deployment` (full runs): the shapes that ship (224-px ViT-B/16 teacher vs EfficientNet-Lite0 student,
  1024-d, 100k-recipe index), untrained weights; see `deployment.py`. The targets are read here.
- `bundle`: the bundle given with --bundle (teacher from --checkpoint), or the tiny one built by the
  benchmark: the real trained pipeline, at whatever size that model has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.suite.context import Context


@dataclass
class Scale:
    key: str  # "deployment" | "bundle"
    description: str
    bundle: Path
    teacher: Any | None  # RetrievalModel in eval mode, or None when no checkpoint
    teacher_preprocess: Any | None  # PreprocessConfig of the teacher
    teacher_note: str
    recipes: int
    whatif: dict[str, Path] = field(default_factory=dict)  # extra encoders measured but not shipped

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "description": self.description, "bundle": str(self.bundle),
                "teacher": self.teacher_note, "recipes": self.recipes}


def scales(ctx: Context) -> list[Scale]:
    """Built once per run and shared by the latency, encoder and cold-start sections.

    A scale that cannot be built is left out with its reason in `scale_errors(ctx)`; raises only when
    none could be built.
    """
    if "scales" in ctx.cache:
        return list(ctx.cache["scales"])
    out: list[Scale] = []
    errors: dict[str, str] = {}
    if not ctx.options.quick:
        try:
            out.append(_deployment(ctx))
        except Exception as e:  # the other scale still gives numbers
            errors["deployment"] = f"{type(e).__name__}: {e}"
            ctx.log(f"deployment-size bundle unavailable: {errors['deployment']}")
    try:
        out.append(_bundle(ctx))
    except Exception as e:
        errors["bundle"] = f"{type(e).__name__}: {e}"
        ctx.log(f"measured bundle unavailable: {errors['bundle']}")
    ctx.cache["scales"], ctx.cache["scale_errors"] = out, errors
    if not out:
        raise RuntimeError("no model to measure: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    return list(out)


def scale_errors(ctx: Context) -> dict[str, str]:
    return dict(ctx.cache.get("scale_errors", {}))


def _deployment(ctx: Context) -> Scale:
    from benchmarks.suite import deployment

    dep = deployment.obtain(ctx, ctx.options.deploy_recipes)
    model, pp = deployment.teacher_model(dep.teacher_preset)
    return Scale("deployment",
                 f"deployment size: {dep.image_size}-px inputs, {dep.dim}-d, {dep.recipes:,} synthetic recipes; "
                 "teacher = full `malm` preset ViT-B/16 (torch eager), student = EfficientNet-Lite0 "
                 "(ONNX Runtime); untrained weights (speed only)",
                 dep.root, model, pp, "malm preset ViT-B/16 224px, untrained, torch eager", dep.recipes,
                 whatif={k: Path(v) for k, v in (dep.info.get("whatif") or {}).items()})


def _bundle(ctx: Context) -> Scale:
    art = ctx.artifacts()
    teacher, pp, note = None, None, "no --checkpoint given: teacher not measured"
    if art.checkpoint is not None:
        from malm.training.checkpoint import load_model

        loaded = load_model(art.checkpoint, tag="best")
        teacher, pp = loaded.model.eval(), loaded.config.preprocess()
        img = loaded.config.model.image
        note = (f"{loaded.config.name}: ViT {img.image_size}px/{img.patch_size}, width {img.width}, "
                f"depth {img.depth}, torch eager")
    from malm.bundle import read_manifest

    manifest = read_manifest(art.bundle)
    recipes = int((manifest.get("index") or {}).get("count", 0))
    pre = manifest.get("preprocess") or {}
    return Scale("bundle", f"the measured bundle ({'tiny, built by the benchmark' if art.built else 'given'}): "
                 f"{pre.get('size')}-px inputs, {(manifest.get('embedding') or {}).get('dim')}-d, {recipes:,} recipes",
                 art.bundle, teacher, pp, note, recipes)
