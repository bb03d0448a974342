"""Can the ITM head tell a run's pairs apart from its frozen encoders' tokens, with and without the 75% mask?

    python benchmarks/itm_probe.py --run runs/compare/malm-tiny_s0 --data DIR [--steps 150]

A diagnostic for docs/ablation.md: the trained run's image and recipe encoders are frozen; its matching head
(ψ, ψ′ and the ITM layer) keeps training on the ITM loss alone (hard negatives sampled as in training,
near-duplicates excluded) for `--steps` batches of training pairs, once on masked image tokens (as MALM trains:
75% of patches replaced by the mask token) and once on whole-image tokens. Reported: the ITM loss and accuracy
of the last 30 steps and on held-out val batches (chance: loss 0.6365, accuracy 2/3). Writes
benchmarks/results/itm_probe.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "itm_probe.json")
    args = p.parse_args(argv)

    import torch

    from malm._atomic import write_text_atomic
    from malm.export.matching_head import load_trained_head
    from malm.training.checkpoint import load_model
    from malm.training.data import RecipeImageDataset, prepare
    from malm.training.data.families import split_families
    from malm.training.losses.itm import ITM_CHANCE_LOSS, itm_loss, near_duplicates, pair_indices
    from malm.training.models.vit import random_keep_idx

    torch.set_num_threads(1)
    loaded = load_model(args.run, tag="last")
    model, cfg = loaded.model.eval(), loaded.config
    trained = load_trained_head(args.run, cfg)
    if trained is None or trained.module.itm is None:
        raise SystemExit(f"{args.run}: no ITM matching head in its training state")
    prepared = prepare(args.data, min_freq=cfg.data.min_freq, limits=cfg.data.limits(), log=lambda _m: None)
    pre = cfg.preprocess()

    def batches(split: str, seed: int, n: int) -> list[dict[str, torch.Tensor]]:
        fam = split_families(prepared, split)
        ds = RecipeImageDataset(prepared, split, pre, train=False, families=fam)
        order = np.random.default_rng(seed).permutation(len(ds))[: n * args.batch]
        out = []
        for k in range(n):
            items = [ds[int(i)] for i in order[k * args.batch:(k + 1) * args.batch]]
            out.append({key: torch.stack([it[key] for it in items]) for key in items[0]})
        return out

    def features(b: dict[str, torch.Tensor], masked: bool, g: torch.Generator) -> tuple:
        with torch.no_grad():
            keep = random_keep_idx(len(b["image"]), model.image_encoder.num_patches, cfg.loss.mask.ratio,
                                   generator=g) if masked else None
            f = model.image_features(b["image"], keep)
            tokens = f.tokens if keep is None else model.image_encoder.fill_masked(f.tokens, keep)
            itok = torch.cat([f.cls.unsqueeze(1), tokens], 1)
            r = model.recipe_features(b["title"], b["ingredients"], b["instructions"])
            sim = model.project_image(f.cls) @ torch.nn.functional.normalize(r.embedding.float(), dim=-1).t()
        return itok, r, sim

    def step(head: torch.nn.Module, b: dict[str, torch.Tensor], masked: bool,
             g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        itok, r, sim = features(b, masked, g)
        ii, rr, _, _ = pair_indices(sim, near_duplicates(b), cfg.loss.matching.temperature, g)
        out = head(itok[ii], r.tokens[rr], r.token_mask[rr])
        return itm_loss(head.itm_logits(out), positives=len(sim))

    train, val = batches("train", 0, args.steps), batches("val", 1, 10)
    result: dict = {"run": str(args.run), "steps": args.steps, "batch": args.batch, "chance_loss": ITM_CHANCE_LOSS,
                    "variants": {}}
    for name, masked in (("masked_75", True), ("whole_image", False)):
        head = copy.deepcopy(trained.module).train()
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        t0, hist = time.process_time(), []
        for b in train:
            loss, acc = step(head, b, masked, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append((loss.item(), acc.item()))
        head.eval()
        with torch.no_grad():
            held = [step(head, b, masked, torch.Generator().manual_seed(i)) for i, b in enumerate(val)]
        result["variants"][name] = {
            "train_last30_loss": round(float(np.mean([h[0] for h in hist[-30:]])), 4),
            "train_last30_acc": round(float(np.mean([h[1] for h in hist[-30:]])), 4),
            "val_loss": round(float(np.mean([h[0].item() for h in held])), 4),
            "val_acc": round(float(np.mean([h[1].item() for h in held])), 4),
            "cpu_seconds": round(time.process_time() - t0, 1)}
        print(name, result["variants"][name], flush=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
