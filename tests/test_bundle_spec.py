"""docs/bundle-format.md is the bundle's specification: check it against the code that reads bundles.

1. Every manifest field `malm/manifest.py` (and `malm/manifest_spec.py`) reads (and every encoder name the SDK looks up) is documented there.
2. The image preprocessing written out there, reimplemented below from the page alone (numpy integer and float32
   arithmetic, Pillow only to decode the file), reproduces `malm.preprocess.preprocess` exactly on odd photos:
   EXIF-rotated, CMYK, 16-bit, alpha, palette, greyscale, bilevel, float, tiny, very long and large.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malm import manifest as mf
from malm.preprocess import PreprocessConfig, draft_scale, preprocess

DOC = Path(__file__).resolve().parent.parent / "docs" / "bundle-format.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


# ---- 1. every field the code reads is documented -------------------------------------------------------------

SECTIONS = {  # manifest key -> the dataclass that parses it
    "embedding": mf.EmbeddingSection, "index": mf.IndexSettings, "rerank": mf.RerankSettings,
    "preprocess": mf.PreprocessSection, "selfcheck": mf.SelfCheckSection, "tokenizer": mf.TokenizerSection,
    "recipe_selfcheck": mf.RecipeSelfCheckSection,
}


def _table_keys(doc: str) -> set[str]:
    """Every `key` in the first column of a Markdown table row."""
    return set(re.findall(r"^\| `([\w.]+)`", doc, flags=re.M))


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_field_of_each_section_is_in_a_table(doc: str, section: str) -> None:
    keys = _table_keys(doc)
    missing = [f"{section}.{f.name}" for f in fields(SECTIONS[section])
               if f.name != "extra" and f"{section}.{f.name}" not in keys]
    assert not missing, f"docs/bundle-format.md does not document {missing}"


def test_index_files_top_level_and_encoder_keys_are_documented(doc: str) -> None:
    keys = _table_keys(doc)
    assert {"index.file", "index.store"} <= keys
    top = {f.name for f in fields(mf.Manifest) if f.name not in ("extra",)} | {"format"}
    assert not top - keys, f"top-level keys not documented: {top - keys}"
    encoder = {f.name for f in fields(mf.EncoderEntry) if f.name != "extra"}
    assert not encoder - keys, f"encoder entry keys not documented: {encoder - keys}"
    assert {"sha256", "bytes"} == {f.name for f in fields(mf.FileEntry)} and '"sha256", "bytes"' in doc


def test_every_encoder_name_the_sdk_looks_up_is_documented(doc: str) -> None:
    from malm.sdk.backends import IMAGE_ENCODERS
    from malm.sdk.recipe_encoder import RECIPE_ENCODERS

    names = {*IMAGE_ENCODERS.values(), *RECIPE_ENCODERS.values(), "image_tensorrt", "image_coreml", "matching_head",
             "recipe_tensorrt", "recipe_coreml"}
    table = doc.split("### Names", 1)[1].split("###", 1)[0]
    assert not [n for n in names if f"`{n}`" not in table]


def test_named_algorithms_and_supported_values_match_the_code(doc: str) -> None:
    from malm.preprocess import ALGORITHM

    assert f'`"{ALGORITHM}"`' in doc and "`malm-preprocess-1` is, in order" in doc
    for value in (*mf.FUSIONS, *mf.MISSING_TOKENS, *mf.TOKENIZER_RULES, *mf.SELFCHECK_DTYPES, *mf.RERANK_KINDS):
        assert f'"{value}"' in doc, value
    assert f"| `format_version` | integer | `{mf.FORMAT_VERSION}`" in doc


def test_manifest_defaults_are_what_the_doc_says() -> None:
    """Old bundles keep loading: a manifest without the new keys means exactly the documented defaults."""
    pp = mf.PreprocessSection.from_dict({})
    assert (pp.algorithm, pp.exif_orientation, pp.alpha_background, pp.max_aspect, pp.jpeg_draft, pp.layout,
            pp.dtype, pp.channels) == ("malm-preprocess-1", True, (255, 255, 255), 4.0, True, "NCHW", "float32", "RGB")
    assert PreprocessConfig.from_dict(pp.to_dict()) == PreprocessConfig()
    rr = mf.RerankSettings.from_manifest({"dim": 4})
    assert (rr.fusion, rr.missing_tokens, rr.weight, rr.candidates) == ("linear", "global", 0.5, 50)
    sc = mf.SelfCheckSection.from_dict({"inputs": "a.npy", "fp32_embeddings": "b.npy"})
    assert sc.inputs_dtype == "float16"


# ---- 2. the preprocessing, from the page ------------------------------------------------------------------------
# Everything below follows docs/bundle-format.md, "Image preprocessing", step by step.

ORIENT = {  # step 2: value -> the transform of an HxWxC array
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def spec_orient(image: Image.Image, a: np.ndarray) -> np.ndarray:
    value = image.getexif().get(0x0112, 1)
    return ORIENT[value](a) if value in ORIENT else a


def spec_rgb(image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Step 3 on the decoded picture's raw values (HxWx3 uint8), before orientation."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, np.uint8)
    if mode == "L":
        return np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2)
    if mode == "1":
        return np.repeat((np.asarray(image, bool) * 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode in ("I;16", "I"):
        v = np.asarray(image, np.float64)
        c = 255 / 65535 if max(float(v.max()), 1.0) > 255 else 1.0
        grey = np.trunc(np.clip(v * c, 0, 255)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        v = np.nan_to_num(np.asarray(image, np.float64))
        lo, hi = v.min(), v.max()
        grey = ((v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "CMYK":
        c, m, y, k = (np.asarray(image, np.int64)[..., i] for i in range(4))

        def m255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            t = a * b + 128
            return ((t + (t >> 8)) >> 8).astype(np.uint8)

        return np.stack([m255(255 - c, 255 - k), m255(255 - m, 255 - k), m255(255 - y, 255 - k)], axis=2)
    if mode == "P":
        idx = np.asarray(image, np.int64)
        palette = np.asarray(image.getpalette("RGB"), np.int64).reshape(-1, 3)
        alpha = np.full(len(palette), 255, np.int64)
        t = image.info.get("transparency")
        if isinstance(t, int):
            alpha[t] = 0
        elif isinstance(t, bytes):
            alpha[:len(t)] = np.frombuffer(t, np.uint8)
        rgba = np.concatenate([palette[idx], alpha[idx][..., None]], axis=2)
    elif mode == "LA":
        la = np.asarray(image, np.int64)
        rgba = np.concatenate([np.repeat(la[..., :1], 3, axis=2), la[..., 1:]], axis=2)
    elif mode == "RGBA":
        rgba = np.asarray(image, np.int64)
    else:
        raise AssertionError(f"no reference for mode {mode}")
    a = rgba[..., 3:]
    t = (rgba[..., :3] * a + np.asarray(background, np.int64) * (255 - a)) * 128 + 16384
    return ((((t >> 8) + t) >> 8) >> 7).astype(np.uint8)


def round_half_even(x: float) -> int:
    return round(x)  # Python's round is half-to-even, as the page says


def spec_aspect(a: np.ndarray, max_aspect: float) -> np.ndarray:
    h, w = a.shape[:2]
    short, long = min(w, h), max(w, h)
    if long <= short * max_aspect:
        return a
    keep = max(1, round_half_even(short * max_aspect))
    off = (long - keep) // 2
    return a[:, off:off + keep] if w > h else a[off:off + keep]


def _bilinear(x: float) -> float:
    if x < 0.0:
        x = -x
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


def coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[list[int], np.ndarray]:
    """(xmin per output index, the dense [out, in] matrix of 22-bit fixed-point coefficients)."""
    filt, base = FILTERS[interpolation]
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = base * fscale
    ss = 1.0 / fscale
    matrix = np.zeros((out_size, in_size), np.int64)
    starts = []
    for o in range(out_size):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [filt((i + xmin - center + 0.5) * ss) for i in range(xmax)]
        total = 0.0
        for v in w:
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        for i, v in enumerate(w):
            matrix[o, xmin + i] = int(v * (1 << 22) + 0.5) if v >= 0 else int(v * (1 << 22) - 0.5)
        starts.append(xmin)
    return starts, matrix


def _pass(matrix: np.ndarray, a: np.ndarray, axis: int) -> np.ndarray:
    # float64 products and sums of these integers are exact (< 2**53) and use BLAS, unlike int64
    acc = np.tensordot(matrix.astype(np.float64), a.astype(np.float64), axes=([1], [axis])).astype(np.int64)
    out = np.clip((acc + (1 << 21)) >> 22, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def spec_resize(a: np.ndarray, side: int, interpolation: str) -> np.ndarray:
    h, w = a.shape[:2]
    if min(w, h) == side:
        return a
    if w <= h:
        nw, nh = side, max(side, round_half_even(h * side / w))
    else:
        nw, nh = max(side, round_half_even(w * side / h)), side
    ystarts, vmat = coefficients(h, nh, interpolation)
    _, hmat = coefficients(w, nw, interpolation)
    # Horizontal first, over the rows the vertical pass reads (the result is the same: rows are independent).
    first = ystarts[0]
    last = max(np.flatnonzero(vmat.any(axis=0))) + 1
    tmp = _pass(hmat, a[first:last], axis=1)
    return _pass(vmat[:, first:last], tmp, axis=0)


def spec_preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    a = spec_rgb(image, cfg.alpha_background)  # colour conversion commutes with the orientation transforms
    if cfg.exif_orientation:
        a = spec_orient(image, a)
    a = spec_aspect(a, cfg.max_aspect)
    a = spec_resize(a, cfg.resize, cfg.interpolation)
    h, w = a.shape[:2]
    left, top = (w - cfg.size) // 2, (h - cfg.size) // 2
    a = a[top:top + cfg.size, left:left + cfg.size]
    x = a.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


# ---- the odd photos ----------------------------------------------------------------------------------------------

SMALL = PreprocessConfig(size=32, resize=36)


def _noise(h: int, w: int, c: int, seed: int = 0, hi: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, hi - 1, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    return np.clip(smooth + rng.normal(0, hi / 10, (h, w, c)), 0, hi - 1).astype(np.uint16 if hi > 256 else np.uint8)


def _reopen(image: Image.Image, fmt: str, **kw: object) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _exif(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def odd_photos() -> dict[str, Image.Image]:
    rgb = Image.fromarray(_noise(45, 60, 3))
    photos = {f"jpeg-exif-{v}": _reopen(rgb, "JPEG", quality=92, exif=_exif(v)) for v in range(1, 9)}
    photos["cmyk-jpeg"] = _reopen(Image.fromarray(_noise(30, 41, 4), "CMYK"), "JPEG", quality=95)
    photos["grey-16bit-png"] = _reopen(Image.fromarray(_noise(40, 50, 1, hi=65536)[..., 0]), "PNG")
    photos["grey-16bit-png-low-values"] = _reopen(Image.fromarray(_noise(40, 50, 1, hi=256).astype(np.uint16)[..., 0]),
                                                  "PNG")
    photos["rgb-16bit-png"] = Image.open(io.BytesIO(_png16_rgb(_noise(37, 52, 3, hi=65536))))
    rgba = np.concatenate([_noise(50, 40, 3), _noise(50, 40, 1, seed=3)], axis=2)
    photos["rgba-png"] = _reopen(Image.fromarray(rgba, "RGBA"), "PNG")
    photos["la-png"] = _reopen(Image.fromarray(rgba[..., 2:], "LA"), "PNG")
    pal = Image.fromarray(_noise(40, 44, 3)).quantize(16)
    photos["palette-png-transparent"] = _reopen(pal, "PNG", transparency=3)
    photos["palette-gif"] = _reopen(pal, "GIF")
    photos["grey-jpeg"] = _reopen(Image.fromarray(_noise(48, 36, 1)[..., 0], "L"), "JPEG")
    photos["bilevel-png"] = _reopen(Image.fromarray(_noise(40, 40, 1)[..., 0] > 128), "PNG")
    photos["float-tiff"] = _reopen(Image.fromarray(_noise(40, 40, 1)[..., 0].astype(np.float32) / 7, "F"), "TIFF")
    photos["tiny-1x1"] = _reopen(Image.fromarray(_noise(1, 1, 3)), "PNG")
    photos["tiny-3x2"] = _reopen(Image.fromarray(_noise(2, 3, 3)), "PNG")
    photos["exact-36"] = _reopen(Image.fromarray(_noise(36, 80, 3)), "PNG")  # shorter side already R: no resize
    photos["long-strip"] = _reopen(Image.fromarray(_noise(3, 700, 3)), "PNG")  # aspect > 4: centre kept
    photos["tall-strip"] = _reopen(Image.fromarray(_noise(500, 7, 3)), "PNG")
    return photos


PHOTOS = odd_photos()


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_the_documented_preprocessing_reproduces_malm_preprocess(name: str) -> None:
    image = PHOTOS[name]
    got, want = spec_preprocess(image, SMALL), preprocess(image, SMALL)
    assert got.shape == want.shape == (3, 32, 32) and got.dtype == want.dtype == np.float32
    assert np.array_equal(got, want), f"{name}: max |diff| {np.abs(got - want).max()}"


def test_16bit_rgb_is_decoded_to_its_high_byte() -> None:
    a = _noise(37, 52, 3, hi=65536)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png16_rgb(a))).convert("RGB")), (a >> 8).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_every_documented_kernel_is_pillows(interpolation: str) -> None:
    cfg = PreprocessConfig(size=32, resize=40, interpolation=interpolation)
    for name in ("jpeg-exif-6", "rgba-png", "tiny-3x2"):
        assert np.array_equal(spec_preprocess(PHOTOS[name], cfg), preprocess(PHOTOS[name], cfg)), name


def test_a_large_photo_at_the_shipped_size() -> None:
    """A 2000x1500 picture down to 256 then 224: the wide-support (downscale x5.9) coefficients."""
    image = Image.fromarray(_noise(1500, 2000, 3, seed=5))
    cfg = PreprocessConfig()
    assert np.array_equal(spec_preprocess(image, cfg), preprocess(image, cfg))


def test_the_manifest_parameters_are_followed() -> None:
    """alpha_background, max_aspect and exif_orientation change the pixels exactly as the page says."""
    cfg = PreprocessConfig(size=32, resize=36, alpha_background=(0, 40, 200), max_aspect=2.5, exif_orientation=False)
    for name in ("rgba-png", "palette-png-transparent", "long-strip", "jpeg-exif-6"):
        got, want = spec_preprocess(PHOTOS[name], cfg), preprocess(PHOTOS[name], cfg)
        assert np.array_equal(got, want), name
    assert not np.array_equal(preprocess(PHOTOS["rgba-png"], cfg), preprocess(PHOTOS["rgba-png"], SMALL))
    assert not np.array_equal(preprocess(PHOTOS["jpeg-exif-6"], cfg), preprocess(PHOTOS["jpeg-exif-6"], SMALL))


def test_unsupported_values_are_refused_not_guessed() -> None:
    for bad in ({"algorithm": "malm-preprocess-2"}, {"layout": "NHWC"}, {"dtype": "float16"}, {"channels": "BGR"},
                {"alpha_background": [0, 0, 256]}, {"max_aspect": 0.5}, {"jpeg_draft": "yes"}):
        with pytest.raises(ValueError):
            PreprocessConfig.from_dict({**SMALL.to_dict(), **bad})


@pytest.mark.parametrize(("size", "scale"), [((4032, 3024), 8), ((3024, 4032), 8), ((2016, 1512), 4),
                                            ((1920, 1080), 4), ((512, 512), 2), ((511, 511), 1), ((1001, 777), 1)])
def test_the_documented_draft_scale(size: tuple[int, int], scale: int) -> None:
    w, h = size
    spec = next((s for s in (8, 4, 2) if w % s == 0 and h % s == 0 and min(w, h) / s >= 256), 1)
    assert spec == draft_scale(w, h, 256) == scale


# ---- 3. the hnswlib file layout the page documents ----------------------------------------------------------------


def read_hnsw_as_documented(path: Path) -> dict[str, object]:
    """Parse an index file with nothing but the page's table: header, level-0 records, upper-level link lists."""
    data = path.read_bytes()
    (offset_level0, max_elements, count, size_per_element, label_offset, offset_data) = struct.unpack_from("<6Q", data)
    maxlevel, enterpoint = struct.unpack_from("<iI", data, 48)
    max_m, max_m0, m = struct.unpack_from("<3Q", data, 56)
    (mult,) = struct.unpack_from("<d", data, 80)
    (ef_construction,) = struct.unpack_from("<Q", data, 88)
    dim = (label_offset - offset_data) // 4
    vectors, labels, deleted = [], [], []
    for i in range(count):
        rec = 96 + i * size_per_element
        header = struct.unpack_from("<I", data, rec)[0]
        deleted.append(bool(data[rec + 2] & 1))
        assert header & 0xFFFF <= max_m0
        vectors.append(np.frombuffer(data, np.float32, dim, rec + offset_data))
        labels.append(struct.unpack_from("<Q", data, rec + label_offset)[0])
    pos = 96 + count * size_per_element
    for _ in range(count):  # upper-level links: a uint32 byte count, then that many bytes
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4 + n
    return {"dim": dim, "M": m, "ef_construction": ef_construction, "max_elements": max_elements, "count": count,
            "vectors": np.stack(vectors), "labels": labels, "deleted": deleted, "end": pos, "size": len(data),
            "offset_level0": offset_level0, "max_m": max_m, "max_m0": max_m0, "mult": mult, "maxlevel": maxlevel,
            "enterpoint": enterpoint}


def test_the_documented_hnswlib_layout_reads_a_real_index(tmp_path: Path) -> None:
    from malm.edge_index.hnsw import HnswIndex, IndexSettings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 24)).astype(np.float32)
    index = HnswIndex.create(IndexSettings(dim=24, M=8, ef_construction=50), capacity=400)
    labels = index.add(x)
    index.remove(labels[10:20])
    settings = index.save(tmp_path / "i.hnsw")
    got = read_hnsw_as_documented(tmp_path / "i.hnsw")
    assert got["end"] == got["size"], "the page's layout must account for every byte"
    assert (got["dim"], got["M"], got["ef_construction"], got["max_elements"], got["count"]) == (
        24, settings.M, settings.ef_construction, settings.max_elements, 300)
    assert got["offset_level0"] == 0 and got["max_m0"] == 2 * settings.M and got["max_m"] == settings.M
    # hnswlib adds on several threads, so which slot a label lands in is not fixed: compare through the labels.
    assert sorted(got["labels"]) == sorted(labels)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    by_label = {label: i for i, label in enumerate(labels)}
    assert np.allclose(got["vectors"], unit[[by_label[label] for label in got["labels"]]], atol=1e-6)  # normalized
    assert sorted(got["labels"][i] for i, d in enumerate(got["deleted"]) if d) == sorted(labels[10:20])
    # The page's similarity: 1 - distance for "ip"; exact search over the live vectors gives hnswlib's top 10.
    live = sorted(got["labels"][i] for i, d in enumerate(got["deleted"]) if not d)
    q = unit[:5]
    exact = [[live[j] for j in np.argsort(-(unit[live] @ qi), kind="stable")[:10]] for qi in q]
    found = [[label for label, _ in row] for row in index.search(q, 10)]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)]) >= 0.95
