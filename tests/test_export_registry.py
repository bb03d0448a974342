"""The export target table: options a target does not support are clear errors, before any heavy work."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from malm.errors import MalmError
from malm.export.registry import TARGETS, ExportOptions, describe, require


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "tflite"}, "unknown export target 'tflite'"),
        ({"target": "coreml", "int8": True}, "--int8 is not supported by --target coreml"),
        ({"target": "onnx", "weights": "int8"}, "--weights is not supported by --target onnx"),
        ({"target": "tensorrt", "weights": "palettize6"}, "--weights is not supported by --target tensorrt"),
        ({"target": "coreml", "tokens": True}, "--tokens is not supported by --target coreml"),
        ({"target": "tensorrt", "recipe_encoder": True}, "--recipe-encoder/--no-recipe-encoder is not supported"),
        ({"target": "onnx", "calib_images": 100}, "--calib-images only applies with --int8"),
        ({"target": "onnx", "int8": True, "calib_images": 0}, "--calib-images must be >= 1"),
        ({"target": "onnx", "student": "resnet"}, "--student must be one of"),
        ({"target": "onnx", "student": "none", "distill_epochs": 3}, "--distill-epochs needs a student"),
        ({"target": "onnx", "student": "none", "image_size": 224}, "--image-size needs a student"),
        ({"target": "onnx", "image_size": 16}, "--image-size must be between 32"),
        ({"target": "coreml", "weights": "int4"}, "--weights must be one of"),
        ({"target": "onnx", "distill_epochs": -1}, "--distill-epochs must be >= 0"),
        ({"target": "onnx", "tag": "../x"}, "--tag must be"),
    ],
)
def test_invalid_options_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(MalmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportOptions(**kwargs)  # type: ignore[arg-type]


def test_valid_options_and_defaults() -> None:
    onnx = ExportOptions("onnx", int8=True, calib_images=600, tokens=True)
    assert onnx.calibration_images == 600 and onnx.with_recipe_encoder and onnx.epochs == 10
    assert ExportOptions("onnx", int8=True).calibration_images == 500
    assert not ExportOptions("onnx", recipe_encoder=False).with_recipe_encoder
    assert not ExportOptions("tensorrt", int8=True).with_recipe_encoder
    coreml = ExportOptions("coreml", weights="palettize6", image_size=96)
    assert coreml.weight_mode == "palettize6" and ExportOptions("coreml").weight_mode == "none"
    assert {row["target"] for row in describe()} == set(TARGETS) == {"onnx", "tensorrt", "coreml"}


def test_missing_library_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *a: object, **k: object) -> object:
        if name == "coremltools":
            raise ImportError("No module named 'coremltools'")
        return real(name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MalmError, match=r"--target coreml needs coremltools: pip install 'coremltools>=8'"):
        require("coreml")
    assert set(require("onnx")) == {"onnx", "onnxruntime"}


def test_cli_refuses_unsupported_option_before_loading_anything(tmp_path: object) -> None:
    code = ("import sys; from malm.cli import main; sys.argv = ['malm', 'export', '--checkpoint', 'nope', "
            "'--target', 'coreml', '--int8', '--data', 'd', '--bundle', 'b']; "
            "import atexit; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "error: --int8 is not supported by --target coreml (supported by: onnx, tensorrt)" in res.stderr
    assert res.stderr.strip().endswith("False")  # validation happened without importing torch


def test_every_target_is_a_module_with_build_and_dispatch_goes_through_the_table() -> None:
    """A new target = one TARGETS entry + one module under malm/export/targets/ (docs/architecture.md)."""
    import inspect

    for name, target in TARGETS.items():
        assert target.build.__module__ == f"malm.export.targets.{target.module}", name
        assert list(inspect.signature(target.build).parameters) == ["ctx"], name
