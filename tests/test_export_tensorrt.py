"""TensorRT preparation without TensorRT: static shapes, cache keys, the trtexec command, the message.

TensorRT cannot be installed on the project's machines, so the engine build itself is not exercised here.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from malm.export import onnx_export as ox
from malm.export import tensorrt as trt
from malm.export.distill import StudentFeatures
from malm.export.student import StudentConfig, StudentImageEncoder


def test_cache_key_separates_gpu_tensorrt_version_and_model() -> None:
    key = trt.cache_key((8, 7), "10.3.0", "ab" * 32)
    assert key == "sm87-trt10.3.0-abababababababab"
    assert trt.cache_key((8, 6), "10.3.0", "ab" * 32) != key  # another GPU architecture
    assert trt.cache_key((8, 7), "10.4.0", "ab" * 32) != key  # another TensorRT
    assert trt.cache_key((8, 7), "10.3.0", "cd" * 32) != key  # another model
    assert "/" not in trt.cache_key((8, 7), "10.3/../x", "ab")
    assert trt.engine_path(Path("/c"), key, "int8") == Path("/c") / f"image-int8-{key}.engine"
    with pytest.raises(ValueError):
        trt.cache_key((8,), "10", "ab")  # type: ignore[arg-type]


def test_trtexec_command() -> None:
    assert trt.trtexec_command("tensorrt/image_static.onnx", "fp16", "e.engine") == \
        "trtexec --onnx=tensorrt/image_static.onnx --saveEngine=e.engine --fp16"
    assert trt.trtexec_command("a b.onnx", "int8").endswith("--fp16 --int8")
    assert "'--onnx=a b.onnx'" in trt.trtexec_command("a b.onnx", "int8")
    with pytest.raises(ValueError):
        trt.trtexec_command("x.onnx", "int4")


def test_without_tensorrt_the_build_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_tensorrt(name: str, *a: object, **k: object) -> object:
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    result = trt.build_engine(tmp_path / "m.onnx", "fp16", "abc", cache_dir=tmp_path)
    assert not result.built and result.engine is None
    assert "TensorRT engine not built: TensorRT is not installed here" in result.message
    assert "trtexec" in result.message
    assert not list(tmp_path.iterdir())


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MALM_TRT_CACHE", str(tmp_path))
    assert trt.default_cache_dir() == tmp_path


def test_static_export_has_fixed_batch_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = StudentFeatures(StudentImageEncoder(StudentConfig(embed_dim=8, image_size=32), pretrained=False).eval())
    path = ox.export_image_encoder(ox.ImageEncoderForExport(enc, tokens=False), tmp_path / "s.onnx", 32, dynamic=False)
    spec = ox.io_spec(path)
    assert spec["inputs"]["image"]["shape"] == [1, 3, 32, 32]
    assert spec["outputs"]["embedding"]["shape"] == [1, 8]
    assert spec["opset"] >= 17
    out = ox.session(path).run(["embedding"], {"image": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert out.shape == (1, 8)
