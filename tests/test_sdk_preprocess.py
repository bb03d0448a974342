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


# ---- phone photos: JPEG draft decoding, EXIF with draft, HEIC, unsupported formats -------------------------

REAL = PreprocessConfig()  # the shipped recipe: resize 256, crop 224


def dish_jpeg(w: int, h: int, noise: float = 6.0, seed: int = 0, exif: Image.Exif | None = None) -> bytes:
    """A plate with sharp-edged toppings plus sensor-like noise, JPEG q90: the hard case for a downscale."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (200, 190, 170))
    d = ImageDraw.Draw(im)
    d.ellipse((w * 0.15, h * 0.1, w * 0.85, h * 0.9), fill=(245, 245, 240), outline=(90, 90, 90), width=max(2, w // 200))
    for _ in range(40):
        x, y, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.25, 0.75) * h, rng.uniform(0.01, 0.05) * w
        d.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    a = np.asarray(im, np.int16) + rng.normal(0, noise, (h, w, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def uint8_diff(a: np.ndarray, b: np.ndarray, cfg: PreprocessConfig = REAL) -> np.ndarray:
    """|a - b| of two preprocessed arrays, back in 0..255 pixel levels."""
    return np.abs(a - b) * np.asarray(cfg.std, np.float32)[:, None, None] * 255


def test_draft_scale_takes_exact_divisors_only() -> None:
    from malm.preprocess import draft_scale

    assert draft_scale(4032, 3024, 256) == 8 and draft_scale(3024, 4032, 256) == 8  # 504x378
    assert draft_scale(2016, 1512, 256) == 4 and draft_scale(1920, 1080, 256) == 4  # 1080/8 = 135 < 256
    assert draft_scale(512, 512, 256) == 2 and draft_scale(511, 511, 256) == 1 and draft_scale(640, 480, 256) == 1
    assert draft_scale(1001, 777, 256) == 1  # 777/2 is not whole: a partial block would shift the crop
    assert draft_scale(4032, 3024, 0) == 1


@pytest.mark.parametrize("size", [(4032, 3024), (2016, 1512), (3024, 4032)])
def test_draft_decode_matches_the_full_decode(size: tuple[int, int]) -> None:
    """Parity with the previous path (every pixel decoded, then resized) on a phone-sized photo.

    Same geometry (exact DCT scale), so the only difference is the low-pass filter before the same bilinear
    resize: libjpeg's 8x8 block mean vs the resize's triangle of width ~2x the full scale factor. Both
    average the same neighbourhood, so they differ only at detail finer than an output pixel: at the
    plate's and toppings' sharp edges up to 13-16 levels (of 255), 0.2-0.5 on average (measured). The bound
    (max 20, mean 1, p99 6) is that plus margin; a one-pixel crop shift, the bug this guards against, gives
    65+ at the edges and a mean above 1.
    """
    w, h = size
    data = dish_jpeg(w, h)
    drafted = load_image(data, REAL.max_pixels, min_side=REAL.resize)
    scale = 8 if min(w, h) >= 8 * 256 else 4
    assert drafted.size == (w // scale, h // scale)  # decoded small, not 12 MP
    full = preprocess(load_image(data, REAL.max_pixels), REAL)
    fast = preprocess(drafted, REAL)
    d = uint8_diff(full, fast)
    assert d.max() <= 20 and d.mean() <= 1.0 and np.percentile(d, 99) <= 6, (d.max(), d.mean())


def test_draft_keeps_exif_orientation(tmp_path: Path) -> None:
    """A phone photo stored sideways (EXIF orientation 6), draft-decoded, comes out upright."""
    upright = Image.open(io.BytesIO(dish_jpeg(1536, 2048, noise=0))).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    path = tmp_path / "sideways.jpg"
    path.write_bytes(buf.getvalue())
    decoded = load_image(path, REAL.max_pixels, min_side=REAL.resize)
    assert decoded.size == (512, 384)  # stored 2048x1536, drafted at 1/4, not yet turned
    got = preprocess(decoded, REAL)
    want = preprocess(upright, REAL)
    assert uint8_diff(got, want).mean() < 2.0
    assert uint8_diff(got, preprocess(stored, REAL)).mean() > 10  # not merely similar to the sideways picture


def test_non_jpeg_and_small_photos_decode_in_full() -> None:
    png = io.BytesIO()
    rgb(1024, 768).save(png, "PNG")
    assert load_image(png.getvalue(), min_side=256).size == (1024, 768)
    assert load_image(dish_jpeg(400, 300), min_side=256).size == (400, 300)


def _heic(image: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC photos need the optional malm[heic] extra (pillow-heif), not installed here; make test installs it")
    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, quality=95)
    return buf.getvalue()


def test_heic_photo_is_read_with_the_extra(tmp_path: Path) -> None:
    upright = Image.open(io.BytesIO(dish_jpeg(640, 480, noise=0))).convert("RGB")
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(_heic(upright))
    image = load_image(path)
    assert image.size == (640, 480)
    assert uint8_diff(preprocess(image, REAL), preprocess(upright, REAL)).mean() < 3.0


def test_heic_without_the_extra_names_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "IMG_0002.heic"
    path.write_bytes(_heic(rgb(64, 48)))
    code = f"""
import sys; sys.modules['pillow_heif'] = None  # as if the heic extra were not installed
from malm.sdk.image_io import load_image
from malm.errors import ImageError
try:
    load_image({str(path)!r})
except ImageError as e:
    print(e)
"""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert str(path) in proc.stdout and "pip install 'malm[heic]'" in proc.stdout


@pytest.mark.parametrize(("data", "what"), [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document is not a supported image format"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG drawing is not a supported"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64, "AVIF is not a supported|cannot be decoded"),
    (b"hello, not a photo", "not a recognized image format .supported: JPEG, PNG"),
])
def test_unsupported_formats_are_named(data: bytes, what: str) -> None:
    with pytest.raises(ImageError, match=what):
        load_image(data)
