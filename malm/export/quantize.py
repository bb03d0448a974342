"""Static int8 quantization of the image and recipe encoders with ONNX Runtime: QDQ, per-channel, symmetric.

Symmetric int8 for activations *and* weights (every zero point 0) is what TensorRT's explicit
quantization requires, so one QDQ model serves ONNX Runtime on CPU and TensorRT on a Jetson.
Calibration images go through the deployment preprocessing (`malm.preprocess.preprocess`), so the
activation ranges are the ones the device will see.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from malm._atomic import atomic_path
from malm.errors import MalmError
from malm.preprocess import PreprocessConfig, preprocess

QUANT_MIN_CALIB = 1  # a floor that still lets tests run; the CLI default is 500


def calibration_batches(image_paths: Sequence[Path], cfg: PreprocessConfig, batch: int = 16) -> Iterator[np.ndarray]:
    from PIL import Image

    for i in range(0, len(image_paths), batch):
        arrays = []
        for p in image_paths[i:i + batch]:
            try:
                with Image.open(p) as im:
                    arrays.append(preprocess(im, cfg))
            except OSError as e:
                raise MalmError(f"calibration image {p} cannot be read: {e}") from None
        yield np.stack(arrays).astype(np.float32)


class _Reader:
    """onnxruntime CalibrationDataReader over one calibration item per call (batch 1 keeps the calibration model's
    batch dim trivially compatible with static-shape exports)."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]], on_item: Callable[[int], None] | None = None) -> None:
        self._it = feeds
        self._on_item = on_item

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        if x is not None and self._on_item is not None:
            self._on_item(1)
        return x

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        raise MalmError("calibration reader cannot rewind")


class Calibration(Protocol):
    """What calibrates an int8 model: `count` items of `what` ("images", "recipes"), fed one at a time."""

    @property
    def what(self) -> str: ...

    @property
    def count(self) -> int: ...

    def feeds(self) -> Iterator[dict[str, np.ndarray]]: ...


@dataclass(frozen=True)
class ImageCalibration:
    """Photos through the deployment preprocessing: the activation ranges the device will see (input `image`)."""

    paths: Sequence[Path]
    cfg: PreprocessConfig
    what: str = "images"

    @property
    def count(self) -> int:
        return len(self.paths)

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        return ({"image": x[j:j + 1]} for x in calibration_batches(self.paths, self.cfg) for j in range(len(x)))


@dataclass(frozen=True)
class RecipeCalibration:
    """Recipes as the recipe encoder reads them: token id arrays `title` [N,T], `ingredients` [N,Ni,L],
    `instructions` [N,Ns,L] (malm.text.encode_recipe), fed as int64."""

    arrays: Mapping[str, np.ndarray]
    what: str = "recipes"

    @property
    def count(self) -> int:
        return len(self.arrays["title"]) if "title" in self.arrays else 0

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        return ({k: np.asarray(v[i:i + 1], np.int64) for k, v in self.arrays.items()} for i in range(self.count))


def input_affine_nodes(model_path: Path) -> list[str]:
    """Element-wise ops between the graph input and the first conv (the student's input re-normalization).

    Quantizing their 3-value constants per tensor only adds error before the first layer, so they stay float
    (TensorRT fuses such a scale/shift into the first convolution anyway).
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out, frontier = [], [i.name for i in model.graph.input]
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type in ("Mul", "Add", "Sub", "Div") and node.name and node.name not in out:
                out.append(node.name)
                frontier.extend(node.output)
    return out


def gemm_weights(model_path: Path) -> dict[str, int]:
    """Weights that x86 ONNX Runtime multiplies with its U8S8 GEMM kernel (VPMADDUBSW without VNNI).

    Dense convolutions (group 1), MatMul and Gemm: their u8*s8 pair sums saturate at 16 bits on AVX2-only CPUs.
    Depthwise convolutions run a separate kernel that widens to 32 bits first, so they keep 8-bit weights.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, int] = {}  # weight -> its output-channel axis (the per-channel axis)
    for node in model.graph.node:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "Conv" and attrs.get("group", 1) == 1:
            out[node.input[1]] = 0
        elif node.op_type != "Conv":
            out[node.input[1]] = 0 if node.op_type == "Gemm" and attrs.get("transB", 0) else 1
    return out


def non_linear_nodes(model_path: Path) -> list[str]:
    """Every node except MatMul / Gemm with a constant weight: what `scope="linear"` leaves in float.

    A hybrid tower (EfficientNet-Lite0 stem + ViT blocks, `--student none`) loses too much with its stem in
    int8 (measured on the demo's tower: mean cosine to fp32 0.91-0.94 with only the stem's convolutions
    quantized, whatever the calibration) while its transformer's linear layers quantize almost exactly (0.9999).
    Activation x activation products (attention) are not linear layers either.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    keep = {n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in constants}
    return [n.name for n in model.graph.node if n.name and n.name not in keep]


SCOPES = ("all", "linear")
ACTIVATIONS = ("symmetric", "asymmetric")
WEIGHTS = ("int8", "uint8")
REDUCE_RANGE = (False, True, "gemm")
METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Int8Spec:
    """How one int8 variant is quantized (QDQ). `VARIANTS` names the ones `malm export` ships.

    activations="symmetric": int8 activations with zero point 0 (TensorRT's explicit quantization).
    activations="asymmetric": uint8 activations with a calibrated zero point (the x86 CPU variant). x86 ONNX
    Runtime runs U8S8 convolutions (VPMADDUBSW) and, with an asymmetric [0, 6] range, can drop the ReLU6
    `Clip` between conv and the next QuantizeLinear, so every conv becomes a QLinearConv; with symmetric
    int8 activations the Clip stays and the convs around it run in float (measured: 0.8-0.9x fp32 speed).
    Weights are symmetric per-channel (`weights="uint8"`: zero point 128, ORT's non-saturating but slow U8U8
    path, kept for benchmarks/int8_cpu.py). `reduce_range`: True = 7-bit weights everywhere, "gemm" = 7-bit
    weights only where x86 ORT's U8S8 GEMM would saturate without VNNI (see `gemm_weights`). `per_channel`
    and `pre_process` (ORT's shape inference + graph optimization first) exist for the investigations in
    benchmarks/. `scope="linear"` quantizes only the MatMul / Gemm layers with constant weights
    (`non_linear_nodes`: a hybrid tower's convolutional stem stays float).
    """

    activations: str = "symmetric"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool | str = False
    method: str = "minmax"  # calibration: minmax | percentile | entropy
    scope: str = "all"
    pre_process: bool = True
    exclude_ops: tuple[str, ...] = ()  # node names left in float

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise MalmError(f"unknown quantization scope {self.scope!r}; one of {SCOPES}")
        if self.activations not in ACTIVATIONS:
            raise MalmError(f"unknown activation quantization {self.activations!r}; one of {ACTIVATIONS}")
        if self.weights not in WEIGHTS or self.reduce_range not in REDUCE_RANGE:
            raise MalmError(f"unknown weight quantization {self.weights!r}/reduce_range={self.reduce_range!r}; "
                            f"one of {WEIGHTS} / {REDUCE_RANGE}")
        if self.method not in METHODS:
            raise MalmError(f"unknown calibration method {self.method!r}; one of {sorted(METHODS)}")

    @property
    def symmetric(self) -> bool:
        return self.activations == "symmetric"

    def describe(self, calibration: Calibration) -> dict[str, Any]:
        """What was done, for the manifest's `quantization`."""
        reduced = {False: "", True: ", 7-bit", "gemm": ", 7-bit in dense layers"}[self.reduce_range]
        return {"format": "QDQ", "activations": "int8 symmetric" if self.symmetric else "uint8 asymmetric",
                "weights": f"{self.weights} symmetric per-channel{reduced}",
                f"calibration_{calibration.what}": calibration.count, "calibration_method": self.method,
                **({"scope": "linear layers only (MatMul/Gemm with constant weights; the rest stays float)"}
                   if self.scope == "linear" else {})}


# The exported int8 variants (bundle name -> how), image ones measured on an AVX2-only x86 CPU with
# benchmarks/int8_cpu.py (results in benchmarks/results/int8-cpu.{json,md}):
# * image_int8: what TensorRT's explicit quantization needs (int8 activations and weights, every zero point 0).
# * image_int8_cpu: uint8 activations, so every conv becomes a QLinearConv (~1.4-1.9x fp32 on x86).
# Both keep 8-bit weights. Their exact QDQ math (TensorRT; x86 with VNNI; ARM) is within the export gate
# (malm/export/int8_gate.py). On x86 *without* VNNI ONNX Runtime's U8S8 kernel (VPMADDUBSW) sums u8*s8
# pairs in 16 bits and saturates: measured cosine to fp32 0.52-0.80 at 224px. No int8 form is both right
# and fast there: 7-bit weights (reduce_range, or "gemm") stop the saturation but cost accuracy (0.95-0.96),
# uint8 weights (U8U8) are right (0.986) but 3.6x slower than fp32. So on such a CPU the SDK's self-check
# (malm/sdk/selfcheck.py) sees the disagreement and runs fp32, saying so.
# * recipe_int8: the recipe encoder's linear layers (symmetric, TensorRT-ready); embeddings, attention products,
#   layer norms and softmax stay float (malm/export/recipe.py measures it against the gate).
VARIANTS: dict[str, Int8Spec] = {
    "image_int8": Int8Spec(activations="symmetric"),
    "image_int8_cpu": Int8Spec(activations="asymmetric"),
    "recipe_int8": Int8Spec(activations="symmetric", scope="linear"),
}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Calibration, spec: Int8Spec = Int8Spec(),
                  on_item: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the QDQ int8 model of `fp32_path` as `spec` says, calibrated on `calibration`; returns what was done
    (for the manifest). `on_item(1)` after each calibration item (a progress bar)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MalmError("int8 quantization needs onnxruntime: pip install onnxruntime") from None
    if calibration.count < QUANT_MIN_CALIB:
        raise MalmError(f"int8 quantization needs calibration {calibration.what}; none were found in the training "
                        "split")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="malm-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference + graph optimization first, as ORT recommends: fused Conv+BN etc. get one scale.
        if spec.pre_process:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        else:
            pre.write_bytes(Path(fp32_path).read_bytes())
        exclude = [*spec.exclude_ops, *input_affine_nodes(pre),
                   *(non_linear_nodes(pre) if spec.scope == "linear" else [])]
        overrides: dict[str, Any] = {}
        if spec.reduce_range == "gemm":
            # Per tensor, with the per-channel axis given: an override without "axis" means per-tensor.
            overrides = {w: [{"axis": ax, "reduce_range": True}] for w, ax in gemm_weights(pre).items()}
        with atomic_path(out_path) as out_tmp:
            quantize_static(
                str(pre), str(out_tmp), _Reader(calibration.feeds(), on_item),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if spec.symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8 if spec.weights == "int8" else QuantType.QUInt8,
                per_channel=spec.per_channel,
                reduce_range=spec.reduce_range is True,  # "gemm" goes through the overrides
                calibrate_method=methods[spec.method],
                nodes_to_exclude=exclude,
                extra_options={"ActivationSymmetric": spec.symmetric, "WeightSymmetric": True,
                               **({"TensorQuantOverrides": overrides} if overrides else {})},
            )
    return spec.describe(calibration)


def exact_session(path: Path, threads: int = 1) -> Any:
    """A session that runs a QDQ model's exact math: with graph optimization off, ORT dequantizes and computes
    in float (no fused int8 kernels), i.e. what an int32-accumulating runtime such as TensorRT computes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def qdq_properties(path: Path) -> dict[str, Any]:
    """What TensorRT requires of a QDQ model, read back from the file (used by tests and the report)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    zero_points, zp_types, per_channel, q_nodes = [], set(), 0, 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        q_nodes += 1
        if len(node.input) > 2 and node.input[2]:
            t = inits.get(node.input[2]) or consts.get(node.input[2])
            if t is not None:
                arr = numpy_helper.to_array(t)
                zero_points.append(arr)
                zp_types.add(arr.dtype.name)
        scale = inits.get(node.input[1]) or consts.get(node.input[1])
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        **_weight_activation_split(model, inits, consts),
        "qdq_nodes": q_nodes,
        "all_zero_points_zero": all(bool((z == 0).all()) for z in zero_points) and bool(zero_points),
        "zero_point_types": sorted(zp_types),
        "per_channel_scales": per_channel,
        "opset": opset,
    }


def _weight_activation_split(model: Any, inits: dict[str, Any], consts: dict[str, Any]) -> dict[str, Any]:
    """Zero-point types of activations vs weights: a DequantizeLinear fed by an initializer is a weight."""
    from onnx import numpy_helper

    def array(name: str) -> np.ndarray | None:
        t = inits.get(name) or consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    act_types, w_types, w_zero, w_per_channel, n_weights = set(), set(), True, 0, 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        zp = array(node.input[2])
        if zp is None:
            continue
        if node.input[0] in inits or node.input[0] in consts:
            n_weights += 1
            w_types.add(zp.dtype.name)
            w_zero = w_zero and bool((zp == 0).all())
            w_per_channel += int(zp.ndim == 1 and zp.size > 1)
        else:
            act_types.add(zp.dtype.name)
    return {"activation_zero_point_types": sorted(act_types), "weight_zero_point_types": sorted(w_types),
            "weight_zero_points_zero": w_zero and n_weights > 0, "weight_dq_nodes": n_weights,
            "per_channel_weights": w_per_channel}
