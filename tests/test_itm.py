"""Image-grounded matching (loss.matching.mode "itm"): the hard-negative sampler, the ITM head and its exported
score, and the regression that keeps the matching leak out (noise images must leave the head at chance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from malm.errors import MalmError
from malm.training.config import load_preset
from malm.training.losses.itm import (
    ITM_CHANCE_LOSS,
    itm_loss,
    near_duplicates,
    pair_indices,
    sample_negatives,
)
from malm.training.models.matching import MatchingModule, MatchingScorer, export_matching_onnx
from malm.training.task import Task

# A matching model small enough to train 100 steps in a few CPU seconds: 16 px images of 4 px patches.
SMALL = {
    "model.image.image_size": 16, "model.image.patch_size": 4, "model.image.width": 32, "model.image.depth": 1,
    "model.image.heads": 2, "model.image.mlp_ratio": 2.0, "model.recipe.width": 32, "model.recipe.heads": 2,
    "model.recipe.dropout": 0.0, "model.embed_dim": 16, "loss.matching.heads": 2, "loss.mask.enabled": False,
    "loss.self_distill.weight": 0.0, "loss.recipe_ssl_weight": 0.0, "loss.aux_warmup_epochs": 0.0,
}  # fmt: skip


def _titles(*words: int) -> torch.Tensor:
    t = torch.zeros(len(words), 4, dtype=torch.long)
    t[:, 0], t[:, 1], t[:, 2] = 1, torch.tensor(words), 2
    return t


# ------------------------------------------------------------------------------------------- sampler


def test_near_duplicates_marks_same_recipe_family_and_title() -> None:
    batch = {"title": _titles(10, 11, 10, 12, 13), "index": torch.tensor([0, 1, 2, 3, 0]),
             "family": torch.tensor([5, 6, 7, 6, -1])}  # fmt: skip
    ex = near_duplicates(batch)
    assert ex.diagonal().all()
    assert ex[0, 2] and ex[2, 0]  # identical title
    assert ex[1, 3] and ex[3, 1]  # same family
    assert ex[0, 4] and ex[4, 0]  # same recipe (index)
    assert not ex[0, 1] and not ex[2, 3] and not ex[1, 4]
    # -1 = unknown family: two unknowns are not a family
    ex2 = near_duplicates({"title": _titles(1, 2), "family": torch.tensor([-1, -1])})
    assert not ex2[0, 1]


def test_sampler_never_picks_an_excluded_entry_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    b = 12
    sim = torch.randn(b, b, generator=g) * 0.1
    titles = _titles(*[20 + i % 8 for i in range(b)])  # rows i and i+8 share a title
    family = torch.tensor([i // 3 for i in range(b)])  # families of 3
    ex = near_duplicates({"title": titles, "index": torch.arange(b), "family": family})
    picks = torch.stack([sample_negatives(sim, ex, 0.07, torch.Generator().manual_seed(s)) for s in range(300)])
    assert not ex.gather(1, picks.t()).any()  # never itself, its family or its title twin
    # the sampling is spread (not top-k): more than one negative per row over 300 draws
    assert all(len(set(picks[:, i].tolist())) > 1 for i in range(b))
    # same generator state, same draws; another state, other draws
    a = sample_negatives(sim, ex, 0.07, torch.Generator().manual_seed(7))
    assert torch.equal(a, sample_negatives(sim, ex, 0.07, torch.Generator().manual_seed(7)))
    assert any(not torch.equal(a, sample_negatives(sim, ex, 0.07, torch.Generator().manual_seed(s)))
               for s in range(8, 12))  # fmt: skip


def test_sampler_prefers_hard_negatives() -> None:
    sim = torch.zeros(4, 4)
    sim[0, 3] = 0.5  # recipe 3 is image 0's hardest negative
    ex = torch.eye(4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_negatives(sim, ex, 0.07, g) for _ in range(200)])[:, 0]
    assert (picks == 3).float().mean() > 0.9  # softmax(0.5 / 0.07) weight


def test_sampler_falls_back_when_a_row_has_no_allowed_negative() -> None:
    ex = torch.ones(3, 3, dtype=torch.bool)  # one family: nothing allowed
    picks = torch.stack([sample_negatives(torch.randn(3, 3), ex, 0.07, torch.Generator().manual_seed(s))
                         for s in range(50)])  # fmt: skip
    assert (picks != torch.arange(3)).all()  # uniform over the others, never itself
    with pytest.raises(MalmError, match="sample_negatives"):
        sample_negatives(torch.zeros(3, 3), torch.zeros(3, 2, dtype=torch.bool), 0.07)


def test_pair_indices_lay_out_positives_then_both_negatives() -> None:
    sim = torch.randn(5, 5)
    ex = torch.eye(5, dtype=torch.bool)
    img, rec, neg_rec, neg_img = pair_indices(sim, ex, 0.1, torch.Generator().manual_seed(0))
    ar = torch.arange(5)
    assert torch.equal(img, torch.cat([ar, ar, neg_img])) and torch.equal(rec, torch.cat([ar, neg_rec, ar]))
    assert (neg_rec != ar).all() and (neg_img != ar).all()


def test_itm_loss_labels_and_chance_value() -> None:
    b = 4
    # A head that predicts the prior (1/3 matched) scores exactly the chance loss.
    prior = torch.tensor([math.log(2 / 3), math.log(1 / 3)]).expand(3 * b, 2)
    loss, acc = itm_loss(prior, positives=b)
    assert loss.item() == pytest.approx(ITM_CHANCE_LOSS, abs=1e-6) and acc.item() == pytest.approx(2 / 3)
    perfect = torch.cat([torch.tensor([[-9.0, 9.0]]).expand(b, 2), torch.tensor([[9.0, -9.0]]).expand(2 * b, 2)])
    loss, acc = itm_loss(perfect, positives=b)
    assert loss.item() < 1e-6 and acc.item() == 1.0


# ----------------------------------------------------------------------------------- head and export


def test_score_is_the_itm_matched_probability_and_exports(tmp_path) -> None:
    torch.manual_seed(0)
    m = MatchingModule(image_width=12, recipe_width=10, dim=16, depth=1, heads=4, itm_head=True).eval()
    img, rec = torch.randn(3, 5, 12), torch.randn(3, 4, 10)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False
    with torch.no_grad():
        want = torch.softmax(m.itm_logits(m(img, rec, mask)), -1)[:, 1]
        got = m.score(img, rec, mask)
    torch.testing.assert_close(got, want)
    assert ((got > 0) & (got < 1)).all()
    import onnxruntime as ort

    path = tmp_path / "head.onnx"
    export_matching_onnx(m, str(path), global_token="mean")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    patches = img[:, 1:]
    out = sess.run(["score"], {"image_tokens": patches.numpy(), "recipe_tokens": rec.numpy(),
                               "recipe_mask": mask.numpy()})[0]  # fmt: skip
    with torch.no_grad():
        ref = MatchingScorer(m, "mean")(patches, rec, mask).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_paper_mode_head_keeps_the_cosine_score() -> None:
    m = MatchingModule(image_width=12, recipe_width=10, dim=16, itm_head=False).eval()
    assert m.itm is None
    with pytest.raises(MalmError, match="ITM head"):
        m.itm_logits(m(torch.randn(2, 3, 12), torch.randn(2, 2, 10), torch.ones(2, 2, dtype=torch.bool)))


# ------------------------------------------------------------------------------ leak regression


WORDS = 8
PALETTE = torch.randn(WORDS, 3, generator=torch.Generator().manual_seed(1))


def _batch(words: torch.Tensor, rows: torch.Tensor, noise: bool, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Recipes of one ingredient word (and a title of their own); the photo is that ingredient's colour (+ noise),
    or, with `noise`, fresh noise each step: no information about the recipe at all."""
    b, w = len(rows), words[rows]
    ing = torch.zeros(b, 1, 3, dtype=torch.long)
    ing[:, 0, 0], ing[:, 0, 1], ing[:, 0, 2] = 1, 4 + w, 2
    ins = torch.zeros(b, 1, 3, dtype=torch.long)
    ins[:, 0, 0], ins[:, 0, 1], ins[:, 0, 2] = 1, 3, 2
    if noise:
        image = torch.randn(b, 3, 16, 16, generator=g)
    else:
        image = PALETTE[w].view(b, 3, 1, 1).expand(b, 3, 16, 16) + 0.3 * torch.randn(b, 3, 16, 16, generator=g)
    # family = the ingredient: recipes of the same ingredient look the same, so they are never negatives
    return {"image": image, "title": _titles(*(20 + rows).tolist()), "ingredients": ing, "instructions": ins,
            "index": rows, "family": w}  # fmt: skip


def _train_matching(noise: bool, mode: str, steps: int = 100, b: int = 16) -> tuple[float, float]:
    """Mean matching loss (and ITM accuracy) over the last 20 of `steps` training steps."""
    cfg = load_preset("malm-tiny").with_overrides({**SMALL, "loss.matching.mode": mode})
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=128).train()
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    words = torch.randint(0, WORDS, (64,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    key = "match_itm_loss" if mode == "itm" else "match_global_loss"
    tail: list[tuple[float, float]] = []
    for step in range(steps):
        task.seed_step(step)
        rows = torch.randperm(len(words), generator=g)[:b]
        losses, report = task(_batch(words, rows, noise, g), step / steps)
        opt.zero_grad()
        Task.total(losses).backward()
        opt.step()
        if step >= steps - 20:
            tail.append((float(report[key]), float(report.get("match_itm_acc", torch.tensor(0.0)))))
    return float(np.mean([t[0] for t in tail])), float(np.mean([t[1] for t in tail]))


def test_itm_with_noise_images_stays_at_chance() -> None:
    """Images carry no information: the head can only learn the class prior, CE = H(1/3, 2/3) ~ 0.6365 and
    accuracy ~ 2/3 (always 'not matched'). The paper's positive-only loss falls far below its chance here."""
    loss, acc = _train_matching(noise=True, mode="itm")
    assert abs(loss - ITM_CHANCE_LOSS) < 0.05, loss
    assert acc < 0.75, acc


def test_itm_with_informative_images_drops_below_chance() -> None:
    loss, acc = _train_matching(noise=False, mode="itm")
    assert loss < ITM_CHANCE_LOSS - 0.15, loss
    assert acc > 0.8, acc


def test_paper_matching_is_met_without_the_image() -> None:
    """The leak this file guards against: positive-only InfoNCE falls from ln B with noise for images."""
    loss, _ = _train_matching(noise=True, mode="paper")
    assert loss < 0.5 * math.log(16), loss
