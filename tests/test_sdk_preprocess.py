"""Image decoding and preprocessing: every input kind and mode, EXIF, limits, parity with training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from malm.errors import ImageError
from malm.preprocess import PreprocessConfig, preprocess
from malm.sdk.image_io import load_image

CFG = PreprocessConfig(size=32, resize=36)


def reference(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """A straightforward re-statement of the eval transform (Recipe1M: resize shorter side, center crop)."""
    w, h = image.size
    s = cfg.resize / min(w, h)
    image = image.resize((max(cfg.resize, round(w * s)), max(cfg.resize, round(h * s))), Image.Resampling.BILINEAR)
    w, h = image.size
    left, top = (w - cfg.size) // 2, (h - cfg.size) // 2
    x = np.asarray(image.crop((left, top, left + cfg.size, top + cfg.size)), np.float32) / 255.0
    return ((x - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)).transpose(2, 0, 1)


def rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_matches_reference_transform() -> None:
    for w, h in [(64, 48), (48, 64), (36, 36), (100, 37)]:
        im = rgb(w, h)
        assert np.allclose(preprocess(im, CFG), reference(im, CFG), atol=1e-6)


def test_modes_become_rgb() -> None:
    base = rgb(40, 30)
    gray = np.asarray(base.convert("L"))
    cases = {
        "L": base.convert("L"), "LA": base.convert("LA"), "RGBA": base.convert("RGBA"), "P": base.convert("P"),
        "CMYK": base.convert("CMYK"), "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I": base.convert("I"), "F": base.convert("F"), "1": base.convert("1"),
    }
    for mode, im in cases.items():
        x = preprocess(im, CFG)
        assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all(), mode
    # 16-bit gray scales down to the same picture as its 8-bit version.
    assert np.allclose(preprocess(cases["I;16"], CFG), preprocess(cases["L"], CFG), atol=0.05)
    # Transparent pixels are composited on white.
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.allclose(preprocess(clear, CFG), preprocess(Image.new("RGB", (40, 40), "white"), CFG))


def exif_rotated_jpeg(orientation: int = 6) -> tuple[bytes, Image.Image]:
    """A 60x40 JPEG stored sideways with an EXIF orientation tag, and the upright image it shows."""
    # Large flat blocks: JPEG keeps them, so the decoded photo is close to the original.
    grid = np.random.default_rng(3).integers(0, 256, (3, 2, 3), dtype=np.uint8)
    upright = Image.fromarray(np.kron(grid, np.ones((20, 20, 1), np.uint8)), "RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 (CW 90) to display
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=98, exif=exif)
    return buf.getvalue(), upright


def test_exif_orientation_applied() -> None:
    data, upright = exif_rotated_jpeg()
    x = preprocess(load_image(data), CFG)
    assert np.abs(x - preprocess(upright, CFG)).mean() < 0.1
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (60, 40)  # stored landscape; upright it is portrait
    ignoring_exif = Image.fromarray(np.asarray(stored.convert("RGB")))  # pixels only, no EXIF
    assert np.abs(x - preprocess(ignoring_exif, CFG)).mean() > 0.3


def test_input_kinds(tmp_path: Path) -> None:
    im = rgb(50, 40)
    path = tmp_path / "a.png"
    im.save(path)
    arrays = [preprocess(load_image(x), CFG) for x in (str(path), path, path.read_bytes(), im, np.asarray(im),
                                                         bytearray(path.read_bytes()))]
    assert all(np.array_equal(a, arrays[0]) for a in arrays)
    gray = np.asarray(im.convert("L"))
    assert preprocess(load_image(gray), CFG).shape == (3, 32, 32)
    assert preprocess(load_image(gray[:, :, None]), CFG).shape == (3, 32, 32)
    assert preprocess(load_image(np.asarray(im.convert("RGBA"))), CFG).shape == (3, 32, 32)


def test_errors_name_the_input(tmp_path: Path) -> None:
    good = tmp_path / "ok.jpg"
    rgb(64, 64).save(good, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "text.jpg").write_text("hello")
    cases = [
        (tmp_path / "missing.jpg", "missing.jpg: file not found"),
        (tmp_path, "is a directory"),
        (tmp_path / "text.jpg", "text.jpg: not a recognized image format"),
        (tmp_path / "cut.jpg", "cut.jpg: cannot be decoded"),
        (b"\x00" * 10, "<10 bytes>: not a recognized"),
        (np.zeros((4, 4), np.float32), "must be uint8"),
        (np.zeros((4, 4, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((0, 4, 3), np.uint8), "empty array"),
        (12, "expected a path"),
    ]
    for src, message in cases:
        with pytest.raises(ImageError, match=message.replace("<", ".").replace(">", ".")):
            load_image(src)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="above the limit of 1000"):
        load_image(good, max_pixels=1000)
    with pytest.raises(ImageError, match="above the limit"):
        load_image(rgb(50, 50), max_pixels=1000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"]),
       w=st.integers(1, 300), h=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_any_mode_and_size_gives_a_finite_array(mode: str, w: int, h: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(pixels, "RGB")
    im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257) if mode == "I;16" \
        else im.convert(mode)
    x = preprocess(load_image(im), CFG)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()


def test_very_long_image_stays_cheap() -> None:
    x = preprocess(rgb(20000, 2), CFG)  # without the aspect limit this would resize to 360000x36
    assert x.shape == (3, 32, 32)


def test_parity_with_training_eval_item(tmp_path: Path) -> None:
    """The SDK's pixels for a dataset photo equal the training eval item's (incl. an EXIF-rotated photo)."""
    pytest.importorskip("torch", reason="the training side needs torch")
    from _tiny_run import make_dataset

    from malm.training.data import RecipeImageDataset, prepare

    data = make_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=3)
    # Replace one test photo by a sideways-stored JPEG with an EXIF orientation tag.
    test_photos = sorted((data / "images" / "test").rglob("*.jpg"))
    jpeg, _ = exif_rotated_jpeg()
    test_photos[1].write_bytes(jpeg)
    prepared = prepare(data, cache_dir=tmp_path / "cache", min_freq=1)
    ds = RecipeImageDataset(prepared, "test", CFG, train=False)
    split = prepared.split("test")
    for k in range(len(ds)):
        item = ds[k]
        path = split.image_paths(int(item["index"]))[0]
        sdk = preprocess(load_image(str(path)), CFG)
        assert np.array_equal(item["image"].numpy(), sdk), path


def test_lazy_pil_image_that_fails_to_decode(tmp_path: Path) -> None:
    good = tmp_path / "ok.jpg"
    rgb(64, 64).save(good, format="JPEG")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    lazy = Image.open(tmp_path / "cut.jpg")  # header is fine; the pixels are not there
    with pytest.raises(ImageError, match="PIL image 64x64 RGB.*cannot be decoded"):
        load_image(lazy)
