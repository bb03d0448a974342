"""FLOPs per image: counted from an ONNX graph (students) or with torch's FLOP counter (the teacher).

Convention: 1 multiply-add = 2 FLOPs, counting convolutions and matrix products only (they are >95% of
a CNN's or ViT's work; norms, activations and softmax are left out, as is usual).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

# node type -> (index of input A / X, index of input B / W) for the quantized forms too
_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def onnx_flops(path: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """FLOPs for one image through the ONNX model at `path` (batch fixed to 1 for shape inference).

    Shapes that depend on computed constants (e.g. the TF-SAME `Pad` amounts torch exports as a chain of
    Shape/Concat/Slice ops) defeat plain ONNX shape inference; then the graph is first constant-folded by
    ONNX Runtime's basic optimizer (which keeps every Conv/MatMul) and counted again.
    """
    import onnx

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = 1
    if image_size is not None:
        for d in dims[2:]:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = image_size
    result = _count(model)
    if result["nodes_unknown_shape"]:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="malm-flops-") as tmp:
            src, folded = Path(tmp) / "in.onnx", Path(tmp) / "folded.onnx"
            onnx.save(model, str(src))
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            opts.optimized_model_filepath = str(folded)
            opts.log_severity_level = 3
            ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
            result = _count(onnx.load(str(folded)))
            result["method"] += " (after onnxruntime constant folding)"
    return result


def _count(model: Any) -> dict[str, Any]:
    from onnx import shape_inference

    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    total = 0
    counted = 0
    unknown: list[str] = []
    for node in model.graph.node:
        op = node.op_type
        if op in _CONV:
            _, wi = _CONV[op]
            w = shapes.get(node.input[wi])
            y = shapes.get(node.output[0])
            if not w or not y or None in w or None in y:
                unknown.append(node.name or op)
                continue
            # y: [N, Cout, *spatial]; w: [Cout, Cin/groups, *kernel]
            total += 2 * math.prod(y) * math.prod(w[1:])
            counted += 1
        elif op in _MATMUL or op == "Gemm":
            ai, _ = _MATMUL.get(op, (0, 1))
            a = shapes.get(node.input[ai])
            y = shapes.get(node.output[0])
            if not a or not y or None in a or None in y:
                unknown.append(node.name or op)
                continue
            trans_a = op == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            total += 2 * math.prod(y) * k
            counted += 1
    return {"flops": int(total), "gflops": total / 1e9, "nodes_counted": counted, "nodes_unknown_shape": len(unknown),
            "method": "ONNX graph: Conv/MatMul/Gemm (and quantized forms), 2 FLOPs per multiply-add"}


def torch_flops(fn: Any, example: Any) -> dict[str, Any]:
    """FLOPs of `fn(example)` for one image with torch.utils.flop_counter (matmul, conv, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(example)
    total = int(counter.get_total_flops()) // int(example.shape[0])
    return {"flops": total, "gflops": total / 1e9,
            "method": "torch.utils.flop_counter: matmul/conv/attention, 2 FLOPs per multiply-add"}
