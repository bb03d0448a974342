"""Backend choice: ONNX Runtime providers (patched, no GPU needed), variants, TensorRT and CoreML errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from _sdk_bundle import image_onnx, make_bundle

from malm import Retriever
from malm.errors import BundleError, MalmError
from malm.sdk.backends import choose_variant, create_backend, select_providers
from malm.sdk.backends import ort as ort_mod
from malm.sdk.bundle_loader import open_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("be") / "b", 12, int8_alias=True)


def test_select_providers_order() -> None:
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["CoreMLExecutionProvider", "CPUExecutionProvider", "AzureExecutionProvider"]) == [
        "CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert select_providers([]) == ["CPUExecutionProvider"]


class FakeSession:
    """Records what ONNX Runtime was asked for, then runs the model on CPU (there is no GPU here).

    Like a real session, it reports the providers it actually uses: a provider in `fails` (its libraries
    missing, a driver mismatch) does not start, and ONNX Runtime silently goes on with the rest.
    """

    calls: list[Any] = []
    fails: set[str] = set()

    def __init__(self, path: str, opts: Any, providers: Any) -> None:
        FakeSession.calls.append((providers, opts.intra_op_num_threads, opts.inter_op_num_threads))
        self._real = REAL_SESSION(path, opts, providers=["CPUExecutionProvider"])
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self._providers = [p for p in names if p not in FakeSession.fails] or ["CPUExecutionProvider"]

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


REAL_SESSION = onnxruntime.InferenceSession


def test_gpu_providers_chosen_when_onnxruntime_reports_them(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "fails", set())
    monkeypatch.setenv("MALM_TRT_CACHE", str(tmp_path / "trt"))
    FakeSession.calls.clear()
    r = Retriever.load(bundle, threads=2)
    providers, intra, inter = FakeSession.calls[-1]
    assert [p for p, _ in providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                         "CPUExecutionProvider"]
    assert providers[0][1]["trt_engine_cache_enable"] and providers[0][1]["trt_engine_cache_path"].startswith(
        str(tmp_path / "trt"))
    assert (intra, inter) == (2, 1)
    assert r.backend.device == "TensorrtExecutionProvider" and r.backend.variant == "int8"  # TRT runs QDQ int8

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    r = Retriever.load(bundle)
    assert r.backend.device == "CUDAExecutionProvider" and r.backend.variant == "fp32"  # QDQ is slow on CUDA EP
    assert FakeSession.calls[-1][1] == 0  # no thread count given: ONNX Runtime's default


@pytest.mark.parametrize(("available", "fails", "device", "variant"), [
    # TensorRT's libraries are missing: ONNX Runtime goes on with CUDA, where QDQ int8 is slow -> fp32.
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     {"TensorrtExecutionProvider"}, "CUDAExecutionProvider", "fp32"),
    # No CUDA runtime on the machine: the session runs on CPU, where the int8 encoder is the fast one.
    (["CUDAExecutionProvider", "CPUExecutionProvider"], {"CUDAExecutionProvider"}, "CPUExecutionProvider",
     "int8"),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     {"TensorrtExecutionProvider", "CUDAExecutionProvider"}, "CPUExecutionProvider", "int8"),
])
def test_silent_provider_fallback_is_noticed(bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             available: list[str], fails: set[str], device: str,
                                             variant: str) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "fails", fails)
    monkeypatch.setenv("MALM_TRT_CACHE", str(tmp_path / "trt"))
    r = Retriever.load(bundle)
    # The backend reports where it really runs (the session's list), not what was asked for.
    assert r.backend.device == device and r.info()["device"] == device
    assert r.backend.requested_device == available[0]
    assert Path(r.backend.session.path).name == f"image_{r.backend.variant}.onnx"
    # create_backend with variant "auto" takes the encoder for the provider that really runs.
    b = create_backend(open_bundle(bundle), "auto", "auto")
    assert (b.device, b.variant) == (device, variant)
    assert Path(b.session.path).name == f"image_{variant}.onnx"
    # An explicit variant is kept even after a fallback.
    assert Retriever.load(bundle, variant="fp32").backend.variant == "fp32"


def test_cpu_only_prefers_int8(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    r = Retriever.load(bundle)
    assert (r.backend.device, r.backend.variant) == ("CPUExecutionProvider", "int8")
    assert Retriever.load(bundle, variant="fp32").backend.variant == "fp32"


def _with_cpu_int8(bundle: Path, root: Path) -> Path:
    """A copy of `bundle` that also has an `image_int8_cpu` encoder (the same graph under that name)."""
    import shutil

    from malm.bundle import BundleWriter

    shutil.copytree(bundle, root)
    with BundleWriter(root) as bw:
        bw.add_file(root / "encoders/image_int8.onnx", "encoders/image_int8_cpu.onnx")
        bw.manifest["encoders"]["image_int8_cpu"] = {"file": "encoders/image_int8_cpu.onnx", "kind": "onnx",
                                                     "role": "image", "precision": "int8", "prefer": "cpu"}
    return root


@pytest.mark.parametrize(("available", "device", "variant"), [
    (["CPUExecutionProvider"], "CPUExecutionProvider", "int8_cpu"),  # uint8 activations: fast x86 kernels
    (["TensorrtExecutionProvider", "CPUExecutionProvider"], "TensorrtExecutionProvider", "int8"),  # symmetric
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", "fp32"),
])
def test_auto_variant_per_provider_with_a_cpu_int8_encoder(bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, available: list[str],
                                                          device: str, variant: str) -> None:
    b = _with_cpu_int8(bundle, tmp_path / "b")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setenv("MALM_TRT_CACHE", str(tmp_path / "trt"))
    r = Retriever.load(b)
    assert (r.backend.device, r.backend.variant) == (device, variant)
    assert Retriever.load(b, variant="int8_cpu").backend.variant == "int8_cpu"  # explicit choice wins


def test_variant_errors(tmp_path: Path) -> None:
    b = open_bundle(make_bundle(tmp_path / "fp32only", 5))
    assert choose_variant(b, "auto", "CPUExecutionProvider") == "fp32"
    with pytest.raises(BundleError, match="has no int8 image encoder"):
        choose_variant(b, "int8", "CPUExecutionProvider")
    with pytest.raises(MalmError, match="unknown variant"):
        create_backend(b, "onnxruntime", "int4")
    with pytest.raises(MalmError, match="unknown backend"):
        create_backend(b, "openvino")


def test_tensorrt_missing_is_a_clear_error(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on any machine without TensorRT
    with pytest.raises(MalmError, match="needs NVIDIA TensorRT's Python package"):
        Retriever.load(bundle, backend="tensorrt")


def test_tensorrt_cache_key_matches_export() -> None:
    export_trt = pytest.importorskip("malm.export.tensorrt", reason="the export part is not in this checkout")
    from malm.sdk.backends.tensorrt import cache_key, engine_path

    args = ((8, 7), "10.3.0", "ab" * 32)
    assert cache_key(*args) == export_trt.cache_key(*args)
    assert engine_path(Path("/c"), cache_key(*args), "int8") == export_trt.engine_path(Path("/c"), cache_key(*args),
                                                                                       "int8")


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS CoreML does run")
def test_coreml_off_macos_is_a_clear_error(bundle: Path) -> None:
    with pytest.raises(MalmError, match="runs only on macOS"):
        Retriever.load(bundle, backend="coreml")


def test_ort_session_rejects_bad_models(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load it"):
        ort_mod.OrtSession(tmp_path / "junk.onnx")
    with pytest.raises(MalmError, match="threads"):
        ort_mod.OrtSession(image_onnx(tmp_path / "ok.onnx"), threads=0)


def test_static_batch_model_is_fed_one_at_a_time(tmp_path: Path) -> None:
    import onnx

    path = image_onnx(tmp_path / "static.onnx", tokens=False)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # like the TensorRT-ready export
    onnx.save(model, str(path))
    backend = ort_mod.OrtImageBackend(path, "fp32")
    out = backend.encode(np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32))
    assert out.embedding.shape == (3, 16) and np.allclose(np.linalg.norm(out.embedding, axis=1), 1, atol=1e-5)
    with pytest.raises(MalmError, match="no 'tokens' output"):
        backend.encode(np.zeros((1, 3, 32, 32), np.float32), tokens=True)


def test_variant_reason_per_provider(bundle: Path) -> None:
    """`malm doctor` / `Retriever.info()` say why an encoder was picked, per execution provider."""
    from malm.sdk.backends import explain_variant

    b = open_bundle(bundle, check_hashes=False)  # has fp32 and int8, no int8_cpu
    variant, why = explain_variant(b, "auto", "TensorrtExecutionProvider")
    assert variant == "int8" and "zero-point 0" in why
    variant, why = explain_variant(b, "auto", "CUDAExecutionProvider")
    assert variant == "fp32" and "CUDA provider runs QDQ int8 models slowly" in why
    variant, why = explain_variant(b, "auto", "CoreMLExecutionProvider")
    assert variant == "fp32" and "CoreML" in why
    variant, why = explain_variant(b, "auto", "CPUExecutionProvider")
    assert variant == "int8" and "the bundle has no int8_cpu, so int8" in why
    assert explain_variant(b, "fp32", "CPUExecutionProvider") == ("fp32", "asked for fp32")
