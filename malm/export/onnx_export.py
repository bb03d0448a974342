"""ONNX export of the image and recipe encoders, metadata, and the ORT-vs-torch parity check."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from malm._atomic import atomic_path
from malm.errors import MalmError
from malm.training.models.recipe import masked_mean
from malm.vectors import cosine_rows

OPSET = 17
PARITY_MIN_COSINE = 0.9999


class ImageEncoderForExport(nn.Module):
    """Uniform face of any image encoder for export: images → embedding (and tokens).

    `encoder` is a callable returning (embedding, tokens|None): the student's `features` or a teacher
    wrapper. An explicit module keeps the exported graph free of Python-side branching.
    """

    def __init__(self, encoder: nn.Module, tokens: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokens = tokens

    def forward(self, images: torch.Tensor) -> Any:
        emb, tok = self.encoder(images)
        if self.tokens:
            if tok is None:
                raise MalmError("this image encoder has no token output; export without --tokens")
            return emb, tok
        return emb


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            output_names: list[str], dynamic: bool, opset: int) -> None:
    dynamic_axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic else None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, but it handles our static-H/W
        # padding and dynamic batch in one pass, without onnxscript rewrites; its warnings are noise here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
        import onnx

        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)


def export_image_encoder(module: ImageEncoderForExport, path: Path, image_size: int, *, dynamic: bool = True,
                         opset: int = OPSET, metadata: dict[str, str] | None = None) -> Path:
    """Write `image` float32 [N,3,H,W] → `embedding` [N,D] (+ `tokens` [N,P,Dt]); batch dynamic unless static."""
    module = module.eval()
    example = torch.zeros(2 if dynamic else 1, 3, image_size, image_size)
    outputs = ["embedding", "tokens"] if module.tokens else ["embedding"]
    with torch.no_grad():
        ref = module(example)
        _export(module, (example,), path, ["image"], outputs, dynamic, opset)
    shapes = [tuple(t.shape) for t in (ref if isinstance(ref, tuple) else (ref,))]
    _fix_output_dims(path, outputs, shapes, dynamic)
    if metadata:
        set_metadata(path, metadata)
    return path


def _encoder_layers(seq: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`SequenceEncoder.forward`: the shared transformer blocks (SDPA under a key padding mask, which the
    exporter maps to MatMul/Softmax) export as they are."""
    out: tuple[torch.Tensor, torch.Tensor] = seq(x, valid)
    return out


class RecipeEncoderForExport(nn.Module):
    """`model.encode_recipe` with static shapes, for export.

    The training forward encodes only non-empty rows (`nonzero`) and crops common trailing padding: both
    data-dependent shapes that ONNX cannot express. Here every row is encoded at full length under its
    padding mask (masked keys and trailing pads change nothing for the valid positions), empty rows get a
    dummy valid slot and are zeroed afterwards, exactly as the original does for empty components.
    Parity against `encode_recipe` is checked after export.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.enc = model.recipe_encoder
        if getattr(self.enc.cfg, "sentence_features", "learned") != "learned":
            raise MalmError("recipe encoder ONNX export supports learned word features only (this model uses "
                            f"{self.enc.cfg.sentence_features!r} sentence vectors); use --no-recipe-encoder")

    @staticmethod
    def _safe(valid: torch.Tensor) -> torch.Tensor:
        first = torch.logical_or(valid[:, :1], torch.logical_not(valid.any(1, keepdim=True)))
        return torch.cat([first, valid[:, 1:]], dim=1)

    def _sentences(self, ids: torch.Tensor, seq: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, length = ids.shape
        flat = ids.reshape(b * n, length)
        tok_valid = flat != 0
        row_valid = tok_valid.any(1)
        _, pooled = _encoder_layers(seq, self.enc.word_embed(flat), self._safe(tok_valid))
        pooled = pooled * row_valid.unsqueeze(-1).to(pooled.dtype)
        return pooled.reshape(b, n, -1), row_valid.reshape(b, n)

    def _component(self, vecs: torch.Tensor, valid: torch.Tensor, seq: nn.Module) -> torch.Tensor:
        out, _ = _encoder_layers(seq, vecs, self._safe(valid))
        out = out * valid.unsqueeze(-1).to(out.dtype)
        return masked_mean(out, valid)

    def forward(self, title: torch.Tensor, ingredients: torch.Tensor, instructions: torch.Tensor) -> torch.Tensor:
        enc = self.enc
        t_valid = title != 0
        _, title_vec = _encoder_layers(enc.title_encoder, enc.word_embed(title), self._safe(t_valid))
        ing_vecs, ing_valid = self._sentences(ingredients, enc.ingredient_encoder)
        ins_vecs, ins_valid = self._sentences(instructions, enc.instruction_encoder)
        ing_vec = self._component(ing_vecs, ing_valid, enc.ingredients_component)
        ins_vec = self._component(ins_vecs, ins_valid, enc.instructions_component)
        embedding = enc.proj(torch.cat([title_vec, ing_vec, ins_vec], dim=1))
        return torch.nn.functional.normalize(embedding.float(), dim=-1)


def export_recipe_encoder(model: nn.Module, path: Path, example: dict[str, torch.Tensor], *, opset: int = OPSET,
                          metadata: dict[str, str] | None = None) -> Path:
    """`title` [N,T], `ingredients` [N,Ni,L], `instructions` [N,Ns,L] int64 → `embedding` [N,D]."""
    module = RecipeEncoderForExport(model).eval()
    args = tuple(example[k].to(torch.int64) for k in ("title", "ingredients", "instructions"))
    # Grad mode on purpose: MultiheadAttention takes its fused eval fast path (no ONNX mapping) only when
    # autograd is off; with grad enabled it traces the plain matmul/softmax ops.
    with torch.enable_grad():
        _export(module, args, path, ["title", "ingredients", "instructions"], ["embedding"], True, opset)
    with torch.no_grad():
        dim = int(module(*args).shape[1])
    _fix_output_dims(path, ["embedding"], [(len(args[0]), dim)], True)
    if metadata:
        set_metadata(path, metadata)
    return path


def _fix_output_dims(path: Path, names: list[str], shapes: list[tuple[int, ...]], dynamic: bool) -> None:
    """Name the batch dim `batch` and pin the others (the exporter leaves generated symbols there)."""
    import onnx

    model = onnx.load(str(path))
    for out in model.graph.output:
        shape = shapes[names.index(out.name)]
        dims = out.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0 and dynamic:
                d.dim_param = "batch"
            else:
                d.dim_value = int(shape[i])
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def session(path: Path, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with explicit thread counts (predictable latency, shared machines)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_image(sess: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    out = [sess.run(["embedding"], {"image": images[i:i + batch].astype(np.float32)})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def parity_check(module: nn.Module, path: Path, images: np.ndarray, *, min_cosine: float = PARITY_MIN_COSINE,
                 what: str = "image encoder", ort_batch: int = 32) -> float:
    """Run real images through torch and ORT; fail the export if any embedding's cosine < min_cosine.

    `ort_batch=1` for static-shape (TensorRT) models; torch always runs the images in one batch.
    """
    if len(images) == 0:
        raise MalmError(f"parity check for {path.name}: no images to check with")
    with torch.no_grad():
        ref = module(torch.from_numpy(images.astype(np.float32)))
        ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    got = run_image(session(path, threads=1), images, batch=ort_batch)
    worst = float(cosine_rows(ref, got).min())
    if not worst >= min_cosine:
        raise MalmError(f"ONNX export of the {what} failed its parity check: ONNX Runtime vs torch cosine "
                        f"{worst:.6f} < {min_cosine} on {len(images)} real images ({path})")
    return worst


def recipe_parity_check(model: nn.Module, path: Path, batch: dict[str, np.ndarray],
                        min_cosine: float = PARITY_MIN_COSINE) -> float:
    feeds = {k: batch[k].astype(np.int64) for k in ("title", "ingredients", "instructions")}
    with torch.no_grad():
        ref = model.encode_recipe(*(torch.from_numpy(feeds[k]) for k in ("title", "ingredients", "instructions")))
    got = session(path).run(["embedding"], feeds)[0]
    worst = float(cosine_rows(ref.numpy(), got).min())
    if not worst >= min_cosine:
        raise MalmError(f"ONNX export of the recipe encoder failed its parity check: cosine {worst:.6f} < "
                        f"{min_cosine} ({path})")
    return worst


def io_spec(path: Path) -> dict[str, Any]:
    """Inputs/outputs with dtypes and shapes (symbolic dims as names) for the manifest."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def desc(values: Any) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out[v.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}
        return out

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"inputs": desc(model.graph.input), "outputs": desc(model.graph.output), "opset": opset}
