"""What each export step costs: size, CPU latency, cosine to the teacher, image→recipe retrieval."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from malm.evaluation import retrieval_metrics, size_key
from malm.vectors import cosine_rows

LATENCY_RUNS = 30
LATENCY_WARMUP = 5


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def _p50(fn: Any, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def onnx_latency_ms(path: Path, image_size: int, threads: int, runs: int = LATENCY_RUNS,
                    warmup: int = LATENCY_WARMUP) -> float:
    """p50 milliseconds per image (batch 1) with ONNX Runtime on CPU at `threads` intra-op threads."""
    # on use only: loads torch
    from malm.export.onnx_export import session

    sess = session(path, threads=threads)
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    return _p50(lambda: sess.run(["embedding"], {"image": x}), runs, warmup)


def torch_latency_ms(module: Any, image_size: int, threads: int, runs: int = LATENCY_RUNS,
                     warmup: int = LATENCY_WARMUP) -> float:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, 3, image_size, image_size)
        with torch.no_grad():
            return _p50(lambda: module(x), runs, warmup)
    finally:
        torch.set_num_threads(previous)


def retrieval(image_emb: np.ndarray, recipe_emb: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """image→recipe medR, R@1/5/10 on 1k subsets (or all pairs when fewer), the H-T protocol."""
    n = len(image_emb)
    if n < 2:
        return {"n": n, "note": "fewer than 2 test pairs: retrieval not measured"}
    size = min(1000, n)
    result = retrieval_metrics(image_emb, recipe_emb, sizes=[size], protocol="ht", seed=seed)
    row = result["im2recipe"][size_key(size)]
    return {"size": size, "n": n, "medR": row["medR"], "R@1": row["R@1"], "R@5": row["R@5"], "R@10": row["R@10"],
            "subsets": row.get("subsets")}


def cosine_mean(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosine_rows(a, b).mean()) if len(a) else float("nan")


COLUMNS = ("variant", "file", "size_mb", "latency_ms_1t", "latency_ms_2t", "cosine_to_teacher", "medR", "R@1",
           "R@5", "R@10")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# malm export report ({report.get('target', '?')})", ""]
    lines.append(f"checkpoint `{report.get('checkpoint')}` (tag {report.get('tag')}), student "
                 f"`{report.get('student')}`, image size {report.get('image_size')}, "
                 f"{report.get('eval_pairs', 0)} test pairs")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, row in report.get("variants", {}).items():
        r = row.get("retrieval", {})
        vals = [name, row.get("file"), row.get("size_mb"), row.get("latency_ms_1t"), row.get("latency_ms_2t"),
                row.get("cosine_to_teacher"), r.get("medR"), r.get("R@1"), r.get("R@5"), r.get("R@10")]
        lines.append("| " + " | ".join(_fmt(v) for v in vals) + " |")
    lines.append("")
    lines += _int8_gate_lines(report.get("int8_gate"))
    if report.get("rerank"):
        lines += [f"- {summary_line(report['rerank'])}", ""]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def _int8_gate_lines(gate: dict[str, Any] | None) -> list[str]:
    """The int8 gate's verdict and the CPU it was measured on (malm/export/int8_gate.py)."""
    if not gate:
        return []
    lines = [f"int8 gate (mean cosine to fp32 >= {gate['min_cosine']}, R@1 drop <= {gate['max_R@1_drop']} "
             f"points), measured on {gate['cpu']}:", ""]
    for name, row in gate.get("variants", {}).items():
        lines.append(f"- {name}: mean cosine {_fmt(row['cosine_mean'])} ({row['gated_on']}; this CPU's kernels "
                     f"{_fmt(row['cosine_mean_this_cpu'])}, exact QDQ math {_fmt(row['cosine_mean_exact'])}), "
                     f"R@1 drop {_fmt(row['R@1_drop'])}")
    for note in [gate.get("note"), *gate.get("cpu_notes", [])]:
        if note:
            lines.append(f"- {note}")
    if gate.get("accepted"):
        lines.append("- ACCEPTED with --accept-int8-drop although it failed: " + "; ".join(gate["failures"]))
    return [*lines, ""]


def summary_line(calibration: dict[str, Any] | None) -> str:
    """One line for reports: the re-ranking weight and its validation gain, or why it ships off
    (malm/export/rerank_calibration.py)."""
    if not calibration:
        return "re-ranking: not calibrated"
    if not calibration.get("enabled", True):
        return f"re-ranking: off ({calibration.get('disabled_reason')})"
    return (f"re-ranking: on, weight {calibration['weight']} (chosen on {calibration['queries']} "
            f"{calibration['split']} photos through the bundle: top-1 {calibration['top1_before']}% -> "
            f"{calibration['top1_after']}%, top-5 {calibration['top5_before']}% -> {calibration['top5_after']}%)")
