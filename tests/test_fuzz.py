"""Property tests (hypothesis), short in CI: any image mode/size preprocesses to a finite, normalized input
of the right shape; any bytes as an image or a manifest give a result or a `MalmError`, never a crash.

The long run: `python -m benchmarks.fuzz_long` (docs/reliability.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from malm.bundle import FORMAT, FORMAT_VERSION, read_manifest
from malm.errors import BundleError, ImageError
from malm.preprocess import PreprocessConfig, preprocess
from malm.sdk.image_io import load_image

CFG = PreprocessConfig(size=16, resize=18)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "RGBX", "La", "PA"]

# Normalized pixels of [0, 1] inputs lie within these bounds for the configured mean/std.
LO = min((0 - m) / s for m, s in zip(CFG.mean, CFG.std, strict=True))
HI = max((1 - m) / s for m, s in zip(CFG.mean, CFG.std, strict=True))


def _check(x: np.ndarray) -> None:
    assert x.shape == (3, CFG.size, CFG.size) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert x.min() >= LO - 1e-5 and x.max() <= HI + 1e-5


@FAST
@given(mode=st.sampled_from(MODES), w=st.integers(1, 300), h=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_any_mode_and_size_preprocesses_to_a_finite_normalized_input(mode: str, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if mode in ("I", "F", "I;16"):
        dtype = {"I": np.int32, "F": np.float32, "I;16": np.uint16}[mode]
        arr = rng.integers(-(2**20) if mode == "I" else 0, 2**16 if mode != "F" else 10**6, (h, w)).astype(dtype)
        if mode == "F":
            arr[rng.random((h, w)) < 0.05] = np.nan  # NaN pixels must not poison the input
        img = Image.fromarray(arr)
    else:
        img = Image.new(mode, (w, h))
        bands = len(img.getbands())
        data = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
        img = Image.frombytes(mode, (w, h), data.tobytes()) if mode != "1" else img.point(lambda _: seed % 2 * 255)
    _check(preprocess(load_image(img), CFG))


@FAST
@given(data=st.binary(max_size=2048))
def test_any_bytes_decode_or_fail_with_image_error(data: bytes) -> None:
    try:
        img = load_image(data, max_pixels=1_000_000)
    except ImageError as e:
        assert str(e).startswith("image <")
        return
    _check(preprocess(img, CFG))


@FAST
@given(cut=st.integers(0, 4000), flip=st.lists(st.integers(0, 4000), max_size=4), fmt=st.sampled_from(
    ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]))
def test_damaged_real_images_decode_or_fail_with_image_error(cut: int, flip: list[int], fmt: str) -> None:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(cut).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, fmt)
    data = bytearray(buf.getvalue())
    for i in flip:
        if data:
            data[i % len(data)] ^= 0x5A
    data = data[: max(1, len(data) - cut)] if cut < len(data) else data
    try:
        img = load_image(bytes(data), max_pixels=1_000_000)
    except ImageError:
        return
    _check(preprocess(img, CFG))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=20)
KEYS = st.sampled_from(["files", "encoders", "index", "preprocess", "embedding", "rerank", "model", "quality"])
RELS = st.sampled_from(["a.onnx", "../x", "/etc/passwd", "a/../../b", "", ".", "a\\..\\b", "ok/file.bin", "..",
                        "link/x", "encoders/image_fp32.onnx", "a\ud800b", "a\x00b", "a\nb"]) | st.text(max_size=30)


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mf")
    (root / "link").symlink_to("/etc")
    return root


@FAST
@given(section=KEYS, value=JSON, rel=RELS, entry=JSON, version=st.sampled_from([FORMAT_VERSION, 0, 2, "1", None]))
def test_any_manifest_parses_or_fails_with_bundle_error(manifest_dir: Path, section: str, value: object, rel: str,
                                                        entry: object, version: object) -> None:
    m = {"format": FORMAT, "format_version": version, "files": {rel: entry}, section: value}
    (manifest_dir / "manifest.json").write_text(json.dumps(m))
    try:
        out = read_manifest(manifest_dir)
    except BundleError as e:
        assert str(manifest_dir) in str(e)
        return
    # Accepted: then every listed file stays inside the bundle and every section a reader indexes is an object.
    root = manifest_dir.resolve()
    for name in out.get("files", {}):
        assert (manifest_dir / name).resolve().is_relative_to(root)
    for key in ("files", "encoders", "index", "preprocess", "embedding"):
        assert out.get(key) is None or isinstance(out[key], dict)


@FAST
@given(data=st.binary(max_size=512))
def test_any_manifest_bytes_parse_or_fail_with_bundle_error(manifest_dir: Path, data: bytes) -> None:
    (manifest_dir / "manifest.json").write_bytes(data)
    with pytest.raises(BundleError):
        read_manifest(manifest_dir)  # random bytes are never a valid manifest (format key missing)
