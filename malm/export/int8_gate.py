"""The export's int8 gate and the bundle's self-check data.

Every int8 image encoder is measured against the fp32 ONNX on held-out images, on the exporting machine,
before the bundle is written: mean cosine >= 0.98 and image->recipe R@1 drop <= 1.5 points, or the export
fails (unless `--accept-int8-drop`, which the report then says).

Two numbers per model, both measured here: its exact QDQ math (ONNX Runtime with graph optimization off:
dequantize, compute in float -- what TensorRT, an x86 CPU with VNNI and ARM compute) and this CPU's fused
int8 kernels. The gate holds the model to its exact math: a model below it is badly quantized wherever it
runs. This CPU's kernels are reported beside it, with the CPU named: on an x86 CPU without VNNI they
saturate (malm/export/quantize.py), which says nothing about the CPU the bundle will run on -- the SDK's
self-check measures that one where it runs, from the reference inputs written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from malm import cpu
from malm.errors import MalmError
from malm.export.quantize import exact_session
from malm.export.report import retrieval
from malm.manifest import SelfCheckSection

MIN_COSINE = 0.98  # mean cosine to fp32 on held-out images
MAX_R1_DROP = 1.5  # image->recipe R@1 points lost vs fp32
MIN_PAIRS_FOR_R1 = 100  # below this one pair moves R@1 by > 1 point: reported, not gated
SELFCHECK_IMAGES = 8
SELFCHECK_DIR = "selfcheck"
FP32_REL = "encoders/image_fp32.onnx"
# bundle path -> (variant name, which math the gate holds it to: "exact" or "this_cpu")
INT8_FILES = {"encoders/image_int8_cpu.onnx": ("image_int8_cpu", "exact"),
              "encoders/image_int8.onnx": ("image_int8", "exact")}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def _r1(emb: np.ndarray, recipe_emb: np.ndarray) -> float | None:
    return retrieval(emb, recipe_emb).get("R@1") if len(recipe_emb) else None


def measure(fp32: Path, int8: Path, role: str, images: np.ndarray, recipe_emb: np.ndarray) -> dict[str, Any]:
    """One int8 model against fp32 on `images`: cosine and R@1 on this CPU's kernels and in exact QDQ math."""
    # on use only: loads torch
    from malm.export import onnx_export as ox

    ref = ox.run_image(ox.session(fp32, threads=2), images)
    here = ox.run_image(ox.session(int8, threads=2), images)
    exact = ox.run_image(exact_session(int8, threads=2), images)
    r1_ref, r1_here, r1_exact = (_r1(e, recipe_emb) for e in (ref, here, exact))
    row: dict[str, Any] = {
        "gated_on": role, "images": len(images),
        "cosine_mean_this_cpu": round(float(_cosine(ref, here).mean()), 5),
        "cosine_min_this_cpu": round(float(_cosine(ref, here).min()), 5),
        "cosine_mean_exact": round(float(_cosine(ref, exact).mean()), 5),
        "R@1_drop_this_cpu": None if r1_ref is None or r1_here is None else round(r1_ref - r1_here, 3),
        "R@1_drop_exact": None if r1_ref is None or r1_exact is None else round(r1_ref - r1_exact, 3),
    }
    suffix = "this_cpu" if role == "this_cpu" else "exact"
    row["cosine_mean"], row["R@1_drop"] = row[f"cosine_mean_{suffix}"], row[f"R@1_drop_{suffix}"]
    return row


def verdict(name: str, row: dict[str, Any], pairs: int) -> str | None:
    """Why `row` fails the gate, or None."""
    why = []
    if row["cosine_mean"] < MIN_COSINE:
        why.append(f"mean cosine to fp32 {row['cosine_mean']:.4f} < {MIN_COSINE}")
    if row["R@1_drop"] is not None and pairs >= MIN_PAIRS_FOR_R1 and row["R@1_drop"] > MAX_R1_DROP:
        why.append(f"R@1 drop {row['R@1_drop']:.2f} points > {MAX_R1_DROP}")
    if not why:
        return None
    where = "on this CPU's ONNX Runtime kernels" if row["gated_on"] == "this_cpu" else "in its exact QDQ math"
    return f"{name} {where}: {' and '.join(why)}"


def check_export(files: list[tuple[Path, str]], images: np.ndarray, recipe_emb: np.ndarray, tmp: Path, *,
                 accept: bool, say: Callable[[str], None]) -> tuple[dict[str, Any] | None, SelfCheckSection | None]:
    """Gate every int8 image encoder in `files` and add the self-check files to `files`.

    Returns (the report's "int8_gate" section, the manifest's "selfcheck" section); (None, None) when the
    export has no fp32 ONNX image encoder (CoreML, TensorRT targets) to hold them to.
    """
    paths = {rel: src for src, rel in files}
    if FP32_REL not in paths or not len(images):
        return None, None
    sc = _write_selfcheck(paths[FP32_REL], images, tmp, files)
    int8 = {rel: spec for rel, spec in INT8_FILES.items() if rel in paths}
    if not int8:
        return None, sc
    pairs = len(recipe_emb) if len(recipe_emb) else 0
    section: dict[str, Any] = {"cpu": cpu.description(), "min_cosine": MIN_COSINE, "max_R@1_drop": MAX_R1_DROP,
                               "pairs": pairs, "variants": {}, "failures": [], "accepted": False}
    if pairs < MIN_PAIRS_FOR_R1:
        section["note"] = (f"R@1 drop reported, not gated: {pairs} held-out pairs (< {MIN_PAIRS_FOR_R1}; "
                           f"one pair moves R@1 by {100 / max(pairs, 1):.1f} points)")
    expected: dict[str, float] = {}
    for rel, (name, role) in int8.items():
        row = measure(paths[FP32_REL], paths[rel], role, images, recipe_emb)
        section["variants"][name] = row
        expected[name] = row["cosine_mean_exact"]
        failure = verdict(name, row, pairs)
        if failure:
            section["failures"].append(failure)
        say(f"int8 gate: {name} mean cosine {row['cosine_mean']:.4f} ({row['gated_on']}), this CPU "
            f"{row['cosine_mean_this_cpu']:.4f}, R@1 drop {row['R@1_drop']} -> {'FAIL' if failure else 'ok'}")
        if row["cosine_mean_this_cpu"] < MIN_COSINE:
            section.setdefault("cpu_notes", []).append(
                f"{name} on this CPU's ONNX Runtime int8 kernels: mean cosine {row['cosine_mean_this_cpu']:.4f} "
                f"({cpu.description()}), exact math {row['cosine_mean_exact']:.4f}; the SDK's self-check falls "
                "back to the next encoder on a CPU where it disagrees")
    if section["failures"]:
        if not accept:
            raise MalmError("int8 export refused, measured on " + cpu.description() + ": "
                            + "; ".join(section["failures"]) + ". Export without --int8, with more "
                            "--calib-images, or pass --accept-int8-drop to ship it anyway (the report says so)")
        section["accepted"] = True
        say("int8 gate: failures accepted with --accept-int8-drop: " + "; ".join(section["failures"]))
    return section, replace(sc, expected=expected)


def _write_selfcheck(fp32: Path, images: np.ndarray, tmp: Path, files: list[tuple[Path, str]]) -> SelfCheckSection:
    """A few held-out inputs (float16, as stored) and the fp32 ONNX's embeddings of exactly those inputs."""
    # on use only: loads torch
    from malm.export import onnx_export as ox

    x = np.ascontiguousarray(images[:SELFCHECK_IMAGES]).astype(np.float16)
    emb = ox.run_image(ox.session(fp32, threads=2), x.astype(np.float32)).astype(np.float32)
    out = {}
    for name, arr in (("inputs.npy", x), ("fp32_embeddings.npy", emb)):
        path = tmp / f"selfcheck_{name}"
        np.save(path, arr, allow_pickle=False)
        files.append((path, f"{SELFCHECK_DIR}/{name}"))
        out[name] = f"{SELFCHECK_DIR}/{name}"
    return SelfCheckSection(out["inputs.npy"], out["fp32_embeddings.npy"], int(len(x)), MIN_COSINE, {},
                            cpu.description(), inputs_dtype=str(x.dtype))
