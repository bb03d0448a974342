"""Query latency end to end (decode → preprocess → encode → search → records), p50 and p95, and each stage.

Students run through the SDK exactly as an app does (`Retriever.load(bundle, variant=…, threads=…)` then
`.search(photo_bytes, k=10)`); the teacher runs the same decode, preprocessing, index search and record
lookup with its encoder in torch eager, so the rows differ only in the encoder and its runtime (the
teacher gets malm's index rather than a brute-force scan: the comparison is conservative). Stage costs
are timed separately on the same inputs with the same public pieces the SDK uses.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.suite.context import Context
from benchmarks.suite.scales import Scale, scale_errors, scales
from benchmarks.suite.timing import Stats, measure, thread_limit

K = 10
PHOTO_SIDE = 512  # Recipe1M photos are ~512 px; a phone photo would add decode time (reported separately)


def query_photo(ctx: Context) -> tuple[bytes, str]:
    """The JPEG every variant answers: a dataset photo scaled to PHOTO_SIDE, else a synthetic one."""
    src: Path | None = None
    try:
        found = ctx.artifacts().images(1)
        src = found[0] if found else None
    except Exception:  # a photo is all we need here; the model build may have failed for other reasons
        src = None
    if src is not None:
        img = Image.open(src).convert("RGB").resize((PHOTO_SIDE, PHOTO_SIDE * 3 // 4), Image.Resampling.BICUBIC)
        origin = f"{src.name} from the dataset, resized to {img.width}x{img.height}"
    else:
        from benchmarks.suite.deployment import synthetic_photos

        img = Image.open(synthetic_photos(ctx.options.work / "photos", 1, size=PHOTO_SIDE)[0]).convert("RGB")
        origin = f"synthetic {img.width}x{img.height} photo"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), f"{origin}, JPEG q90, {len(buf.getvalue()) / 1024:.0f} KiB"


class Searcher:
    """The bundle's index + recipe store, opened with the same classes the SDK uses."""

    def __init__(self, bundle: Path) -> None:
        from malm.edge_index.hnsw import HnswIndex
        from malm.edge_index.store import RecipeStore
        from malm.sdk.bundle_loader import open_bundle

        b = open_bundle(bundle, check_hashes=False)
        self.store = RecipeStore.open(b.path(b.index.store))
        self.index = HnswIndex.load(b.path(b.index.file), b.index.settings, self.store.labels())

    def __call__(self, embedding: np.ndarray) -> list[Any]:
        found = self.index.search(embedding.reshape(1, -1), K)[0]
        records = self.store.get([label for label, _ in found])
        return [records[label].title for label, _ in found if label in records]


def _times(ctx: Context) -> dict[str, float]:
    quick = ctx.options.quick
    return {"e2e_s": 0.3 if quick else 2.0, "e2e_reps": 5 if quick else 20, "stage_s": 0.1 if quick else 1.0,
            "stage_reps": 3 if quick else 10}


def _stats_row(variant: str, threads: int, e2e: Stats, stages: dict[str, Stats | None], note: str) -> dict[str, Any]:
    return {"variant": variant, "threads": threads, **{k: v for k, v in e2e.to_dict().items()},
            "stages_p50_ms": {k: (None if v is None else round(v.p50_ms, 4)) for k, v in stages.items()},
            "stages_p95_ms": {k: (None if v is None else round(v.p95_ms, 4)) for k, v in stages.items()},
            "note": note}


def _stages(photo: bytes, cfg: Any, encode: Any, searcher: Searcher, tm: dict[str, float]) -> dict[str, Stats | None]:
    """Each stage timed alone on the output of the previous one."""
    from malm.preprocess import preprocess
    from malm.sdk.image_io import load_image

    pil = load_image(photo, cfg.max_pixels, cfg.resize)
    x = preprocess(pil, cfg)[None]
    emb = np.asarray(encode(x)).reshape(1, -1)[0]
    kw = {"min_time": tm["stage_s"], "min_reps": int(tm["stage_reps"])}
    return {"decode": measure(lambda: load_image(photo, cfg.max_pixels, cfg.resize), **kw),
            "preprocess": measure(lambda: preprocess(pil, cfg), **kw),
            "encode": measure(lambda: encode(x), **kw),
            "search": measure(lambda: searcher(emb), **kw),
            "rerank": None}


def _has_encoder(bundle: Path, variant: str) -> bool:
    from malm.bundle import read_manifest

    return f"image_{variant}" in (read_manifest(bundle).get("encoders") or {})


def _student_rows(ctx: Context, scale: Scale, photo: bytes, searcher: Searcher, threads: int) -> list[dict[str, Any]]:
    from malm.sdk.retriever import Retriever

    tm = _times(ctx)
    rows = []
    for variant in ("fp32", "int8", "int8_cpu"):
        if not _has_encoder(scale.bundle, variant):
            continue
        try:
            r = Retriever.load(scale.bundle, variant=variant, threads=threads, verify=False)
        except Exception as e:
            ctx.log(f"latency: {scale.key} student {variant}: cannot load ({e})")
            continue
        cfg = r.bundle.preprocess
        with thread_limit(threads):
            e2e = measure(lambda r=r: r.search(photo, k=K), min_time=tm["e2e_s"], min_reps=int(tm["e2e_reps"]))
            stages = _stages(photo, cfg, lambda x, r=r: r.backend.encode(x).embedding, searcher, tm)
            note = f"SDK Retriever.search, onnxruntime {r.backend.device}"
            if r.can_rerank:
                rr = measure(lambda r=r: r.search(photo, k=K, rerank=True), min_time=tm["e2e_s"],
                             min_reps=int(tm["e2e_reps"]))
                stages["rerank"] = Stats(rr.n, rr.p50_ms - e2e.p50_ms, rr.p95_ms - e2e.p95_ms, rr.mean_ms - e2e.mean_ms,
                                         rr.min_ms - e2e.min_ms)
                note += f"; with --rerank: p50 {rr.p50_ms:.2f} ms"
        rows.append(_stats_row(f"student_{variant}", threads, e2e, stages, note))
        ctx.log(f"latency: {scale.key} student_{variant} {threads}t: p50 {e2e.p50_ms:.2f} ms p95 {e2e.p95_ms:.2f} ms")
    return rows


def _whatif_rows(ctx: Context, scale: Scale, photo: bytes, searcher: Searcher, threads: int) -> list[dict[str, Any]]:
    """Encoders measured beside the bundle's (not shipped), through the same pieces as the SDK."""
    from benchmarks.suite.deployment import WHATIF_NOTE
    from malm.preprocess import preprocess
    from malm.sdk.backends.ort import OrtImageBackend
    from malm.sdk.bundle_loader import open_bundle
    from malm.sdk.image_io import load_image

    cfg = open_bundle(scale.bundle, check_hashes=False).preprocess
    tm = _times(ctx)
    rows = []
    for name, path in scale.whatif.items():
        backend = OrtImageBackend(path, "int8", ["CPUExecutionProvider"], threads)

        def query(b: Any = backend) -> list[Any]:
            return searcher(b.encode(preprocess(load_image(photo, cfg.max_pixels, cfg.resize), cfg)[None]).embedding[0])

        with thread_limit(threads):
            e2e = measure(query, min_time=tm["e2e_s"], min_reps=int(tm["e2e_reps"]))
            stages = _stages(photo, cfg, lambda x, b=backend: b.encode(x).embedding, searcher, tm)
        rows.append(_stats_row(name, threads, e2e, stages, WHATIF_NOTE))
        ctx.log(f"latency: {scale.key} {name} {threads}t: p50 {e2e.p50_ms:.2f} ms p95 {e2e.p95_ms:.2f} ms")
    return rows


def _teacher_row(ctx: Context, scale: Scale, photo: bytes, searcher: Searcher, threads: int) -> dict[str, Any] | None:
    if scale.teacher is None:
        return None
    import torch

    from malm.preprocess import preprocess
    from malm.sdk.image_io import load_image

    model, cfg, tm = scale.teacher, scale.teacher_preprocess, _times(ctx)

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.encode_image(torch.from_numpy(x)).numpy()

    def query() -> list[Any]:
        x = preprocess(load_image(photo, cfg.max_pixels, cfg.resize), cfg)[None]
        return searcher(encode(x)[0])

    with thread_limit(threads):
        e2e = measure(query, min_time=tm["e2e_s"], min_reps=int(tm["e2e_reps"]) if not _slow(scale) else 10)
        stages = _stages(photo, cfg, encode, searcher, tm)
    ctx.log(f"latency: {scale.key} teacher {threads}t: p50 {e2e.p50_ms:.2f} ms p95 {e2e.p95_ms:.2f} ms")
    return _stats_row("teacher_torch", threads, e2e, stages, scale.teacher_note)


def _slow(scale: Scale) -> bool:
    return scale.key == "deployment"  # ViT-B/16 at 224 px: ~0.1-0.3 s a query on 1-2 cores


def run(ctx: Context) -> dict[str, Any]:
    photo, origin = query_photo(ctx)
    out: dict[str, Any] = {"photo": origin, "k": K, "scales": [], "end_to_end": [],
                           "unavailable": {}}
    for scale in scales(ctx):
        searcher = Searcher(scale.bundle)
        rows: list[dict[str, Any]] = []
        for threads in ctx.options.threads:
            teacher = _teacher_row(ctx, scale, photo, searcher, threads)
            rows += ([teacher] if teacher else []) + _student_rows(ctx, scale, photo, searcher, threads)
            rows += _whatif_rows(ctx, scale, photo, searcher, threads)
        for row in rows:
            row["scale"] = scale.key
            base = next((r for r in rows if r["variant"] == "teacher_torch" and r["threads"] == row["threads"]), None)
            if base:
                row["speedup_vs_teacher"] = round(base["p50_ms"] / row["p50_ms"], 2)
                enc_t, enc_s = base["stages_p50_ms"]["encode"], row["stages_p50_ms"]["encode"]
                row["encode_speedup_vs_teacher"] = round(enc_t / enc_s, 2) if enc_t and enc_s else None
        out["scales"].append(scale.to_dict())
        out["end_to_end"] += rows
    out["unavailable"] = scale_errors(ctx)
    if not out["end_to_end"]:
        # Nothing measured is a failure of the benchmark (an exit code), not a section that "cannot run here".
        raise RuntimeError("latency: no variant could be measured: " + str(out["unavailable"]))
    # The targets are read at the deployment size when it was measured (full runs), else on the bundle.
    keys = [s["key"] for s in out["scales"]]
    target_scale = "deployment" if "deployment" in keys else keys[0]
    out["target_scale"] = target_scale
    out["scale_note"] = next(s["description"] for s in out["scales"] if s["key"] == target_scale)
    out["phone_photos"] = _phone_photo_rows(ctx, photo, target_scale)
    return out


def _phone_photo_rows(ctx: Context, photo: bytes, target_scale: str) -> list[dict[str, Any]]:
    """The real-size rows: 12 MP and 3 MP JPEGs made from the query photo, full vs draft decoding."""
    from benchmarks.suite.phone_photos import phone_rows

    scale = next(s for s in scales(ctx) if s.key == target_scale)
    base = Image.open(io.BytesIO(photo))
    rows: list[dict[str, Any]] = []
    for threads in ctx.options.threads:
        try:
            rows += phone_rows(ctx, scale.bundle, base, threads, _times(ctx))
        except Exception as e:  # noqa: BLE001 - one failed row must not lose the section
            ctx.log(f"latency: phone photos {threads}t: not measured ({e})")
    return rows
