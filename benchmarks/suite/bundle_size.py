"""Bundle size per file and per image-encoder variant (what a device downloads and stores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.suite.context import Context
from benchmarks.suite.scales import scale_errors, scales


def describe_bundle(root: Path) -> dict[str, Any]:
    from malm.bundle import MANIFEST, read_manifest

    m = read_manifest(root)
    roles: dict[str, tuple[str, str]] = {}
    for name, enc in (m.get("encoders") or {}).items():
        if isinstance(enc, dict) and enc.get("file"):
            roles[str(enc["file"])] = (str(enc.get("role", "")), name)
    index = m.get("index") or {}
    for key in ("file", "store"):
        if index.get(key):
            roles[str(index[key])] = ("index", "shared")
    rerank = m.get("rerank") or {}
    for key in ("tokens", "offsets", "model"):
        if rerank.get(key):
            roles[str(rerank[key])] = ("rerank", "shared (only with --rerank)")
    files = []
    for rel, entry in sorted((m.get("files") or {}).items()):
        role, variant = roles.get(rel, ("other", "shared"))
        files.append({"file": rel, "bytes": int(entry["bytes"]), "role": role, "variant": variant})
    files.append({"file": MANIFEST, "bytes": (root / MANIFEST).stat().st_size, "role": "manifest", "variant": "shared"})
    shared = sum(f["bytes"] for f in files if f["variant"] == "shared")
    per_variant = {}
    # What one device needs: one image encoder plus the shared index, store and manifest.
    for f in files:
        if f["role"] == "image":
            per_variant[f"{f['variant']} + index/store"] = f["bytes"] + shared
    return {"bundle": str(root), "files": files, "total_bytes": sum(f["bytes"] for f in files),
            "per_variant_bytes": per_variant, "recipes": int(index.get("count", 0))}


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"bundles": []}
    for scale in scales(ctx):
        d = describe_bundle(scale.bundle)
        d["scale"] = scale.key
        out["bundles"].append(d)
        ctx.log(f"bundle: {scale.key}: {d['total_bytes'] / 2**20:.2f} MiB in {len(d['files'])} files")
    out["unavailable"] = scale_errors(ctx)
    return out
