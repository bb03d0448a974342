"""Presets and loss switches keep their meaning across the config format change: every preset resolves to the
config it resolved to before presets became diffs, old-format configs (saved beside existing checkpoints) load,
and two seeded optimizer steps of each preset's objectives give the losses they gave before.

The expected files in tests/data/ were written by running this module as a script on the commit before the
change (`python tests/test_config_compat.py`): `presets_before.json` (each preset's `to_dict()` in the old
format) and `losses_before.json` (each preset's losses over two seeded steps of a shrunk model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from malm.training.config import load_preset, preset_names

DATA = Path(__file__).resolve().parent / "data"
# Shrinks every preset's model to run in a fraction of a second; method switches stay as shipped.
SHRINK = {
    "model.image.image_size": 32, "model.image.width": 32, "model.image.depth": 1, "model.image.heads": 2,
    "model.recipe.width": 32, "model.recipe.heads": 2, "model.embed_dim": 16, "loss.matching.heads": 2,
    "loss.cross_decoder.heads": 2,
}  # fmt: skip
# Modes no preset ships, checked too: (preset, overrides) by name.
VARIANTS = {
    "malm-tiny+paper": ("malm-tiny", {"loss.matching.mode": "paper", "loss.matching.pair_negatives": 2,
                                      "loss.matching.local_pairs": True}),
    "malm-tiny+paper-k0": ("malm-tiny", {"loss.matching.mode": "paper"}),
    "malm-tiny+decoder": ("malm-tiny", {"loss.matching.local_score": "decoder"}),
}


def _batch(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    title = torch.zeros(b, 5, dtype=torch.long)
    title[:, 0], title[:, 1], title[:, 2] = 1, torch.arange(b) + 5, 2
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "title": title,
            "ingredients": torch.randint(3, 20, (b, 3, 4), generator=g),
            "instructions": torch.randint(3, 20, (b, 2, 4), generator=g), "index": torch.arange(b)}  # fmt: skip


def seeded_losses(name: str, steps: int = 2) -> list[dict[str, float]]:
    """Every reported value of `steps` optimizer steps of preset (or variant) `name`'s task, shrunk, seeded."""
    from malm.training.task import Task

    preset, extra = VARIANTS.get(name, (name, {}))
    cfg = load_preset(preset)
    shrink = SHRINK | extra
    if cfg.model.image.backbone == "vit":
        shrink["model.image.patch_size"] = 8
    cfg = cfg.with_overrides(shrink)
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=24)
    task.train()
    opt = torch.optim.AdamW(task.param_groups(cfg.train), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(steps):
        task.seed_step(step)
        losses, report = task(_batch(6, g), progress=(step + 1) / 4)
        total = Task.total(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        task.after_step()
        out.append({"total": float(total.detach())} | {k: float(v) for k, v in sorted(report.items())})
    return out


def _write_expected() -> None:
    presets = {name: load_preset(name).to_dict() for name in preset_names()}
    (DATA / "presets_before.json").write_text(json.dumps(presets, indent=1, sort_keys=True) + "\n")
    losses: dict[str, Any] = {name: seeded_losses(name) for name in [*preset_names(), *VARIANTS]}
    (DATA / "losses_before.json").write_text(json.dumps(losses, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    _write_expected()
    sys.exit(0)
