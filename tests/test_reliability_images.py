"""What an app or a user may hand the SDK and `malm query` as a photo: each works or fails with an
`ImageError` naming the input and the reason; a batch with a bad photo still answers the others."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _sdk_bundle import CFG, make_bundle, photo
from PIL import Image

from malm.errors import ImageError
from malm.preprocess import PreprocessConfig, preprocess
from malm.sdk import Retriever
from malm.sdk.image_io import load_image


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _save(fmt: str, img: Image.Image, **kw: object) -> Callable[[Path], None]:
    return lambda p: img.save(p, fmt, **kw)


def _exif_rotated(p: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo(3, 48).save(p, "JPEG", exif=exif, quality=95)


def _png_header(width: int, height: int, mode: int = 2) -> bytes:
    """A PNG whose header claims width x height (colour type `mode`) over one tiny zlib stream: a file of
    ~100 bytes that would decode to gigabytes (how a decompression bomb looks to a decoder)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9))
            + chunk(b"IEND", b""))


def _gif(p: Path) -> None:
    frames = [photo(i, 48).convert("P") for i in range(3)]
    frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


GOOD: dict[str, tuple[str, Callable[[Path], None]]] = {
    "png_alpha": ("png", _save("PNG", photo(3, 48).convert("RGBA"))),
    "png_la": ("png", _save("PNG", photo(3, 48).convert("LA"))),
    "palette": ("png", _save("PNG", photo(3, 48).convert("P"))),
    "grayscale": ("png", _save("PNG", photo(3, 48).convert("L"))),
    "bilevel": ("png", _save("PNG", photo(3, 48).convert("1"))),
    "png_16bit": ("png", lambda p: Image.fromarray(
        np.asarray(photo(3, 48).convert("L")).astype(np.uint16) * 257).save(p, "PNG")),
    "tiff_float": ("tif", lambda p: Image.fromarray(np.asarray(photo(3, 48).convert("L"), np.float32)).save(p)),
    "tiff_int32_negative": ("tif", _save("TIFF", Image.new("I", (16, 16), -5))),
    "cmyk_jpeg": ("jpg", _save("JPEG", photo(3, 48).convert("CMYK"))),
    "progressive_jpeg": ("jpg", _save("JPEG", photo(3, 48), progressive=True)),
    "animated_gif": ("gif", _gif),
    "exif_rotated": ("jpg", _exif_rotated),
    "webp": ("webp", _save("WEBP", photo(3, 48))),
    "bmp": ("bmp", _save("BMP", photo(3, 48))),
    "one_pixel": ("png", _save("PNG", Image.new("RGB", (1, 1), (200, 30, 30)))),
    "one_by_20000": ("png", _save("PNG", Image.new("RGB", (1, 20000), (20, 200, 30)))),
    "lab": ("tif", _save("TIFF", Image.new("LAB", (16, 16), (50, 10, 10)))),
}

BAD: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "zero_bytes": ("jpg", lambda p: p.write_bytes(b""), "not a recognized image"),
    "truncated_jpeg": ("jpg", lambda p: p.write_bytes(_jpeg(photo(3, 64))[:400]), "cannot be decoded"),
    "random_bytes": ("jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a recognized"),
    "text_named_jpg": ("jpg", lambda p: p.write_text("this is a recipe, not a photo\n"), "not a recognized"),
    "jpeg_header_only": ("jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF"), "cannot be decoded|recognized"),
    "huge_20000x20000": ("png", lambda p: p.write_bytes(_png_header(20000, 20000)), "pixels"),
    "decompression_bomb": ("png", lambda p: p.write_bytes(_png_header(100000, 100000, 0)), "pixels"),
    "a_directory": ("jpg", lambda p: p.mkdir(), "is a directory"),
    "missing": ("jpg", lambda p: None, "file not found"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Retriever, Path, Path]:
    root = tmp_path_factory.mktemp("img")
    bundle = make_bundle(root / "bundle", 20)
    folder = root / "photos"
    folder.mkdir()
    for name, (ext, write) in GOOD.items():
        write(folder / f"{name}.{ext}")
    for name, (ext, write, _) in BAD.items():
        write(folder / f"{name}.{ext}")
    return Retriever.load(bundle), bundle, folder


def _path(folder: Path, name: str) -> Path:
    ext = GOOD[name][0] if name in GOOD else BAD[name][0]
    return folder / f"{name}.{ext}"


def _rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


# What each odd file shows, as plain RGB built without the SDK's decoder; (reference, lossless?).
REFERENCE: dict[str, tuple[Callable[[], Image.Image], bool]] = {
    "png_alpha": (lambda: photo(3, 48), True),  # fully opaque alpha: the photo itself
    "png_la": (lambda: _rgb(photo(3, 48).convert("L")), True),
    "palette": (lambda: _rgb(photo(3, 48).convert("P")), True),
    "grayscale": (lambda: _rgb(photo(3, 48).convert("L")), True),
    "bilevel": (lambda: _rgb(photo(3, 48).convert("1")), True),
    "png_16bit": (lambda: _rgb(photo(3, 48).convert("L")), True),  # 16-bit = 8-bit * 257
    "tiff_int32_negative": (lambda: Image.new("RGB", (16, 16), (0, 0, 0)), True),  # clipped to black
    "bmp": (lambda: photo(3, 48), True),
    "animated_gif": (lambda: _rgb(photo(0, 48).convert("P")), True),  # the first frame
    "one_pixel": (lambda: Image.new("RGB", (1, 1), (200, 30, 30)), True),
    "one_by_20000": (lambda: Image.new("RGB", (1, 20000), (20, 200, 30)), True),
    "cmyk_jpeg": (lambda: photo(3, 48), False),
    "progressive_jpeg": (lambda: photo(3, 48), False),
    "webp": (lambda: photo(3, 48), False),
    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": what the user sees.
    "exif_rotated": (lambda: photo(3, 48).transpose(Image.Transpose.ROTATE_270), False),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_odd_images_give_the_reference_results(setup: tuple[Retriever, Path, Path], name: str) -> None:
    """The odd file is answered as the picture it shows: same hits as that picture given as plain RGB pixels."""
    r, _, folder = setup
    make_ref, lossless = REFERENCE[name]
    ref = make_ref()
    want = r.search(np.asarray(ref), k=3)
    got = r.search(_path(folder, name), k=3)
    if lossless:
        assert [h.recipe_id for h in got] == [h.recipe_id for h in want], name
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
    else:  # JPEG / WebP: the same best hit, a score within compression noise
        assert got[0].recipe_id == want[0].recipe_id, name
        assert abs(got[0].score - want[0].score) < 0.02, (got[0].score, want[0].score)
    if name in ("png_alpha", "bmp", "cmyk_jpeg", "progressive_jpeg", "webp"):
        assert got[0].recipe_id == "rec0003"  # photo 3 in colour finds its own recipe (the fixture's design)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_but_valid_images_are_answered(setup: tuple[Retriever, Path, Path], name: str) -> None:
    r, _, folder = setup
    path = _path(folder, name)
    hits = r.search(path, k=3)
    assert len(hits) == 3 and all(np.isfinite(h.score) for h in hits)
    x = preprocess(load_image(path), CFG)
    assert x.shape == (3, CFG.size, CFG.size) and np.isfinite(x).all()
    # Same answer from the path, its bytes and the decoded PIL image.
    assert [h.recipe_id for h in r.search(path.read_bytes(), k=3)] == [h.recipe_id for h in hits]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_fail_naming_the_file_and_the_reason(setup: tuple[Retriever, Path, Path], name: str) -> None:
    r, _, folder = setup
    path = _path(folder, name)
    with pytest.raises(ImageError, match=BAD[name][2]) as e:
        r.search(path, k=3)
    assert str(path) in str(e.value)


def test_exif_orientation_is_applied() -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(3, 48).save(buf, "PNG", exif=exif)
    rotated = load_image(buf.getvalue())
    expected = photo(3, 48).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(preprocess(rotated, CFG), preprocess(expected, CFG))


def test_pixel_limit_is_configurable() -> None:
    img = Image.new("RGB", (300, 300))
    with pytest.raises(ImageError, match="above the limit of 10000"):
        load_image(_jpeg(img), max_pixels=10_000)
    assert load_image(_jpeg(img), max_pixels=90_000).size == (300, 300)
    cfg = PreprocessConfig.from_dict({**CFG.to_dict(), "max_pixels": 10_000})
    with pytest.raises(ImageError, match="pixels"):
        load_image(img, max_pixels=cfg.max_pixels)
    for bad in (0, -1, "1000", True, 1.5):
        with pytest.raises(ValueError, match="max_pixels"):
            PreprocessConfig(max_pixels=bad)  # type: ignore[arg-type]


def test_other_inputs_an_app_may_pass(setup: tuple[Retriever, Path, Path]) -> None:
    r, _, _ = setup
    assert r.search(np.zeros((5, 7, 3), np.uint8), k=1)
    assert r.search(np.zeros((5, 7), np.uint8), k=1)
    assert r.search(bytearray(_jpeg(photo(1))), k=1)
    for bad, reason in [(np.zeros((5, 5, 3), np.float32), "uint8"), (np.zeros((0, 4, 3), np.uint8), "empty"),
                        (np.zeros((4, 4, 2), np.uint8), "channels"), (b"", "not a recognized"),
                        (12, "expected a path"), (None, "expected a path"), (Image.new("RGB", (0, 0)), "empty")]:
        with pytest.raises(ImageError, match=reason):
            r.search(bad, k=1)  # type: ignore[arg-type]


def test_a_batch_with_bad_photos_answers_the_others(setup: tuple[Retriever, Path, Path]) -> None:
    r, _, folder = setup
    items = [_path(folder, n) for n in ("grayscale", "zero_bytes", "cmyk_jpeg", "decompression_bomb", "palette")]
    out = r.search_batch(items, k=2, batch_size=2)
    assert [type(x).__name__ for x in out] == ["list", "ImageError", "list", "ImageError", "list"]
    for good, res in zip((items[0], items[2], items[4]), (out[0], out[2], out[4]), strict=True):
        assert [h.recipe_id for h in res] == [h.recipe_id for h in r.search(good, k=2)]  # type: ignore[union-attr]


def test_cli_query_exits_nonzero_without_traceback(setup: tuple[Retriever, Path, Path]) -> None:
    _, bundle, folder = setup
    names = ["grayscale", *sorted(BAD)]
    p = subprocess.run([sys.executable, "-m", "malm.cli", "query", *[str(_path(folder, n)) for n in names],
                        "--bundle", str(bundle), "--json", "-k", "2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    results = json.loads(p.stdout)["results"]
    assert results[0]["error"] is None and len(results[0]["hits"]) == 2
    for name, res in zip(names[1:], results[1:], strict=True):
        assert res["hits"] == [] and str(_path(folder, name)) in res["error"], res
    # Only bad photos: still exit 1, one clear line each on stderr, no traceback.
    p = subprocess.run([sys.executable, "-m", "malm.cli", "query", str(_path(folder, "text_named_jpg")),
                        "--bundle", str(bundle)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "text_named_jpg.jpg" in p.stderr
