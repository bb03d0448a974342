"""Helpers for the index/SDK/query tests: tiny ONNX encoders built with onnx.helper and a fake bundle.

The image encoder is a real (if tiny) ONNX graph: 32x32 input → 4x4 average-pooled colour grid → linear
→ L2-normalized embedding, plus 16 patch tokens (the pooled colours through another linear). Photos are
blocky random colour images, so each photo has a distinct embedding; recipe i's embedding is photo i's
embedding plus a little noise, so photo i should find recipe i first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from malm.bundle import BundleWriter
from malm.edge_index.builder import Encoded, build_index
from malm.edge_index.records import RecipeRecord
from malm.manifest import SelfCheckSection
from malm.preprocess import PreprocessConfig, preprocess

SIZE = 32
DIM = 16
TOK_DIM = 3  # late interaction compares image patch colours with recipe "colour" tokens
CFG = PreprocessConfig(size=SIZE, resize=36)
INGREDIENTS = ["tomato", "peanut butter", "rice", "egg", "basil", "cheese", "onion", "garlic"]


def image_onnx(path: Path, dim: int = DIM, tokens: bool = True, seed: int = 0) -> Path:
    """`image` [N,3,32,32] → `embedding` [N,dim] (normalized), `tokens` [N,16,3]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(48, dim)).astype(np.float32), "W")
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    inits = [w]
    if tokens:
        nodes += [
            helper.make_node("Reshape", ["pooled", "shape"], ["grid"]),
            helper.make_node("Transpose", ["grid"], ["tokens"], perm=[0, 2, 1]),
        ]
        inits.append(numpy_helper.from_array(np.array([0, 3, 16], np.int64), "shape"))
        outputs.append(helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", 16, TOK_DIM]))
    graph = helper.make_graph(nodes, "tiny_image", [helper.make_tensor_value_info(
        "image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def recipe_onnx(path: Path, dim: int = DIM, vocab_size: int = 64, seed: int = 1) -> Path:
    """`title` [N,8], `ingredients` [N,4,6], `instructions` [N,3,6] int64 → `embedding` [N,dim]: a bag of
    word vectors (Gather + ReduceSum) over all tokens, normalized."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(vocab_size, dim)).astype(np.float32)
    table[0] = 0.0  # <pad> contributes nothing
    nodes = [
        helper.make_node("Gather", ["E", "title"], ["gt"]),
        helper.make_node("Gather", ["E", "ingredients"], ["gi"]),
        helper.make_node("Gather", ["E", "instructions"], ["gs"]),
        helper.make_node("ReduceSum", ["gt", "ax1"], ["st"], keepdims=0),
        helper.make_node("ReduceSum", ["gi", "ax12"], ["si"], keepdims=0),
        helper.make_node("ReduceSum", ["gs", "ax12"], ["ss"], keepdims=0),
        helper.make_node("Sum", ["st", "si", "ss"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "ax12")]
    inputs = [helper.make_tensor_value_info("title", TensorProto.INT64, ["batch", 8]),
              helper.make_tensor_value_info("ingredients", TensorProto.INT64, ["batch", 4, 6]),
              helper.make_tensor_value_info("instructions", TensorProto.INT64, ["batch", 3, 6])]
    graph = helper.make_graph(nodes, "tiny_recipe", inputs,
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def photo(i: int, size: int = 40) -> Image.Image:
    """A blocky random colour image, distinct per i."""
    rng = np.random.default_rng(1000 + i)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(grid, np.ones((size // 4, size // 4, 1), np.uint8)), "RGB")


def recipe(i: int) -> RecipeRecord:
    ingr = [f"2 cups {INGREDIENTS[i % len(INGREDIENTS)]}", f"1 {INGREDIENTS[(i * 3 + 1) % len(INGREDIENTS)]}"]
    return RecipeRecord(id=f"rec{i:04d}", title=f"Dish number {i}", ingredients=tuple(ingr),
                        instructions=(f"cook dish {i}.",), url=f"http://example.com/{i}")


def photo_features(i: int) -> tuple[np.ndarray, np.ndarray]:
    """What the tiny image ONNX gives for photo i (computed with ONNX Runtime)."""
    sess = _SESSIONS.get("s")
    if sess is None:
        raise RuntimeError("call make_bundle first")
    emb, tok = sess.run(["embedding", "tokens"], {"image": preprocess(photo(i), CFG)[None]})
    return emb[0], tok[0]


_SESSIONS: dict[str, Any] = {}


def fake_recipe_encoder(noise: float = 0.05, seed: int = 0, tokens: bool = True) -> Any:
    """encode_fn: recipe `recNNNN` → photo NNNN's embedding (+ noise) and its patch colours as tokens."""
    def encode(records: Any) -> Encoded:
        embs, toks = [], []
        for r in records:
            i = int(r.id[3:])
            emb, tok = photo_features(i)
            rng = np.random.default_rng(seed * 100_003 + i)
            embs.append(emb + rng.normal(0, noise, emb.shape))
            toks.append(tok[::2] + rng.normal(0, noise, tok[::2].shape))
        return Encoded(np.array(embs, np.float32), toks if tokens else None)
    return encode


SELFCHECK_PHOTOS = range(500, 508)  # held out: not the recipes' photos


def quantized_image_onnx(src: Path, out: Path, variant: str) -> Path:
    """`src` really quantized (QDQ) the way `malm export` ships `variant`, calibrated on 16 photos."""
    from malm.export.quantize import VARIANTS, ImageCalibration, quantize_int8

    calib = save_photos(out.parent / f"calib-{out.stem}", range(300, 316))
    quantize_int8(src, out, ImageCalibration(calib, CFG), VARIANTS[variant])
    return out


def corrupt_int8(path: Path, seed: int = 0) -> Path:
    """Scale each output channel of the quantized weights by a random factor (0.05-3x): a broken int8 model
    that still loads and runs, as a bad kernel or calibration would leave it."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and \
                numpy_helper.to_array(inits[node.input[0]]).ndim == 2:
            scale = numpy_helper.to_array(inits[node.input[1]])
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                (scale * rng.uniform(0.05, 3.0, scale.shape)).astype(scale.dtype), node.input[1]))
    onnx.save(model, str(path))
    return path


def selfcheck_data(src: Path, folder: Path) -> tuple[Path, Path]:
    """The self-check files `malm export` writes: held-out inputs (float16) and their fp32 embeddings."""
    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    x = np.stack([preprocess(photo(i), CFG) for i in SELFCHECK_PHOTOS]).astype(np.float16)
    emb = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(
        ["embedding"], {"image": x.astype(np.float32)})[0]
    np.save(folder / "inputs.npy", x, allow_pickle=False)
    np.save(folder / "fp32_embeddings.npy", emb.astype(np.float32), allow_pickle=False)
    return folder / "inputs.npy", folder / "fp32_embeddings.npy"


def make_bundle(root: Path, n: int = 60, *, tokens: bool = True, int8_alias: bool = False, int8: bool = False,
                selfcheck: bool = True, with_recipe_encoder: bool = False,
                corrupt: tuple[str, ...] = ()) -> Path:
    """An image encoder through BundleWriter, then the index built from recipes 0..n-1.

    int8: add image_int8 and image_int8_cpu, really quantized from the fp32 graph (the way `malm export`
    quantizes them); int8_alias: image_int8 only (it used to be the fp32 graph under that name); `corrupt`
    names those to break with `corrupt_int8`. selfcheck:
    the reference inputs and fp32 embeddings a bundle carries since the int8 self-check.
    """
    import onnxruntime as ort

    src_dir = root.parent / f"{root.name}-src"
    src = image_onnx(src_dir / "image.onnx", tokens=tokens)
    _SESSIONS["s"] = ort.InferenceSession(str(image_onnx(root.parent / f"{root.name}-src" / "tok.onnx")),
                                          providers=["CPUExecutionProvider"])
    with BundleWriter(root) as bw:
        bw.add_file(src, "encoders/image_fp32.onnx")
        bw.manifest["encoders"]["image_fp32"] = {"file": "encoders/image_fp32.onnx", "kind": "onnx",
                                                 "role": "image", "precision": "fp32"}
        for name in ("image_int8", "image_int8_cpu") if int8 else ("image_int8",) if int8_alias else ():
            q = quantized_image_onnx(src, src_dir / f"{name}.onnx", name)
            if name in corrupt:
                corrupt_int8(q)
            bw.add_file(q, f"encoders/{name}.onnx")
            bw.manifest["encoders"][name] = {"file": f"encoders/{name}.onnx", "kind": "onnx", "role": "image",
                                             "precision": "int8"}
        if selfcheck:
            inputs, embs = selfcheck_data(src, src_dir / "selfcheck")
            bw.add_file(inputs, "selfcheck/inputs.npy")
            bw.add_file(embs, "selfcheck/fp32_embeddings.npy")
            bw.set_selfcheck(SelfCheckSection("selfcheck/inputs.npy", "selfcheck/fp32_embeddings.npy",
                                              len(SELFCHECK_PHOTOS), 0.98))
        if with_recipe_encoder:
            rsrc = recipe_onnx(root.parent / f"{root.name}-src" / "recipe.onnx")
            bw.add_file(rsrc, "encoders/recipe_fp32.onnx")
            bw.manifest["encoders"]["recipe_fp32"] = {"file": "encoders/recipe_fp32.onnx", "kind": "onnx",
                                                      "role": "recipe", "precision": "fp32"}
            words = ["<pad>", "<start>", "<end>", "<unk>", "cup", "tomato", "rice", "egg", "cook", "dish",
                     "number", "peanut", "butter", "basil", "cheese", "onion", "garlic", "soup", "new"]
            vocab = root.parent / f"{root.name}-src" / "vocab.json"
            vocab.write_text(json.dumps({"words": words}))
            bw.add_file(vocab, "vocab.json")
        bw.manifest["preprocess"] = CFG.to_dict()
        bw.manifest["embedding"] = {"dim": DIM, "metric": "cosine"}
    build_index(root, [recipe(i) for i in range(n)], fake_recipe_encoder(tokens=tokens), M=16,
                ef_construction=100, ef_search=64)
    return root


def save_photos(folder: Path, ids: range, fmt: str = "JPEG") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in ids:
        p = folder / f"photo{i:03d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        photo(i, 48).save(p, format=fmt, quality=95) if fmt == "JPEG" else photo(i, 48).save(p, format=fmt)
        paths.append(p)
    return paths
