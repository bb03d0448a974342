"""`loss.mask.full_image_retrieval`: the retrieval (triplet) embedding comes from the whole image, matching from the masked one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from malm.errors import MalmError
from malm.training.config import ExperimentConfig, load_preset
from malm.training.task import Task

# Full auxiliary weights at progress 0 (the ramp has its own test), no dropout.
OVERRIDES = {"model.recipe.dropout": 0.0, "loss.aux_warmup_epochs": 0.0}


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(b, 3, 32, 32, generator=g),
        "title": torch.randint(1, 20, (b, 5), generator=g),
        "ingredients": torch.randint(1, 20, (b, 3, 4), generator=g),
        "instructions": torch.randint(1, 20, (b, 2, 4), generator=g),
        "index": torch.arange(b),
    }


def _emb(tiny_preset: Callable[..., ExperimentConfig], full: bool) -> tuple[Task, dict[str, torch.Tensor], torch.Tensor]:
    cfg = tiny_preset("malm-tiny", {**OVERRIDES, "loss.mask.full_image_retrieval": full})
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=20).train()
    batch = _batch()
    seen: dict[str, torch.Tensor] = {}
    triplet = task.objectives[0]

    def grab(_m: object, args: tuple, _o: object) -> None:
        seen["emb"] = args[0].image_emb.detach()

    hook = triplet.register_forward_hook(grab)
    losses, _ = task(batch, 0.0)
    hook.remove()
    assert {"triplet_loss", "match_itm_loss", "distill_loss"} <= set(losses)
    return task, batch, seen["emb"]


def test_full_image_retrieval_embeds_the_whole_image_and_default_the_masked_one(
        tiny_preset: Callable[..., ExperimentConfig]) -> None:
    task, batch, emb = _emb(tiny_preset, full=True)
    with torch.no_grad():
        whole = task.model.encode_image(batch["image"])
    torch.testing.assert_close(emb, whole)
    task, batch, emb = _emb(tiny_preset, full=False)
    with torch.no_grad():
        whole = task.model.encode_image(batch["image"])
    assert not torch.allclose(emb, whole, atol=1e-4)  # 75% of patches hidden: a different embedding


def test_local_pairs_scores_each_patch_in_decoded_negative_pairs(tiny_preset: Callable[..., ExperimentConfig]) -> None:
    cfg = tiny_preset("malm-tiny", {**OVERRIDES, "loss.matching.mode": "paper", "loss.matching.pair_negatives": 2,
                                    "loss.matching.local_pairs": True, "loss.self_distill.weight": 0.0})
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=20).train()
    losses, _ = task(_batch(), 0.0)
    local = losses["match_local_loss"]
    assert torch.isfinite(local) and local > 0
    local.backward()
    # the per-patch pair scores depend on the image, so the image encoder gets a gradient from them
    grads = [p.grad for p in task.model.image_encoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    with pytest.raises(MalmError, match="pair_negatives"):
        load_preset("malm-tiny").with_overrides({"loss.matching.local_pairs": True})
