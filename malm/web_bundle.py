"""`malm bundle web`: the files a browser fetches to answer like the Python SDK (clients/web reads them).

    malm bundle web runs/demo/bundle --out site/bundle          # int8 image encoder, float16 vectors

A web bundle is a flat directory of static files, each listed in its own `manifest.json` with sha256 and
bytes (the browser client checks every hash with SubtleCrypto before it uses a file):

    manifest.json                 format "malm-web-bundle"; preprocess, embedding, encoders, vectors, rerank
    encoders/image_<variant>.onnx the image encoder(s), copied byte for byte from the bundle
    vectors.bin                   [count, dim] little-endian float16 (or int8 + vector_scales.bin float32)
    recipes.json                  the records in vector order: label, id, title, ingredients, instructions,
                                  url, names (the detected ingredient names the allergen filter matches)
    rerank/tokens.bin, offsets.bin, matching_head.onnx   when the bundle can re-rank
    encoders/recipe_<precision>.onnx + vocab.json        when the bundle can encode recipes (add one on the phone)
    source/manifest.json (+ its signature when the bundle is signed): where the web bundle came from

Why not the hnswlib index and the SQLite store as they are: hnswlib's file layout is x86-64 specific
(8-byte size_t and labels), and exact search over float16 vectors is faster than a graph at the sizes a
phone holds (benchmarks/web_client.py); JSON compresses better than SQLite and needs no sql.js.
No torch; reads the bundle through the SDK's verified loader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import atomic_path
from malm.edge_index.hnsw import HnswIndex
from malm.edge_index.records import _UNITS
from malm.edge_index.rerank import TokenStore, disabled_reason
from malm.edge_index.store import RecipeStore
from malm.errors import BundleError, MalmError
from malm.sdk.backends.ort import OrtSession
from malm.sdk.bundle_loader import open_bundle

WEB_FORMAT = "malm-web-bundle"
WEB_FORMAT_VERSION = 1
VECTOR_DTYPES = ("float16", "int8")
# The image variants a browser can run (onnxruntime-web, WASM): symmetric int8 is as fast there as the
# x86-tuned int8_cpu, and it is the variant phones' NPUs/CPUs prefer.
VARIANT_PREFERENCE = ("int8", "int8_cpu", "fp32")
SIGNATURE_FILES = ("manifest.sig", "manifest.json.sig", "signature.json")


@dataclass(frozen=True)
class WebExport:
    out: Path
    files: dict[str, dict[str, Any]]  # rel -> {sha256, bytes}
    recipes: int
    variants: tuple[str, ...]
    vectors: str
    rerank: bool

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "recipes": self.recipes, "variants": list(self.variants),
                "vectors": self.vectors, "rerank": self.rerank, "files": len(self.files) + 1, "bytes": self.bytes}


def quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: q = round(x / s), s = max|x| / 127 (a zero row keeps s = 1)."""
    x = np.asarray(x, np.float32)
    scale = np.abs(x).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def choose_variants(encoders: dict[str, Any], wanted: Sequence[str]) -> list[str]:
    """The image variants to ship: `wanted` (each must be in the bundle), or the first of the preference."""
    image = {name.removeprefix("image_"): e for name, e in encoders.items()
             if name.startswith("image_") and str(e.get("file", "")).endswith(".onnx")}
    if wanted:
        missing = [v for v in wanted if v not in image]
        if missing:
            raise MalmError(f"bundle has no ONNX image encoder {missing} (it has {sorted(image) or 'none'})")
        return list(dict.fromkeys(wanted))
    for v in VARIANT_PREFERENCE:
        if v in image:
            return [v]
    raise MalmError(f"bundle has no ONNX image encoder a browser can run (it has {sorted(image) or 'none'})")


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest(), path.stat().st_size


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _io_names(path: Path) -> dict[str, Any]:
    """What the client must know about an ONNX model before running it (read with onnxruntime, no torch)."""
    s = OrtSession(path, threads=1)
    meta = s.session.get_modelmeta().custom_metadata_map
    return {"inputs": s.input_names, "outputs": s.output_names,
            "input_shapes": {n: s.input_shape(n) for n in s.input_names}, "metadata": dict(meta)}


def export_web(bundle: str | Path, out: str | Path, variants: Sequence[str] = (), vectors: str = "float16",
               rerank: bool = True, overwrite: bool = False, recipe_encoder: bool = True) -> WebExport:
    """Write the web bundle of `bundle` into `out` (a new or empty directory, or `overwrite`)."""
    if vectors not in VECTOR_DTYPES:
        raise MalmError(f"vectors must be one of {VECTOR_DTYPES}, got {vectors!r}")
    src = open_bundle(bundle, check_hashes="full")  # a web bundle is only as good as what it was made from
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MalmError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
        if not (out / "manifest.json").is_file() or \
                json.loads((out / "manifest.json").read_text()).get("format") != WEB_FORMAT:
            raise MalmError(f"{out}: not a web bundle; refusing to overwrite it")
        shutil.rmtree(out)
    stage = out.with_name(f".{out.name}.tmp-{time.time_ns()}")
    stage.mkdir(parents=True)
    try:
        result = _export_into(src, stage, out, choose_variants(dict(src.manifest.get("encoders") or {}), variants),
                              vectors, rerank, HnswIndex, RecipeStore, TokenStore)
        if recipe_encoder:
            _export_recipe_encoder(src, stage)
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return result


def _export_into(src: Any, stage: Path, out: Path, variants: list[str], vectors: str, rerank: bool,
                 HnswIndex: Any, RecipeStore: Any, TokenStore: Any) -> WebExport:  # noqa: N803
    section = src.index
    store = RecipeStore.open(src.path(section.store))
    try:
        labels = store.labels()
        records = store.get(labels)
        names = {label: store.names(label) for label in labels}
    finally:
        store.close()
    index = HnswIndex.load(src.path(section.file), section.settings, labels)
    vecs = index.get_vectors(labels) if labels else np.zeros((0, src.dim), np.float32)

    manifest: dict[str, Any] = {
        "format": WEB_FORMAT, "format_version": WEB_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "malm_version": src.manifest.get("malm_version"),
        "preprocess": src.preprocess.to_dict(),
        "embedding": {"dim": src.dim, "metric": "cosine"},
        "encoders": {}, "default_encoder": f"image_{variants[0]}",
    }
    for v in variants:
        entry = src.encoder(f"image_{v}")
        rel = f"encoders/image_{v}.onnx"
        (stage / "encoders").mkdir(exist_ok=True)
        shutil.copyfile(src.path(entry.file), stage / rel)
        io = _io_names(stage / rel)
        manifest["encoders"][f"image_{v}"] = {"file": rel, "role": "image", "precision": entry.precision or v,
                                              "tokens": "tokens" in io["outputs"]}

    # Vectors in the order of recipes.json: row i is recipe i.
    if vectors == "float16":
        _write_bytes(stage / "vectors.bin", vecs.astype("<f2").tobytes())
        manifest["vectors"] = {"file": "vectors.bin", "dtype": "float16", "count": len(labels), "dim": src.dim}
    else:
        q, scale = quantize_rows_int8(vecs)
        _write_bytes(stage / "vectors.bin", q.tobytes())
        _write_bytes(stage / "vector_scales.bin", scale.astype("<f4").tobytes())
        manifest["vectors"] = {"file": "vectors.bin", "dtype": "int8", "scales": "vector_scales.bin",
                               "count": len(labels), "dim": src.dim}
    rows = [{"label": label, "id": records[label].id, "title": records[label].title,
             "ingredients": list(records[label].ingredients), "instructions": list(records[label].instructions),
             "url": records[label].url, "names": names[label]} for label in labels]
    _write_bytes(stage / "recipes.json", json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode())
    manifest["recipes"] = {"file": "recipes.json", "count": len(rows)}

    rs = src.sections.rerank
    # A bundle whose re-ranking was switched off at export (it did not help on validation) ships none to the
    # browser either, and says why: the client re-ranks whenever the web manifest has a rerank section.
    has_rerank = bool(rerank and rs is not None and rs.enabled)
    if has_rerank:
        manifest["rerank"] = _export_rerank(src, rs, stage, labels, TokenStore)
    elif rs is not None and not rs.enabled:
        manifest["rerank_disabled"] = disabled_reason(rs)
    _carry_source(src, stage, manifest)

    # The words an ingredient line's name leaves out (quantities, units, preparation): one list, Python's.
    manifest["names"] = {"units": sorted(_UNITS)}
    _write_manifest(stage, manifest)
    files = json.loads((stage / "manifest.json").read_text())["files"]
    return WebExport(out, files, len(rows), tuple(variants), vectors, has_rerank)


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    """List (and hash) every file in the stage, then write manifest.json."""
    files = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file() and p != stage / "manifest.json"):
        digest, size = _sha256(path)
        files[path.relative_to(stage).as_posix()] = {"sha256": digest, "bytes": size}
    manifest["files"] = files
    _write_bytes(stage / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode())


def _export_recipe_encoder(src: Any, stage: Path) -> None:
    """The recipe encoder (int8 when the bundle has one, else fp32), its vocabulary and text limits: what adding
    a recipe on the phone needs. Nothing when the bundle cannot encode recipes."""
    encoders = dict(src.manifest.get("encoders") or {})
    name = next((n for n in ("recipe_int8", "recipe_fp32") if n in encoders and
                 str(encoders[n].get("file", "")).endswith(".onnx")), None)
    if name is None or not src.listed("vocab.json"):
        return
    entry = src.encoder(name)
    rel = f"encoders/{name}.onnx"
    shutil.copyfile(src.path(entry.file), stage / rel)
    shutil.copyfile(src.path("vocab.json"), stage / "vocab.json")
    io = _io_names(stage / rel)
    shapes = io["input_shapes"]
    try:  # malm.sdk.recipe_encoder reads the text limits off the model's static input shapes, as here
        limits = {"max_title_tokens": int(shapes["title"][1]), "max_ingredients": int(shapes["ingredients"][1]),
                  "max_instructions": int(shapes["instructions"][1]), "max_tokens": int(shapes["ingredients"][2])}
    except (KeyError, TypeError, ValueError, IndexError):
        raise BundleError(f"bundle {src.root}: recipe encoder inputs need static text dims, got {shapes}") from None
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest["recipe_encoder"] = {"file": rel, "precision": entry.precision or name.removeprefix("recipe_"),
                                  "vocab": "vocab.json", "limits": limits, "outputs": io["outputs"]}
    _write_manifest(stage, manifest)


def _export_rerank(src: Any, rs: Any, stage: Path, labels: list[int], TokenStore: Any) -> dict[str, Any]:  # noqa: N803
    for rel in rs.files():
        if not src.listed(rel):
            raise BundleError(f"bundle {src.root}: re-rank file {rel!r} is not listed (and hashed) in the manifest")
    tokens = TokenStore.load(src.path(rs.tokens), src.path(rs.offsets))
    per = [np.asarray(tokens.get(label), np.float16) for label in labels]
    offsets = np.zeros(len(per) + 1, np.uint32)
    offsets[1:] = np.cumsum([len(t) for t in per])
    flat = np.concatenate(per) if per else np.zeros((0, tokens.dim), np.float16)
    (stage / "rerank").mkdir(exist_ok=True)
    _write_bytes(stage / "rerank/tokens.bin", flat.astype("<f2").tobytes())
    _write_bytes(stage / "rerank/offsets.bin", offsets.astype("<u4").tobytes())
    section: dict[str, Any] = {"kind": rs.kind, "weight": rs.weight, "candidates": rs.candidates,
                               "default": rs.default, "dim": tokens.dim, "tokens": "rerank/tokens.bin",
                               "offsets": "rerank/offsets.bin"}
    if rs.kind == "matching_head":
        shutil.copyfile(src.path(rs.model), stage / "rerank/matching_head.onnx")
        io = _io_names(stage / "rerank/matching_head.onnx")
        p = io["input_shapes"].get("image_tokens", [None, None])[1]
        # The same two facts MatchingHeadScorer reads from the ONNX: whether the head builds its own [CLS],
        # and how many image tokens it takes (None: any).
        section |= {"model": "rerank/matching_head.onnx",
                    "takes_patches": io["metadata"].get("global_token") == "mean",
                    "image_tokens": p if isinstance(p, int) else None}
    return section


def _carry_source(src: Any, stage: Path, manifest: dict[str, Any]) -> None:
    """Keep the source bundle's manifest (and signature, when it has one) beside the web bundle: the web
    manifest names the source manifest's sha256, so a signed bundle vouches for what the web files came from."""
    (stage / "source").mkdir(exist_ok=True)
    shutil.copyfile(src.root / "manifest.json", stage / "source/manifest.json")
    digest, _ = _sha256(stage / "source/manifest.json")
    signatures = []
    for name in SIGNATURE_FILES:
        if (src.root / name).is_file():
            shutil.copyfile(src.root / name, stage / "source" / name)
            signatures.append(f"source/{name}")
    manifest["source"] = {"manifest": "source/manifest.json", "manifest_sha256": digest,
                          "signatures": signatures}
