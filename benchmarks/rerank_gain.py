"""What local re-ranking buys: R@1 with and without it, its bundle size and its latency per query.

    .venv/bin/python benchmarks/rerank_gain.py --bundle B --checkpoint RUN --data DIR [--tag last] \
        [--candidates 50] [--out benchmarks/results]

B is a bundle exported with `malm export --target onnx --int8 --tokens` (image encoders with a `tokens`
output and `rerank/matching_head.onnx`). For the held-out split's paired recipes (the candidate pool is the
split's paired recipes, as in the 1k protocol when there are fewer than 1000), each photo is encoded by the
bundle's image ONNX; its global top-`candidates` recipes are re-scored and fused with the global score,
`(1 - w) * global + w * local`, for:

  * matching_head   -- the trained MALM matching head (ONNX, the SDK's scorer), on the student's tokens
  * late_interaction -- mean over patches of the best cosine among recipe tokens (no training for it)
  * teacher_head    -- reference only, not shippable: the same head on the *teacher's* real [CLS] + patch
                       tokens in torch: what the head can do with the tokens it was trained on

The fusion weight w is chosen on the val split and reported on the test split (never chosen on test).
Writes rerank.json and rerank.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def metrics(r: np.ndarray) -> dict[str, float]:
    from malm.evaluation import metrics_from_ranks

    return {k: round(v, 3) for k, v in metrics_from_ranks(r).items()}


def split_inputs(prepared: Any, split: str, pp: Any, model: Any) -> dict[str, Any]:
    """Preprocessed photos and the torch recipe encoder's embeddings + token features of a split's pairs."""
    import torch

    from malm.training.data import RecipeImageDataset

    ds = RecipeImageDataset(prepared, split, pp, train=False)
    items = [ds[i] for i in range(len(ds))]
    images = np.stack([it["image"].numpy() for it in items]).astype(np.float32)
    embs, toks = [], []
    with torch.inference_mode():
        for i in range(0, len(items), 128):
            chunk = items[i:i + 128]
            batch = {k: torch.stack([it[k] for it in chunk]) for k in ("title", "ingredients", "instructions")}
            f = model.recipe_features(**batch)
            embs.append(torch.nn.functional.normalize(f.embedding.float(), dim=-1).numpy())
            toks += [t[m].float().numpy().astype(np.float16) for t, m in zip(f.tokens, f.token_mask.bool(),
                                                                               strict=True)]
    return {"images": images, "recipe_emb": np.concatenate(embs), "recipe_tokens": toks, "items": items}


def rerank_ranks(sims: np.ndarray, local: np.ndarray, cand: np.ndarray, w: float) -> np.ndarray:
    """Rank of the true recipe after fusing the local scores of each query's candidates (others keep global)."""
    n = len(sims)
    out = np.empty(n, np.int64)
    for q in range(n):
        c = cand[q]
        if q not in c:  # the true recipe was not a candidate: re-ranking cannot move it into the top-C
            true = sims[q, q]
            out[q] = 1 + int((sims[q] > true).sum())
            continue
        fused = (1 - w) * sims[q, c] + w * local[q]
        pos = int(np.where(c == q)[0][0])
        out[q] = 1 + int((fused > fused[pos]).sum()) + int(((fused == fused[pos]) & (np.arange(len(c)) < pos)).sum())
    return out


def evaluate_split(inputs: dict[str, Any], image_path: Path, head: Any, n_cand: int, teacher: Any,
                   threads: int) -> dict[str, Any]:
    import torch

    from malm.edge_index.rerank import late_interaction
    from malm.sdk.backends.ort import OrtImageBackend

    backend = OrtImageBackend(image_path, "x", ["CPUExecutionProvider"], threads)
    out = backend.encode(inputs["images"], tokens=True)
    emb, tokens = out.embedding, out.tokens
    sims = emb @ inputs["recipe_emb"].T
    c = min(n_cand, len(sims))
    cand = np.argsort(-sims, axis=1, kind="stable")[:, :c]
    rt = inputs["recipe_tokens"]
    local: dict[str, np.ndarray] = {}
    scorer_ms: dict[str, float] = {}
    for name, fn in (("matching_head", head), ("late_interaction", late_interaction)):
        rows, times = [], []
        for q in range(len(sims)):
            cands = [rt[j] for j in cand[q]]
            t0 = time.perf_counter()
            rows.append(fn(tokens[q], cands))
            times.append(time.perf_counter() - t0)
        local[name] = np.stack(rows)
        scorer_ms[name] = round(float(np.median(times)) * 1000, 3)
    if teacher is not None:
        model, matching = teacher
        with torch.inference_mode():
            x = torch.from_numpy(inputs["images"])
            feats = model.image_features(x)
            timg = torch.cat([feats.cls.unsqueeze(1), feats.tokens], 1)
            t_local = []
            for q in range(len(sims)):
                rec = [torch.from_numpy(rt[j].astype(np.float32)) for j in cand[q]]
                s = max(len(r) for r in rec)
                pad = torch.zeros(len(rec), s, rec[0].shape[1])
                mask = torch.zeros(len(rec), s, dtype=torch.bool)
                for i, r in enumerate(rec):
                    pad[i, :len(r)] = r
                    mask[i, :len(r)] = True
                t_local.append(matching.score(timg[q:q + 1].expand(len(rec), -1, -1), pad, mask).numpy())
        local["teacher_head"] = np.stack(t_local)
    base = 1 + (sims > np.diag(sims)[:, None]).sum(1)
    res: dict[str, Any] = {"pairs": len(sims), "candidates": c, "global": metrics(base),
                           "scorer_ms_per_query_p50": scorer_ms,
                           "true_in_candidates": round(100.0 * float(np.mean([q in cand[q] for q in range(len(sims))])), 2)}
    for name, loc in local.items():
        res[name] = {str(w): metrics(rerank_ranks(sims, loc, cand, w)) for w in WEIGHTS}
    return res


def latency(bundle: Path, photos: list[Path], variant: str, threads: int, runs: int) -> dict[str, float]:
    from malm import Retriever

    r = Retriever.load(bundle, variant=variant, threads=threads)
    out = {}
    for rerank in (False, True):
        for p in photos[:3]:
            r.search(p, k=10, rerank=rerank)  # warm-up
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            r.search(photos[i % len(photos)], k=10, rerank=rerank)
            times.append(time.perf_counter() - t0)
        out["rerank" if rerank else "global"] = round(float(np.median(times)) * 1000, 3)
    out["added_ms"] = round(out["rerank"] - out["global"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tag", default="last")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from malm.bundle import read_manifest
    from malm.export.matching_head import load_trained_head
    from malm.sdk.backends.ort import OrtSession
    from malm.sdk.retriever import MatchingHeadScorer
    from malm.training.checkpoint import load_model
    from malm.training.data import prepare

    started = time.monotonic()
    manifest = read_manifest(args.bundle)
    enc = manifest["encoders"]
    head_rel = enc["matching_head"]["file"]
    loaded = load_model(args.checkpoint, args.tag)
    model, cfg = loaded.model.eval(), loaded.config
    pp = cfg.preprocess()
    prepared = prepare(args.data, min_freq=cfg.data.min_freq, limits=cfg.data.limits())
    trained = load_trained_head(args.checkpoint, cfg)
    teacher = (model, trained.module) if trained is not None else None
    token_dim = int(cfg.model.recipe.width)
    head = MatchingHeadScorer(OrtSession(args.bundle / head_rel, ["CPUExecutionProvider"], args.threads), token_dim)

    result: dict[str, Any] = {"bundle": str(args.bundle), "checkpoint": str(args.checkpoint), "tag": args.tag,
                              "data": str(args.data), "candidates": args.candidates, "variants": {}}
    for variant in ("image_fp32", "image_int8_cpu"):
        if variant not in enc:
            continue
        path = args.bundle / enc[variant]["file"]
        per_split = {}
        for split in ("val", "test"):
            inputs = split_inputs(prepared, split, pp, model)
            per_split[split] = evaluate_split(inputs, path, head, args.candidates,
                                              teacher if variant == "image_fp32" else None, args.threads)
        chosen = {}
        for scorer in ("matching_head", "late_interaction", "teacher_head"):
            if scorer not in per_split["val"]:
                continue
            best_w = max(WEIGHTS, key=lambda w: (per_split["val"][scorer][str(w)]["R@1"], -w))
            test = per_split["test"][scorer][str(best_w)]
            chosen[scorer] = {"weight_chosen_on_val": best_w, "test": test,
                              "R@1_gain_points": round(test["R@1"] - per_split["test"]["global"]["R@1"], 3),
                              "val_R@1_gain_points": round(per_split["val"][scorer][str(best_w)]["R@1"]
                                                           - per_split["val"]["global"]["R@1"], 3)}
        result["variants"][variant] = {"splits": per_split, "chosen": chosen}

    files = manifest["files"]
    rr = manifest.get("rerank") or {}
    rerank_files = [f for f in (head_rel, rr.get("tokens"), rr.get("offsets")) if f]
    total = sum(v["bytes"] for v in files.values())
    result["size"] = {"matching_head_mb": round(files[head_rel]["bytes"] / 1e6, 3),
                      "recipe_tokens_mb": round(sum(files[f]["bytes"] for f in rerank_files[1:] if f in files) / 1e6, 3),
                      "bundle_total_mb": round(total / 1e6, 3),
                      "recipes_indexed": (manifest.get("index") or {}).get("count")}
    result["size"]["added_fraction"] = round(
        sum(files[f]["bytes"] for f in rerank_files if f in files) / max(total, 1), 4)
    photos = [p for i in range(min(40, len(prepared.split("test"))))
              for p in prepared.split("test").image_paths(int(prepared.split("test").paired_indices()[i]))[:1]]
    if rr:
        result["latency_ms_per_query"] = {v: latency(args.bundle, photos, v, args.threads, args.latency_runs)
                                          for v in ("int8_cpu", "fp32") if f"image_{v}" in enc}
    result["machine"] = {"platform": platform.platform(), "threads": args.threads}
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    lines = ["# local re-ranking: what it gains and costs", "",
             f"checkpoint `{args.checkpoint}` (tag {args.tag}), bundle `{args.bundle}`, top-{args.candidates} "
             "candidates re-scored; fusion weight chosen on val, reported on test", "",
             "| image encoder | scorer | w (val) | test R@1 global | test R@1 re-ranked | gain (points) | "
             "val gain | R@5 | R@10 | medR |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, v in result["variants"].items():
        g = v["splits"]["test"]["global"]
        for scorer, c in v["chosen"].items():
            t = c["test"]
            lines.append(f"| {variant} | {scorer} | {c['weight_chosen_on_val']} | {g['R@1']:.2f} | {t['R@1']:.2f} | "
                         f"{c['R@1_gain_points']:+.2f} | {c['val_R@1_gain_points']:+.2f} | {t['R@5']:.2f} | "
                         f"{t['R@10']:.2f} | {t['medR']:.1f} |")
    s = result["size"]
    lines += ["", f"size: matching head {s['matching_head_mb']} MB, recipe tokens {s['recipe_tokens_mb']} MB for "
              f"{s['recipes_indexed']} recipes; bundle {s['bundle_total_mb']} MB ({100 * s['added_fraction']:.1f}% "
              "re-ranking data)"]
    for variant, lat in result.get("latency_ms_per_query", {}).items():
        lines.append(f"latency per query ({variant}, {args.threads} thread(s), p50, Retriever.search k=10): "
                     f"global {lat['global']} ms, with re-rank {lat['rerank']} ms (+{lat['added_ms']} ms)")
    for variant, v in result["variants"].items():
        ms = v["splits"]["test"]["scorer_ms_per_query_p50"]
        lines.append(f"scoring {args.candidates} candidates per query ({variant} tokens, p50): "
                     + ", ".join(f"{k} {val} ms" for k, val in ms.items()))
    (args.out / "rerank.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
