"""The late-interaction local score (loss.matching.local_score "late"): the score itself, its export as the
re-ranking head, and the leak regression (noise images must leave its in-batch InfoNCE at chance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from malm.errors import MalmError
from malm.export.matching_head import score_kind
from malm.training.config import load_preset
from malm.training.losses.itm import near_duplicates
from malm.training.models.matching import (
    LateInteraction,
    MatchingModule,
    MatchingScorer,
    export_matching_onnx,
)
from malm.training.task import Task
from tests.test_itm import SMALL, WORDS, _batch


def test_score_is_the_mean_of_both_best_match_directions() -> None:
    torch.manual_seed(0)
    late = LateInteraction(image_width=6, recipe_width=5, dim=4)
    patches, rec = torch.randn(2, 3, 6), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    with torch.no_grad():
        got = late.pair_scores(patches, rec, mask)
        for n in range(2):
            v = torch.nn.functional.normalize(late.image_in(patches[n]), dim=-1)
            u = torch.nn.functional.normalize(late.recipe_in(rec[n][mask[n]]), dim=-1)
            sims = v @ u.t()  # [P, valid S]
            want = 0.5 * (sims.max(1).values.mean() + sims.max(0).values.mean())
            torch.testing.assert_close(got[n], want)


def test_padded_tokens_do_not_change_the_score_and_all_pairs_has_the_pair_scores_on_its_diagonal() -> None:
    torch.manual_seed(0)
    late = LateInteraction(image_width=6, recipe_width=5, dim=4)
    patches, rec = torch.randn(3, 4, 6), torch.randn(3, 5, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2:] = False
    with torch.no_grad():
        before = late.pair_scores(patches, rec, mask)
        rec[1, 2:] = 100.0  # padding: whatever it holds must not count
        after = late.pair_scores(patches, rec, mask)
        every = late.all_pairs(patches, rec, mask)
    torch.testing.assert_close(before, after)
    torch.testing.assert_close(torch.diagonal(every), after)
    assert (every.abs() <= 1.0 + 1e-6).all()


def test_malm_presets_use_late_and_paper_mode_keeps_its_own_local_loss() -> None:
    for name in ("malm-tiny", "malm", "malm-hybrid-tiny"):
        cfg = load_preset(name)
        assert (cfg.loss.matching.mode, cfg.loss.matching.local_score) == ("itm", "late"), name
        assert cfg.loss.mask.full_image_retrieval, name
    tiny = load_preset("malm-tiny").with_overrides({**SMALL, "loss.mask.enabled": True})
    assert Task(tiny, vocab_size=64).objectives[1].matching.late is not None
    paper = tiny.with_overrides({"loss.matching.mode": "paper"})
    assert Task(paper, vocab_size=64).objectives[1].matching.late is None
    with pytest.raises(MalmError, match="local_score must be one of"):
        load_preset("malm-tiny").with_overrides({"loss.matching.local_score": "colbert"})


def test_head_with_late_score_exports_it(tmp_path) -> None:
    """`score` (what --rerank uses) is the late-interaction score over the patches; the ONNX head agrees."""
    torch.manual_seed(0)
    m = MatchingModule(image_width=12, recipe_width=10, dim=16, itm_head=True, late_dim=8).eval()
    assert score_kind(m) == "late_interaction"
    img, rec = torch.randn(3, 5, 12), torch.randn(3, 4, 10)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False
    with torch.no_grad():
        torch.testing.assert_close(m.score(img, rec, mask), m.late.pair_scores(img[:, 1:], rec, mask))
        ref = MatchingScorer(m, "mean")(img[:, 1:], rec, mask).numpy()
    import onnxruntime as ort

    path = tmp_path / "head.onnx"
    export_matching_onnx(m, str(path), global_token="mean")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["score"], {"image_tokens": img[:, 1:].numpy(), "recipe_tokens": rec.numpy(),
                               "recipe_mask": mask.numpy()})[0]  # fmt: skip
    np.testing.assert_allclose(out, ref, atol=1e-5)


# ------------------------------------------------------------------------------ leak regression


def _train_late(noise: bool, steps: int = 100, b: int = 16) -> tuple[float, float]:
    """Mean late local loss and its chance value over the last 20 of `steps` steps. Chance: a score that
    cannot tell the allowed candidates apart gives each row ln(number of allowed candidates) in both directions
    (near-duplicates are excluded from the softmax, so the count differs per row)."""
    cfg = load_preset("malm-tiny").with_overrides({**SMALL, "loss.matching.local_score": "late",
                                                   "loss.matching.global_weight": 0.0})
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=128).train()
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    words = torch.randint(0, WORDS, (64,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    tail: list[tuple[float, float]] = []
    for step in range(steps):
        task.seed_step(step)
        rows = torch.randperm(len(words), generator=g)[:b]
        batch = _batch(words, rows, noise, g)
        losses, report = task(batch, step / steps)
        opt.zero_grad()
        Task.total(losses).backward()
        opt.step()
        if step >= steps - 20:
            allowed = (~near_duplicates(batch)).sum(1) + 1  # the positive + the allowed negatives
            tail.append((float(report["match_local_loss"]), float(allowed.float().log().mean())))
    return float(np.mean([t[0] for t in tail])), float(np.mean([t[1] for t in tail]))


def test_late_local_loss_with_noise_images_stays_at_chance() -> None:
    loss, chance = _train_late(noise=True)
    assert chance > 1.0  # the check means something: several candidates per row
    assert abs(loss - chance) < 0.1, (loss, chance)


def test_late_local_loss_with_informative_images_drops_below_chance() -> None:
    loss, chance = _train_late(noise=False)
    assert loss < chance - 0.5, (loss, chance)
    assert chance < math.log(16)


def test_late_score_trains_on_the_whole_image_when_the_task_encodes_it(monkeypatch) -> None:
    """With the 75% mask, the late score reads the whole-image pass (what re-ranking sees at test time) when
    loss.mask.full_image_retrieval is on, and the visible patches of the masked view when it is off."""
    seen: list[int] = []
    original = LateInteraction.all_pairs

    def spy(self, patches, recipe_tokens, recipe_mask):  # noqa: ANN001, ANN202
        seen.append(patches.shape[1])
        return original(self, patches, recipe_tokens, recipe_mask)

    monkeypatch.setattr(LateInteraction, "all_pairs", spy)
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, WORDS, (64,), generator=g)
    batch = _batch(words, torch.arange(8), noise=False, g=g)
    for full in (True, False):
        cfg = load_preset("malm-tiny").with_overrides({**SMALL, "loss.mask.enabled": True,
                                                       "loss.mask.full_image_retrieval": full})
        Task(cfg, vocab_size=128).train()(batch, 0.5)
    patches = (16 // 4) ** 2
    assert seen == [patches, round(patches * 0.25)]


def test_itm_weight_zero_decodes_no_pairs_and_keeps_the_late_loss(monkeypatch) -> None:
    """loss.matching.global_weight 0 with the late score: the cross-attention decoder is never run (its only
    consumer, the ITM head, is off), and the late local loss is the one the objective computes on its own."""
    calls: list[int] = []
    original = MatchingModule.forward

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MatchingModule, "forward", spy)
    g = torch.Generator().manual_seed(0)
    batch = _batch(torch.randint(0, WORDS, (64,), generator=g), torch.arange(8), noise=False, g=g)
    local = {}
    for weight, decoded in ((1.0, 1), (0.0, 0)):
        calls.clear()
        cfg = load_preset("malm-tiny").with_overrides({**SMALL, "loss.matching.global_weight": weight})
        torch.manual_seed(0)  # the same weights for both (the decoder is built either way)
        task = Task(cfg, vocab_size=128).train()
        task.seed_step(0)
        losses, _ = task(batch, 0.5)
        assert len(calls) == decoded
        assert ("match_itm_loss" in losses) == (weight > 0)
        local[weight] = losses["match_local_loss"].detach()
    torch.testing.assert_close(local[0.0], local[1.0])
