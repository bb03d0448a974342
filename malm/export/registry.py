"""The export targets, the options each accepts, and their validation.

One table (ultralytics' `export_formats()` is the model): a target lists the options it supports, and an
option given to a target that does not support it is a clear `MalmError`, never silently ignored. The table
also drives dispatch: `run_export` calls `TARGETS[name].build(ctx)`, the `build` of the module it names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any

from malm.errors import MalmError

STUDENTS = ("efficientnet-lite0", "none")
WEIGHT_MODES = ("none", "int8", "palettize6")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    files: tuple[str, ...]  # bundle paths it writes
    options: frozenset[str]  # ExportOptions fields it accepts beyond the common ones
    requires: tuple[tuple[str, str], ...]  # (import name, pip install hint)
    module: str  # the module with `build(ctx: ExportContext) -> Artifacts`: a name under malm.export.targets,
    # or a dotted path (a target that lives in your own package)

    @property
    def build(self) -> Callable[[Any], Any]:
        """The target's `build` (imported on use: the table itself stays light for the CLI)."""
        path = self.module if "." in self.module else f"malm.export.targets.{self.module}"
        return importlib.import_module(path).build  # type: ignore[no-any-return]


COMMON = frozenset({"student", "distill_epochs", "image_size", "tag", "eval_images"})

TARGETS: dict[str, Target] = {
    "onnx": Target(
        "onnx", "ONNX image (+ recipe) encoder, dynamic batch, opset 17; --int8 adds QDQ int8 models (TensorRT-ready "
        "symmetric, and a uint8-activation CPU one); --tokens adds the matching head",
        ("encoders/image_fp32.onnx", "encoders/image_int8.onnx", "encoders/image_int8_cpu.onnx",
         "encoders/recipe_fp32.onnx", "rerank/matching_head.onnx", "encoders/recipe_int8.onnx",
         "tensorrt/recipe_static.onnx"),
        frozenset({"int8", "calib_images", "recipe_encoder", "tokens"}),
        (("onnx", "onnx>=1.16"), ("onnxruntime", "onnxruntime>=1.17")),
        "onnx",
    ),
    "tensorrt": Target(
        "tensorrt", "static 1x3xHxW ONNX for TensorRT (fp16, or int8 QDQ with --int8); engine built where possible",
        ("tensorrt/image_static.onnx",),
        frozenset({"int8", "calib_images", "tokens"}),
        (("onnx", "onnx>=1.16"), ("onnxruntime", "onnxruntime>=1.17")),
        "tensorrt",
    ),
    "coreml": Target(
        "coreml", "CoreML mlprogram (fp16, image input, normalization folded in); --weights compresses",
        ("encoders/image.mlpackage", "encoders/recipe.mlpackage"),
        frozenset({"weights", "recipe_encoder"}),
        (("coremltools", "coremltools>=8"),),
        "coreml",
    ),
}

def _option(default: Any, flag: str, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A field of `ExportOptions` with its command-line flag, help and choices: `malm export` is built from them
    (`...`: a required option)."""
    metadata = {"flag": flag, "help": help, "choices": choices}
    return field(metadata=metadata) if default is ... else field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for. `None` means 'not given' so validation can tell a default from a choice.

    Each field carries its `malm export` flag and help (`_option`): the command's options are generated from
    these fields, so a new option is one field here (plus its target's `options` in `TARGETS`).
    """

    target: str = _option(..., "--target", "export target", tuple(TARGETS))
    # the edge student, or "none" to export the teacher's own image encoder; None: chosen for the run
    # (steps.resolve_options: the own tower unless a student pays, or --distill-epochs / --image-size ask for one)
    student: str | None = _option(None, "--student", "edge student (none: the teacher's own image encoder) "
                                  "[default: the own tower, unless it has >= 10M parameters or --distill-epochs/"
                                  "--image-size ask for a student]", STUDENTS)
    int8: bool = _option(False, "--int8", "add an int8 QDQ model (onnx, tensorrt)")
    calib_images: int | None = _option(None, "--calib-images", "int8 calibration images [default: 500]")
    distill_epochs: int | None = _option(None, "--distill-epochs", "student distillation epochs [default: 10]")
    image_size: int | None = _option(None, "--image-size", "student input side [default: the teacher's]")
    weights: str | None = _option(None, "--weights", "coreml weight compression", WEIGHT_MODES)
    tag: str = _option("best", "--tag", "checkpoint tag", ("best", "last"))
    recipe_encoder: bool | None = _option(None, "--recipe-encoder/--no-recipe-encoder",
                                          "also export the recipe encoder (onnx) [default: yes]")
    # None: on when the run trained a matching head and its own tower ships (the head reads the tokens it learned on)
    tokens: bool | None = _option(None, "--tokens/--no-tokens",
                                  "also output (and distil) patch tokens and ship the matching head for re-ranking; "
                                  "its fusion weight is chosen on validation photos through the bundle (re-ranking "
                                  "ships off when it does not help) [default: on when the run trained a matching "
                                  "head and its own tower ships]")
    eval_images: int | None = _option(None, "--eval-images", "test images for the report [default: 1000]")
    # ship int8 models that fail the int8 gate (malm/export/int8_gate.py)
    accept_int8_drop: bool = _option(False, "--accept-int8-drop",
                                     "ship int8 models that fail the int8 gate (mean cosine to fp32 < 0.98 or R@1 "
                                     "drop > 1.5 points); the report says so")

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise MalmError(f"unknown export target {self.target!r}; one of: {', '.join(TARGETS)}")
        target = TARGETS[self.target]
        defaults = {f.name: f.default for f in fields(self)}
        for name in sorted(set().union(*(t.options for t in TARGETS.values()))):  # options some target has
            asked = getattr(self, name) != defaults[name] and not (name == "tokens" and self.tokens is False)
            if asked and name not in target.options:
                supported = sorted(t for t, spec in TARGETS.items() if name in spec.options)
                flag = FLAGS[name] if name != "tokens" else "--tokens"  # asked for: the positive spelling
                raise MalmError(f"{flag} is not supported by --target {self.target} "
                                f"(supported by: {', '.join(supported)})")
        if self.student is not None and self.student not in STUDENTS:
            raise MalmError(f"--student must be one of {', '.join(STUDENTS)}, got {self.student!r}")
        if self.student == "none" and self.distill_epochs is not None:
            raise MalmError("--distill-epochs needs a student; it does nothing with --student none")
        if self.student == "none" and self.image_size is not None:
            raise MalmError("--image-size needs a student: the teacher's image encoder has a fixed input size")
        if self.distill_epochs is not None and self.distill_epochs < 0:
            raise MalmError(f"--distill-epochs must be >= 0, got {self.distill_epochs}")
        if self.calib_images is not None:
            if not self.int8:
                raise MalmError("--calib-images only applies with --int8")
            if self.calib_images < 1:
                raise MalmError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.accept_int8_drop and not self.int8:
            raise MalmError("--accept-int8-drop only applies with --int8")
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            raise MalmError(f"--image-size must be between 32 (the student's stride) and 1024, got {self.image_size}")
        if self.weights is not None and self.weights not in WEIGHT_MODES:
            raise MalmError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}")
        if self.eval_images is not None and self.eval_images < 0:
            raise MalmError(f"--eval-images must be >= 0, got {self.eval_images}")
        if not self.tag or "/" in self.tag or self.tag.startswith("."):
            raise MalmError(f"--tag must be a checkpoint name like 'best' or 'last', got {self.tag!r}")

    # Resolved values (defaults applied).
    @property
    def calibration_images(self) -> int:
        return 500 if self.calib_images is None else self.calib_images

    @property
    def epochs(self) -> int:
        return 10 if self.distill_epochs is None else self.distill_epochs

    @property
    def weight_mode(self) -> str:
        return self.weights or "none"

    @property
    def with_recipe_encoder(self) -> bool:
        return self.target in ("onnx", "coreml") and self.recipe_encoder is not False

    @property
    def num_eval_images(self) -> int:
        return 1000 if self.eval_images is None else self.eval_images


# CLI spelling of each option, for error messages (from the fields: one place).
FLAGS = {f.name: f.metadata["flag"] for f in fields(ExportOptions)}


def require(target: str) -> dict[str, ModuleType]:
    """Import the target's heavy libraries, or say exactly what to install (never installs anything)."""
    mods = {}
    for module, hint in TARGETS[target].requires:
        try:
            mods[module] = importlib.import_module(module)
        except ImportError:
            raise MalmError(f"--target {target} needs {module}: pip install '{hint}' "
                            "(or pip install 'malm[export]')") from None
    return mods


def describe() -> list[dict[str, object]]:
    """The table, for `malm export --list`-style output and the docs."""
    return [{"target": t.name, "description": t.description, "files": list(t.files),
             "options": sorted(FLAGS[o] for o in t.options)} for t in TARGETS.values()]
