"""Is the procedural benchmark learnable, and not trivially? A linear probe in numpy, no deep model.

    .venv/bin/python benchmarks/synth_speed.py --out /tmp/synth10k
    .venv/bin/python benchmarks/synth_probe.py /tmp/synth10k

Image features: colour histograms of the 64 px photo (whole image and centre) + a coarse 8x8 thumbnail.
Recipe features: bag of words of title + ingredient lines. A ridge map image -> recipe space is fitted on
train and image->recipe retrieval is measured on 1k test pairs (first photo of each paired test recipe).
A floor, not a target: a learned model that looks at shapes and places should beat it clearly.
Writes benchmarks/results/synth_probe.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from malm._atomic import write_text_atomic  # noqa: E402

BINS = 6


def image_features(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    q = np.minimum((a / 256 * BINS).astype(np.int64), BINS - 1)
    idx = q[..., 0] * BINS * BINS + q[..., 1] * BINS + q[..., 2]
    h_all = np.bincount(idx.ravel(), minlength=BINS**3) / idx.size
    c = idx[16:48, 16:48]
    h_mid = np.bincount(c.ravel(), minlength=BINS**3) / c.size
    thumb = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((8, 8), Image.Resampling.BOX),
                       dtype=np.float32).ravel() / 255
    return np.concatenate([np.sqrt(h_all), np.sqrt(h_mid), 0.3 * thumb]).astype(np.float32)


def words(r: dict) -> list[str]:
    text = r["title"] + " " + " ".join(x["text"] for x in r["ingredients"])
    return re.findall(r"[a-z]+", text.lower())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--train", type=int, default=6000, help="training pairs used to fit the probe")
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results" / "synth_probe.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    layer1 = json.loads((args.data / "layer1.json").read_text())
    layer2 = {e["id"]: e["images"] for e in json.loads((args.data / "layer2.json").read_text())}
    pairs: dict[str, list[tuple[dict, Path]]] = {"train": [], "test": []}
    for r in layer1:
        if r["id"] in layer2 and r["partition"] in pairs:
            iid = layer2[r["id"]][0]["id"]
            pairs[r["partition"]].append((r, args.data / "images" / r["partition"] / iid[0] / iid[1] / iid[2] / iid[3] / iid))
    train, test = pairs["train"][: args.train], pairs["test"][:1000]
    vocab = sorted({w for r, _ in train for w in words(r)})
    widx = {w: i for i, w in enumerate(vocab)}

    def bow(r: dict) -> np.ndarray:
        v = np.zeros(len(vocab), np.float32)
        for w in words(r):
            if w in widx:
                v[widx[w]] = 1
        return v / max(1.0, float(np.linalg.norm(v)))

    Xtr = np.stack([image_features(p) for _, p in train])
    Ytr = np.stack([bow(r) for r, _ in train])
    Xte = np.stack([image_features(p) for _, p in test])
    Yte = np.stack([bow(r) for r, _ in test])
    mu, ymu = Xtr.mean(0), Ytr.mean(0)
    Xc = Xtr - mu
    W = np.linalg.solve(Xc.T @ Xc + args.ridge * np.eye(Xc.shape[1], dtype=np.float32), Xc.T @ (Ytr - ymu))
    P = (Xte - mu) @ W
    P /= np.linalg.norm(P, axis=1, keepdims=True) + 1e-8
    Q = Yte - ymu
    Q /= np.linalg.norm(Q, axis=1, keepdims=True) + 1e-8
    S = P @ Q.T
    ranks = 1 + (S > np.diag(S)[:, None]).sum(1)
    result = {
        "benchmark": "synth_probe (linear ridge: colour histograms -> bag of words)",
        "data": str(args.data),
        "train_pairs": len(train),
        "test_pairs": len(test),
        "im2recipe": {"medR": float(np.median(ranks)), "R@1": float(100 * (ranks <= 1).mean()),
                      "R@5": float(100 * (ranks <= 5).mean()), "R@10": float(100 * (ranks <= 10).mean())},
        "chance_R@1": 100 / len(test),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(args.results, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
