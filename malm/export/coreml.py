"""CoreML: `ct.convert` of the traced image encoder to an fp16 mlprogram, with the normalization folded in.

The input is an `ImageType` (the app hands a CVPixelBuffer): coremltools applies `scale=1/255`, and the
per-channel mean/std (which an ImageType cannot express) run inside the model. Optional weight
compression: int8 linear (symmetric) or 6-bit k-means palettization. Prediction needs macOS; on Linux we
convert, save and inspect the spec.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from malm.errors import MalmError
from malm.export.onnx_export import RecipeEncoderForExport
from malm.preprocess import PreprocessConfig

WEIGHT_MODES = ("none", "int8", "palettize6")


# What coremltools prints on Linux that says nothing about our model: its native CoreML bridge is macOS-only
# ("Failed to load _MLModelProxy" ×8 at import), version checks against scikit-learn (which we do not use) and
# torch, and a tqdm bar for every MIL pass. `prediction_note()` is the one line we say about Linux instead.
_EXPECTED_NOISE = re.compile(
    r"^(Failed to load _ML\w+Proxy\b|Failed to load '_ML\w+Proxy'"
    r"|scikit-learn version \S+ is not supported\b|Torch version \S+ has not been tested with coremltools\b"
    r"|Converting PyTorch Frontend ==> MIL Ops\b|Running MIL \w+ pipeline\b|Running compression pass \w+)")


@contextlib.contextmanager
def quiet_coremltools() -> Iterator[None]:
    """Drop coremltools' expected Linux noise (see `_EXPECTED_NOISE`) from stderr; anything else it prints is
    passed on, so a real warning still shows."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        # tqdm redraws with \r: every redraw is a "line" of its own.
        for line in re.split(r"[\r\n]+", captured.getvalue()):
            if line.strip() and not _EXPECTED_NOISE.match(line.strip()):
                print(line, file=sys.stderr)


def _coremltools() -> Any:
    try:
        with quiet_coremltools():
            import coremltools as ct
    except ImportError:
        raise MalmError("the coreml target needs coremltools: pip install 'coremltools>=8' "
                        "(or pip install 'malm[export]')") from None
    return ct


class _NormalizedImage(nn.Module):
    """0..1 RGB (what ImageType(scale=1/255) gives) → the deployment normalization → embedding."""

    def __init__(self, encoder: nn.Module, cfg: PreprocessConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder((x - self.mean) / self.std)
        return out[0] if isinstance(out, tuple) else out


def convert(encoder: nn.Module, out_path: Path, cfg: PreprocessConfig, *, weights: str = "none",
            metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write an `.mlpackage` at `out_path`; returns spec facts for the manifest/report."""
    return convert_variants(encoder, [(out_path, weights)], cfg, metadata=metadata)[0]


def convert_variants(encoder: nn.Module, outputs: list[tuple[Path, str]], cfg: PreprocessConfig, *,
                     metadata: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Convert once, then write one `.mlpackage` per (path, weight mode): compression works on the converted
    program, so the fp16 model and its compressed variants share a single trace + conversion."""
    with quiet_coremltools():
        return _convert_variants(encoder, outputs, cfg, metadata)


def _convert_variants(encoder: nn.Module, outputs: list[tuple[Path, str]], cfg: PreprocessConfig,
                      metadata: dict[str, str] | None) -> list[dict[str, Any]]:
    for _, weights in outputs:
        if weights not in WEIGHT_MODES:
            raise MalmError(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    ct = _coremltools()
    wrapped = _NormalizedImage(encoder, cfg).eval()
    example = torch.rand(1, 3, cfg.size, cfg.size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace warnings about Python ints in the SAME-padding math
        traced = torch.jit.trace(wrapped, example)
    try:
        base = ct.convert(
            traced,
            inputs=[ct.ImageType(name="image", shape=(1, 3, cfg.size, cfg.size), scale=1.0 / 255.0,
                                 color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name="embedding")],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,  # palettization and int8 weights need iOS16+
        )
    except Exception as e:  # noqa: BLE001 - coremltools raises many types; the user needs one message
        raise MalmError(f"CoreML conversion failed ({type(e).__name__}: {e})") from None
    infos = []
    for out_path, weights in outputs:
        mlmodel = compress(base, weights)
        meta = dict(metadata or {})
        meta["weights"] = weights
        for k, v in meta.items():
            mlmodel.user_defined_metadata[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        mlmodel.short_description = "malm image encoder: photo → L2-normalized recipe-space embedding"
        _save_package(mlmodel, out_path)
        info = inspect_spec(mlmodel)
        info["weights"] = weights
        info["prediction"] = prediction_note()
        infos.append(info)
    return infos


def compress(mlmodel: Any, weights: str) -> Any:
    if weights == "none":
        return mlmodel
    import coremltools.optimize.coreml as cto

    if weights == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        # All-zero channels (present in the ImageNet weights) give a 0 scale; their values dequantize to 0 anyway.
        with np.errstate(divide="ignore", invalid="ignore"):
            return cto.linear_quantize_weights(mlmodel, config)
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=6, mode="kmeans"))
    return cto.palettize_weights(mlmodel, config)


def inspect_spec(mlmodel: Any) -> dict[str, Any]:
    """Inputs, outputs and precision read from the model's spec (what we can check without macOS)."""
    spec = mlmodel.get_spec()
    inputs = {}
    for i in spec.description.input:
        kind = i.type.WhichOneof("Type")
        if kind == "imageType":
            inputs[i.name] = {"type": "image", "width": i.type.imageType.width, "height": i.type.imageType.height,
                              "color": {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(i.type.imageType.colorSpace, "?")}
        elif kind == "multiArrayType":  # a tensor input (the recipe encoder's token ids)
            arr = i.type.multiArrayType
            inputs[i.name] = {"type": "multiarray", "shape": list(arr.shape),
                              "dtype": {65552: "float16", 65568: "float32", 131104: "int32"}.get(arr.dataType,
                                                                                            str(arr.dataType))}
        else:
            inputs[i.name] = {"type": kind}
    outputs = {}
    for o in spec.description.output:
        arr = o.type.multiArrayType
        dtype = {65552: "float16", 65568: "float32", 131104: "int32"}.get(arr.dataType, str(arr.dataType))
        outputs[o.name] = {"type": "multiarray", "shape": list(arr.shape), "dtype": dtype}
    ops = _mil_op_types(spec)
    return {"spec_version": spec.specificationVersion, "model_type": spec.WhichOneof("Type"),
            "inputs": inputs, "outputs": outputs, "fp16_compute": "cast" in ops or outputs_fp16(outputs),
            "compression_ops": sorted(o for o in ops if o in ("constexpr_affine_dequantize", "constexpr_lut_to_dense",
                                                               "constexpr_blockwise_shift_scale"))}


def outputs_fp16(outputs: dict[str, Any]) -> bool:
    return any(o.get("dtype") == "float16" for o in outputs.values())


def _mil_op_types(spec: Any) -> set[str]:
    ops: set[str] = set()
    if spec.WhichOneof("Type") != "mlProgram":
        return ops
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            ops.update(op.type for op in block.operations)
    return ops


def prediction_note() -> str:
    if platform.system() == "Darwin":
        return "available (macOS)"
    return (f"skipped: CoreML prediction needs macOS (CoreML.framework); this is {platform.system()}, "
            "so the conversion and spec were checked instead")


RECIPE_INPUTS = ("title", "ingredients", "instructions")


def convert_recipe(model: nn.Module, out_path: Path, example: dict[str, np.ndarray], *,
                   metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the recipe encoder (`RecipeEncoderForExport`) as an fp16 mlprogram at `out_path`: int32 token ids
    `title` [1,T], `ingredients` [1,Ni,L], `instructions` [1,Ns,L] → `embedding` [1,D].

    Converted from `torch.export` (static shapes), not a TorchScript trace: the trace records the positional
    encoding's width as a runtime int (`x.shape[2]`) and coremltools cannot invert an int. Returns the spec facts
    and `exported_parity`: the cosine between the exported program CoreML converted and the eager model on
    `example` (what Linux can check; prediction needs macOS).
    """
    module = RecipeEncoderForExport(model).eval()
    args = tuple(torch.from_numpy(np.asarray(example[k][:1], np.int64)) for k in RECIPE_INPUTS)
    with quiet_coremltools():
        ct = _coremltools()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(module, args).run_decompositions({})
                parity = float(torch.nn.functional.cosine_similarity(program.module()(*args), module(*args)).min())
            with warnings.catch_warnings():
                # The attention mask's float32 minimum becomes -inf in fp16 (what masking means); numpy warns.
                warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                mlmodel = ct.convert(program, inputs=[ct.TensorType(name=k, dtype=np.int32) for k in RECIPE_INPUTS],
                                     outputs=[ct.TensorType(name="embedding")], convert_to="mlprogram",
                                     compute_precision=ct.precision.FLOAT16,
                                     minimum_deployment_target=ct.target.iOS16)
        except Exception as e:  # noqa: BLE001 - torch.export and coremltools raise many types; say which step
            raise MalmError(f"CoreML conversion of the recipe encoder failed ({type(e).__name__}: {e})") from None
        for k, v in (metadata or {}).items():
            mlmodel.user_defined_metadata[k] = v
        mlmodel.short_description = "malm recipe encoder: token ids → L2-normalized recipe-space embedding"
        _save_package(mlmodel, out_path)
    if not parity >= 0.9999:
        raise MalmError(f"CoreML conversion of the recipe encoder: the exported program differs from the model "
                        f"(min cosine {parity:.6f} < 0.9999)")
    info = inspect_spec(mlmodel)
    info["exported_parity"] = round(parity, 6)
    info["prediction"] = prediction_note()
    return info


def _save_package(mlmodel: Any, out_path: Path) -> None:
    """Save an .mlpackage beside its destination, then swap it in: a killed save never leaves half a package."""
    with tempfile.TemporaryDirectory(prefix="malm-coreml-", dir=out_path.parent) as tmp:
        staged = Path(tmp) / out_path.name
        mlmodel.save(str(staged))
        if out_path.exists():
            shutil.rmtree(out_path)
        staged.rename(out_path)
